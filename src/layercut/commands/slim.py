"""`layercut slim`: make every FFN narrower (PruneNet policy learning, or the magnitude baseline)."""

from __future__ import annotations

import argparse
from pathlib import Path

from layercut.commands.common import add_model_args, add_output_args, load_from_args
from layercut.errors import ConfigError
from layercut.export import ensure_output_free, save_checkpoint
from layercut.prunenet import METHODS, VARIANT_DEFAULTS, VARIANTS, PolicyConfig, slim_model
from layercut.slicing import keep_count


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slim", help="prune FFN neurons in every layer (PruneNet, calibration-free)",
        description="Remove a fraction of the FFN neurons of every layer. prunenet learns a policy on the "
                    "weights alone (no data); magnitude keeps the rows with the largest norm.")
    add_model_args(parser)
    parser.add_argument("--method", choices=METHODS, default="prunenet", help="(default: %(default)s)")
    parser.add_argument("--ratio", type=float, required=True, help="fraction of FFN neurons to remove, in (0, 1)")
    parser.add_argument("--variant", choices=VARIANTS, default="layercut",
                        help="prunenet policy: layercut (neuron features, coverage reward) or reference (the "
                             "authors' code) (default: %(default)s)")
    parser.add_argument("--episodes", type=int, help="policy learning episodes per restart (default: "
                        + ", ".join(f"{v} {d['episodes']}" for v, d in VARIANT_DEFAULTS.items()) + ")")
    parser.add_argument("--lr", type=float, help="policy learning rate (default: "
                        + ", ".join(f"{v} {d['lr']}" for v, d in VARIANT_DEFAULTS.items()) + ")")
    parser.add_argument("--policy", help="reuse a policy file from --policy-out (no learning)")
    parser.add_argument("--policy-out", help="also save the learned policy here, to reuse at other ratios")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_args(parser)
    parser.set_defaults(run=run)


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad flag combinations before the model is loaded."""
    keep_count(2, args.ratio)
    if args.method == "magnitude" and (args.policy or args.policy_out):
        raise ConfigError("--policy/--policy-out only apply to --method prunenet")
    if args.policy and args.policy_out:
        raise ConfigError("--policy reuses a learned policy and --policy-out saves a new one; pass only one")
    if args.policy and not Path(args.policy).expanduser().is_file():
        raise ConfigError(f"policy file '{args.policy}' not found; pass a file written by --policy-out")
    if args.policy_out and Path(args.policy_out).expanduser().exists() and not args.overwrite:
        raise ConfigError(f"policy file '{args.policy_out}' already exists; pass --overwrite or choose another path")
    if args.episodes is not None and args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {args.episodes})")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    ensure_output_free(args.out, args.overwrite)
    loaded = load_from_args(args)
    config = PolicyConfig(ratio=args.ratio, variant=args.variant, episodes=args.episodes, lr=args.lr, seed=args.seed)
    step = slim_model(loaded, args.method, config, args.policy, args.policy_out, args.overwrite,
                      progress=not args.no_progress)
    out = save_checkpoint(loaded, args.out, step, overwrite=args.overwrite)
    result = step["result"]
    print(f"slim ({args.method}): FFN width {result['ffn_width_before']} -> {result['ffn_width_after']}, "
          f"parameters {result['params_before']:,} -> {result['params_after']:,}; wrote {out}")
    return 0
