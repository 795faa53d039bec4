"""`layercut bench`: prefill/decode speed, time to first token and peak memory, pruned vs dense."""

from __future__ import annotations

import argparse
import json

from layercut.commands.flags import add_model_args
from layercut.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure inference speed and memory (pruned vs dense baseline)")
    add_model_args(parser)
    parser.add_argument("--baseline", help="dense model measured in the same run (alias, directory or hub id)")
    parser.add_argument("--also", action="append", default=[], metavar="MODEL",
                        help="another model measured in the same run, interleaved with the others (repeatable)")
    parser.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--gen-len", type=int, default=128, help="tokens generated per run (default: %(default)s)")
    parser.add_argument("--batch", default="1", help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per model and batch")
    parser.add_argument("--warmup", type=int, default=1, help="short unmeasured runs first")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--report", help="write a markdown table to this file")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--report files")
    parser.set_defaults(run=run)


def parse_batches(text: str) -> list[int]:
    """"1,8" -> [1, 8]."""
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--batch '{text}' is not a comma-separated list of integers, e.g. 1,8") from None
    if not batches or min(batches) < 1:
        raise ConfigError(f"--batch '{text}' needs positive batch sizes, e.g. 1,8")
    return batches


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import load_from_args
    from layercut.export import ensure_output_free, write_text_atomic
    from layercut.loading import load_model
    from layercut.speed import bench_models, render_bench_markdown

    batches = parse_batches(args.batch)
    if args.prompt_len < 1 or args.gen_len < 1 or args.repeats < 1:
        raise ConfigError("--prompt-len, --gen-len and --repeats must be at least 1")
    for path in (args.json, args.report):
        if path:
            ensure_output_free(path, args.overwrite)
    measured = [args.model, *args.also]
    twice = [spec for spec in args.also if measured.count(spec) > 1 or spec == args.baseline]
    if twice:
        raise ConfigError(f"'{twice[0]}' is measured twice; name each model once across --model, --baseline, --also")
    models = {}
    baseline_label = f"{args.baseline} (baseline)" if args.baseline else None
    if baseline_label:
        models[baseline_label] = load_model(args.baseline, dtype=args.dtype, device=args.device,
                                            trust_remote_code=args.trust_remote_code)
    models[args.model] = load_from_args(args)
    for spec in args.also:
        models[spec] = load_model(spec, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    results = bench_models(models, batches, args.prompt_len, args.gen_len, args.repeats, args.warmup, args.seed,
                           baseline=baseline_label)
    table = render_bench_markdown(results)
    print(table)
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1), overwrite=True)
        print(f"results written to {args.json}")
    if args.report:
        write_text_atomic(args.report, f"# layercut bench\n\n{table}\n", overwrite=True)
        print(f"report written to {args.report}")
    return 0
