"""`layercut slim`: make every FFN narrower (PruneNet policy learning, or the magnitude baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layercut.commands.flags import add_model_args, add_output_args
from layercut.commands.options import add_option_groups, options_from_args
from layercut.errors import ConfigError
from layercut.methods.settings import SLIM_METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slim", help="prune FFN neurons in every layer (PruneNet, calibration-free)",
        description="Remove a fraction of the FFN neurons of every layer. prunenet learns a policy on the "
                    "weights alone (no data); magnitude keeps the rows with the largest norm.")
    add_model_args(parser)
    parser.add_argument("--method", choices=list(SLIM_METHODS), default="prunenet", help="(default: %(default)s)")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of FFN neurons to remove, in (0, 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_option_groups(parser, SLIM_METHODS.values())
    add_output_args(parser)
    parser.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flag combinations before the model is loaded."""
    from layercut.slicing import keep_count

    keep_count(2, args.ratio)
    options_from_args(args, SLIM_METHODS[args.method])
    if args.method == "magnitude" and (args.policy or args.policy_out):
        raise ConfigError("--policy/--policy-out only apply to --method prunenet")
    if args.policy and args.policy_out:
        raise ConfigError("--policy reuses a learned policy and --policy-out saves a new one; pass only one")
    if args.policy and not Path(args.policy).expanduser().is_file():
        raise ConfigError(f"policy file '{args.policy}' not found; pass a file written by --policy-out")
    if args.policy_out and Path(args.policy_out).expanduser().exists() and not args.overwrite:
        raise ConfigError(f"policy file '{args.policy_out}' already exists; pass --overwrite or choose another path")


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import check_output_room, load_from_args, peek_from_args
    from layercut.export import ensure_output_free, save_checkpoint
    from layercut.methods.prunenet import PolicyConfig, slim_model

    check_args(args)
    ensure_output_free(args.out, args.overwrite)
    check_output_room(args, peek_from_args(args), args.out)
    loaded = load_from_args(args)
    config = PolicyConfig(ratio=args.ratio, variant=args.variant, episodes=args.episodes, lr=args.lr, seed=args.seed)
    step = slim_model(loaded, args.method, config, args.policy, args.policy_out, args.overwrite,
                      progress=not args.no_progress)
    out = save_checkpoint(loaded, args.out, step, overwrite=args.overwrite)
    result = step["result"]
    print(f"slim ({args.method}): FFN width {result['ffn_width_before']} -> {result['ffn_width_after']}, "
          f"parameters {result['params_before']:,} -> {result['params_after']:,}; wrote {out}")
    return 0
