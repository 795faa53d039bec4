"""`layercut eval`: perplexity and zero-shot tasks for a model, optionally side by side with a baseline."""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from layercut.commands.flags import add_eval_args, add_model_args, check_eval_args
from layercut.evaluation.tasks import known_task_names

if TYPE_CHECKING:
    from layercut.evaluation.suite import ModelEvaluation, PerplexitySettings
    from layercut.evaluation.tasks import Task

EPILOG = f"""tasks: registered names ({known_task_names()}) read their file from --tasks-dir
(arc_easy.jsonl, arc_challenge.jsonl, boolq.jsonl, piqa.jsonl, openbook_qa.jsonl, winogrande.jsonl,
lambada_openai.jsonl, hellaswag_val.txt) with lm-evaluation-harness prompts. A path to your own
.jsonl file is scored verbatim; one JSON object per line, one of:
  {{"query": "...", "choices": ["...", "..."], "gold": 0}}              multiple choice
  {{"context_options": ["...", "..."], "continuation": "...", "gold": 1}}  partial scoring
  {{"context": "...", "continuation": "..."}}                           cloze (greedy match)
hf:NAME[:CONFIG][:SPLIT] reads a Hugging Face dataset with the same fields (online only)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="perplexity and zero-shot accuracy, optionally against a baseline",
                                   description=__doc__, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--baseline", help="a second model (usually the dense original) evaluated the same way")
    add_eval_args(parser)
    parser.add_argument("--json", help="write all results as JSON here")
    parser.add_argument("--report", help="write a markdown report here")
    parser.add_argument("--plot", help="write a PNG bar chart here (default with --report: next to it, .png)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--report/--plot files")
    parser.add_argument("--no-cache", action="store_true",
                        help="re-measure the --baseline even when an identical evaluation (same weights, text, "
                             "tasks and settings) is cached")
    parser.add_argument("--no-record", action="store_true",
                        help="do not add the results to the evaluated layercut checkpoint's model card and layercut.json")
    parser.set_defaults(run=run)


def scoring_settings(args: argparse.Namespace) -> dict:
    """The settings, beyond the text and tasks themselves, that change the numbers."""
    return {"task_batch_size": args.task_batch_size, "limit": args.limit, "num_fewshot": args.num_fewshot}


def evaluate_spec(spec: str, args: argparse.Namespace, tasks: list[Task], ppl: PerplexitySettings | None,
                  use_cache: bool = False) -> ModelEvaluation:
    """Load one model, evaluate it (or reuse its cached evaluation), and release it before the next
    one is loaded."""
    from layercut.commands.common import load_from_args
    from layercut.evaluation import cache
    from layercut.evaluation.suite import evaluate_model

    loaded = load_from_args(argparse.Namespace(**{**vars(args), "model": spec}))
    key = cache.evaluation_key(loaded.model, tasks, ppl, scoring_settings(args)) if use_cache else None
    hit = cache.load_cached(key) if key else None
    if hit is not None:
        evaluation, date = hit
        evaluation.model = spec
        print(f"{spec}: reusing its evaluation measured {date} (same weights, text, tasks and settings; "
              "--no-cache re-measures)", file=sys.stderr)
    else:
        evaluation = evaluate_model(loaded, tasks, ppl, args.task_batch_size, not args.no_progress, args.logits_mib)
        if key:
            cache.store(key, evaluation, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    del loaded
    gc.collect()
    return evaluation


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse existing outputs before any work; --report brings a chart next to it unless --plot is set."""
    from layercut.export import ensure_output_free

    if args.report and not args.plot:
        args.plot = str(Path(args.report).with_suffix(".png"))
    for path in (args.json, args.report, args.plot):
        if path:
            ensure_output_free(path, args.overwrite)


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    from layercut.evaluation.report import plot_report, render_json, render_markdown
    from layercut.export import ensure_output_free, write_text_atomic

    if args.plot:
        plot_report(report, ensure_output_free(args.plot, args.overwrite))
    if args.report:
        plot_link = os.path.relpath(Path(args.plot).resolve(), Path(args.report).resolve().parent)
        write_text_atomic(args.report, render_markdown(report, plot_link), args.overwrite)
    if args.json:
        write_text_atomic(args.json, render_json(report), args.overwrite)


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import ppl_from_args, tasks_from_args
    from layercut.evaluation.report import build_report, record_in_checkpoint, render_console

    check_eval_args(args)
    check_outputs(args)
    tasks = tasks_from_args(args)
    ppl = ppl_from_args(args)
    evaluation = evaluate_spec(args.model, args, tasks, ppl)
    baseline = evaluate_spec(args.baseline, args, tasks, ppl, use_cache=not args.no_cache) if args.baseline else None
    settings = {"model": args.model, "baseline": args.baseline, "ppl": args.ppl, "max_tokens": args.max_tokens,
                "seq_len": args.ppl_seq_len, "tasks": [task.name for task in tasks], "tasks_dir": args.tasks_dir,
                "limit": args.limit, "num_fewshot": args.num_fewshot, "batch_size": args.task_batch_size,
                "dtype": args.dtype, "device": args.device, "seed": args.seed}
    report = build_report(evaluation, baseline, settings)
    write_outputs(report, args)
    if not args.no_record:
        recorded = record_in_checkpoint(args.model, report)
        if recorded:
            print(f"recorded these results in {recorded}/README.md and layercut.json", file=sys.stderr)
    print(render_console(report))
    return 0
