"""`layercut eval`: perplexity and zero-shot tasks for a model, optionally side by side with a baseline."""

from __future__ import annotations

import argparse
import gc
import os
from pathlib import Path

from layercut.commands.common import add_model_args, load_from_args
from layercut.errors import ConfigError
from layercut.evaluation.report import build_report, plot_report, render_console, render_json, render_markdown
from layercut.evaluation.suite import ModelEvaluation, PerplexitySettings, evaluate_model
from layercut.evaluation.tasks import Task, known_task_names, load_task
from layercut.export import ensure_output_free, write_text_atomic

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
    parser.add_argument("--ppl", help="text for perplexity: .txt, .jsonl, builtin:pydoc-eval or hf:NAME[:CONFIG][:SPLIT]")
    parser.add_argument("--text-field", default="text", help="JSONL / dataset field holding the --ppl text")
    parser.add_argument("--max-tokens", type=int, help="cap the perplexity text at this many tokens (whole windows)")
    parser.add_argument("--seq-len", type=int, help="perplexity window length (default: model length, at most 2048)")
    parser.add_argument("--ppl-batch-size", type=int, default=1, help="perplexity windows per forward pass")
    parser.add_argument("--tasks", help="comma-separated task names, .jsonl paths or hf: datasets")
    parser.add_argument("--tasks-dir", help="folder holding the task files of registered task names")
    parser.add_argument("--limit", type=int, help="evaluate only the first N items of each task")
    parser.add_argument("--num-fewshot", type=int, default=0, help="solved examples before each question")
    parser.add_argument("--batch-size", type=int, default=16, help="packed questions per forward pass")
    parser.add_argument("--json", help="write all results as JSON here")
    parser.add_argument("--report", help="write a markdown report here")
    parser.add_argument("--plot", help="write a PNG bar chart here (default with --report: next to it, .png)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--report/--plot files")
    parser.set_defaults(run=run)


def load_tasks(args: argparse.Namespace) -> list[Task]:
    """Every requested task, read and checked before any model is loaded."""
    names = [name.strip() for name in (args.tasks or "").split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ConfigError("--tasks names a task twice; list each once")
    return [load_task(name, args.tasks_dir, args.limit, args.num_fewshot) for name in names]


def evaluate_spec(spec: str, args: argparse.Namespace, tasks: list[Task],
                  ppl: PerplexitySettings | None) -> ModelEvaluation:
    """Load one model, evaluate it, and release it before the next one is loaded."""
    loaded = load_from_args(argparse.Namespace(**{**vars(args), "model": spec}))
    evaluation = evaluate_model(loaded, tasks, ppl, args.batch_size, not args.no_progress)
    del loaded
    gc.collect()
    return evaluation


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse existing outputs before any work; --report brings a chart next to it unless --plot is set."""
    if args.report and not args.plot:
        args.plot = str(Path(args.report).with_suffix(".png"))
    for path in (args.json, args.report, args.plot):
        if path:
            ensure_output_free(path, args.overwrite)


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    if args.plot:
        plot_report(report, ensure_output_free(args.plot, args.overwrite))
    if args.report:
        plot_link = os.path.relpath(Path(args.plot).resolve(), Path(args.report).resolve().parent)
        write_text_atomic(args.report, render_markdown(report, plot_link), args.overwrite)
    if args.json:
        write_text_atomic(args.json, render_json(report), args.overwrite)


def run(args: argparse.Namespace) -> int:
    if not args.ppl and not args.tasks:
        raise ConfigError("nothing to evaluate; pass --ppl TEXT and/or --tasks piqa,arc_easy,... (with --tasks-dir)")
    for value, flag in ((args.batch_size, "--batch-size"), (args.ppl_batch_size, "--ppl-batch-size")):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1")
    check_outputs(args)
    tasks = load_tasks(args)
    ppl = PerplexitySettings(args.ppl, args.seq_len, args.max_tokens, args.ppl_batch_size, args.text_field) \
        if args.ppl else None
    evaluation = evaluate_spec(args.model, args, tasks, ppl)
    baseline = evaluate_spec(args.baseline, args, tasks, ppl) if args.baseline else None
    settings = {"model": args.model, "baseline": args.baseline, "ppl": args.ppl, "max_tokens": args.max_tokens,
                "seq_len": args.seq_len, "tasks": [task.name for task in tasks], "tasks_dir": args.tasks_dir,
                "limit": args.limit, "num_fewshot": args.num_fewshot, "batch_size": args.batch_size,
                "dtype": args.dtype, "device": args.device, "seed": args.seed}
    report = build_report(evaluation, baseline, settings)
    write_outputs(report, args)
    print(render_console(report))
    return 0
