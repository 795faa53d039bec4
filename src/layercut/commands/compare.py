"""`layercut compare`: several depth-pruning methods on one calibration set and one evaluation suite."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING
import json
import os
from pathlib import Path

from layercut.commands.flags import add_calib_args, add_cut_args, add_eval_args, add_model_args, check_eval_args
from layercut.commands.options import add_option_groups, options_from_args
from layercut.errors import ConfigError
from layercut.methods.settings import DEPTH_METHODS, GRANULARITIES

if TYPE_CHECKING:
    from layercut.methods.base import PruneRequest

DEFAULT_METHODS = "angular,shortgpt,last,replaceme-lstsq,replaceme-cosine,streamline-ffn,streamline-layer"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="run several pruning methods and tabulate their scores",
                                   description=__doc__)
    add_model_args(parser)
    add_calib_args(parser)
    add_cut_args(parser)
    parser.add_argument("--methods", default=DEFAULT_METHODS,
                        help=f"comma-separated methods among {', '.join(sorted(DEPTH_METHODS))}; NAME:attn or NAME:mlp "
                             "cuts attention or MLP sublayers instead of blocks (default: %(default)s)")
    parser.add_argument("--select", default=None, help="span score for span methods (default: each method's own)")
    add_eval_args(parser, window_flag="--eval-seq-len", batch_flag="--eval-batch-size",
                  text_field_flag="--ppl-text-field")
    output = parser.add_argument_group("output")
    output.add_argument("--report", help="markdown table here (a PNG chart is drawn next to it unless --plot)")
    output.add_argument("--json", help="every result as JSON here")
    output.add_argument("--plot", help="PNG chart here")
    output.add_argument("--overwrite", action="store_true", help="replace existing output files")
    output.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_option_groups(parser, DEPTH_METHODS.values())
    parser.set_defaults(run=run)


def parse_methods(text: str) -> list[tuple[str, str]]:
    """The --methods list as (method, granularity) pairs, checked against the registry.

    `NAME` cuts whole blocks; `NAME:attn` / `NAME:mlp` cut attention or MLP sublayers instead."""
    entries = [entry.strip() for entry in text.split(",") if entry.strip()]
    pairs = [(name.strip(), part.strip() or "block") for name, _, part in (e.partition(":") for e in entries)]
    unknown = [name for name, _ in pairs if name not in DEPTH_METHODS]
    if unknown or not pairs:
        raise ConfigError(f"unknown --methods {', '.join(unknown) or '(none)'}; "
                          f"choose among {', '.join(sorted(DEPTH_METHODS))}")
    parts = [part for _, part in pairs if part not in GRANULARITIES]
    if parts:
        raise ConfigError(f"unknown granularity ':{parts[0]}' in --methods; write NAME, NAME:attn or NAME:mlp")
    if len(set(pairs)) != len(pairs):
        raise ConfigError("--methods names a method twice; list each once")
    return pairs


def requests_from_args(args: argparse.Namespace, methods: list[tuple[str, str]]) -> list[PruneRequest]:
    from layercut.prune import METHODS, PruneRequest

    return [PruneRequest(method=name, cut=args.cut, min_start=args.min_start,
                         select=args.select or METHODS[name].select, batch_size=args.batch_size, seed=args.seed,
                         progress=not args.no_progress, granularity=part, allow_last=args.allow_last,
                         options=options_from_args(args, METHODS[name].options))
            for name, part in methods]


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import (calib_description, calib_from_args, load_from_args, peek_from_args,
                                          ppl_from_args, tasks_from_args)
    from layercut.compare import compare_methods, method_label, plot_compare, render_markdown, table
    from layercut.evaluation.report import render_table
    from layercut.export import check_output_location, ensure_output_free, write_text_atomic
    from layercut.prune import check_family, check_request

    methods = parse_methods(args.methods)
    check_eval_args(args, batch_flag="--eval-batch-size")
    if args.report and not args.plot:
        args.plot = str(Path(args.report).with_suffix(".png"))
    for path, flag in ((args.json, "--json"), (args.report, "--report"), (args.plot, "--plot")):
        if path:
            ensure_output_free(path, args.overwrite)
            check_output_location(path, 0, flag)
    tasks = tasks_from_args(args)
    requests = requests_from_args(args, methods)
    config = peek_from_args(args)
    for request in requests:
        check_request(request, config.num_hidden_layers)
        check_family(request.method, config)
    dense = load_from_args(args)
    windows = calib_from_args(args, dense)
    ppl = ppl_from_args(args)
    settings = {"model": args.model, "cut": args.cut, "methods": [method_label(*pair) for pair in methods],
                "calibration": calib_description(args),
                "ppl": args.ppl, "max_tokens": args.max_tokens, "tasks": [task.name for task in tasks],
                "limit": args.limit, "num_fewshot": args.num_fewshot, "device": str(dense.device),
                "dtype": str(next(dense.model.parameters()).dtype)}
    report = compare_methods(dense, windows, requests, tasks, ppl, args.task_batch_size,
                             settings, progress=not args.no_progress, logits_mib=args.logits_mib)
    if args.plot:
        plot_compare(report, args.plot)
    if args.report:
        plot_link = os.path.relpath(Path(args.plot).resolve(), Path(args.report).resolve().parent)
        write_text_atomic(args.report, render_markdown(report, plot_link), args.overwrite)
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2, default=str) + "\n", args.overwrite)
    header, rows = table(report)
    print(render_table(header, rows))
    return 0
