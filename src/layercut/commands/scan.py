"""`layercut scan`: score every block and every span on calibration text; table, JSON, plot."""

from __future__ import annotations

import argparse
import json

from layercut.commands.flags import add_calib_args, add_model_args, block_count, positive_int
from layercut.errors import ConfigError
from layercut.methods.settings import GRANULARITIES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("scan", help="score layers and spans (Block Influence, angular, cosine)")
    add_model_args(parser)
    add_calib_args(parser)
    parser.add_argument("--json", help="write all scores to this JSON file")
    parser.add_argument("--plot", help="write a PNG heatmap (start x span length) to this file")
    parser.add_argument("--span", type=positive_int, action="append",
                        help="span length(s) to list best spans for (default: 1, 2, 4, 8)")
    parser.add_argument("--top", type=positive_int, default=5, help="best spans listed per length")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --json/--plot files")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block",
                        help="block: span scores; attn / mlp: also score each block's attention or MLP half")
    parser.add_argument("--linear-error", action="store_true",
                        help="also score every span of --cut blocks by the relative residual of its best linear map")
    parser.add_argument("--cut", type=block_count, help="span length for --linear-error")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from layercut.calibration.capture import calibrate
    from layercut.calibration.linear_error import render_linear_errors, scan_linear_errors
    from layercut.calibration.report import plot_scan, render_scan_table, scan_to_dict
    from layercut.commands.common import calib_description, calib_from_args, load_from_args
    from layercut.distributed import is_main_process
    from layercut.export import check_output_location, ensure_output_free, write_text_atomic
    from layercut.methods.sublayers import render_sublayer_table, scan_sublayers, sublayers_to_dict

    if args.linear_error and not args.cut:
        raise ConfigError("--linear-error scores spans of one length: add --cut N")
    for path, flag in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            ensure_output_free(path, args.overwrite)
            check_output_location(path, 0, flag)
    loaded = load_from_args(args)
    windows = calib_from_args(args, loaded)
    if args.linear_error:
        calibration, errors = scan_linear_errors(loaded, windows, args.cut, args.batch_size)
        stats, extra = calibration.scan, {"linear_error": {"cut": args.cut, "by_start": errors}}
    else:
        stats, extra = calibrate(loaded, windows, args.batch_size).scan, {}
    sublayer_stats = scan_sublayers(loaded, windows, args.batch_size) if args.granularity != "block" else None
    if not is_main_process():
        return 0
    print(render_scan_table(stats, args.span or [1, 2, 4, 8], args.top))
    if args.linear_error:
        print(render_linear_errors(extra["linear_error"]["by_start"], args.cut, args.top))
    if sublayer_stats is not None:
        print(render_sublayer_table(sublayer_stats, args.granularity, args.top))
        extra.update(sublayers_to_dict(sublayer_stats))
    if args.json:
        record = {"model": loaded.source, "calibration": calib_description(args), **scan_to_dict(stats), **extra}
        write_text_atomic(args.json, json.dumps(record, indent=1), overwrite=True)
        print(f"scores written to {args.json}")
    if args.plot:
        plot_scan(stats, args.plot)
        print(f"plot written to {args.plot}")
    return 0
