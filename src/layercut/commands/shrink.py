"""`layercut shrink`: give a size target and a time budget, get the best healed model layercut can make,
with a report. Interrupt with Ctrl-C and continue with --resume."""

from __future__ import annotations

import argparse
import json
import sys

from layercut.commands.flags import add_model_args, calib_sources, int_at_least, positive_int
from layercut.errors import ConfigError

DESCRIPTION = ("Shrink a model to a size target: score every cut (drop / ReplaceMe) in one calibration pass, add "
               "Streamline's, check the best on held-out text, heal the winner within a time budget, evaluate, "
               "write model + report.")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shrink", help=DESCRIPTION, description=DESCRIPTION)
    add_model_args(parser)
    parser.set_defaults(dtype="float32")
    target = parser.add_argument_group("target (exactly one)")
    target.add_argument("--target-params", type=float, help="fraction of the dense parameters to keep, e.g. 0.8")
    target.add_argument("--target-layers", type=float, help="decoder layers to keep")
    target.add_argument("--target-speedup", type=float,
                        help="ideal decode speed-up by `layercut bench`'s FLOP model (prompt 512, 128 generated)")
    calib = parser.add_argument_group("calibration and check")
    calib.add_argument("--calib", action="append", help="calibration text (its held-out part checks the candidates); "
                                                        "repeat for a mix (default: builtin:pydoc-calib)")
    calib.add_argument("--samples", type=positive_int, default=32, help="calibration windows (default: %(default)s)")
    calib.add_argument("--heldout", type=positive_int, default=16,
                       help="other windows of the calibration text for the check (default: %(default)s)")
    calib.add_argument("--seq-len", type=int_at_least(2), default=256, help="tokens per window (default: %(default)s)")
    calib.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass")
    calib.add_argument("--check-top", type=positive_int, default=3,
                       help="best predicted candidates checked on held-out text (default: %(default)s)")
    calib.add_argument("--methods", type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
                       default=None, help="comma-separated candidate methods (default: drop,replaceme-lstsq,"
                                          "streamline-layer)")
    calib.add_argument("--fit-memory-gib", type=float, default=4.0, help="memory allowed for the least-squares sums")
    heal = parser.add_argument_group("healing")
    heal.add_argument("--budget-minutes", type=float, required=True, help="wall-clock budget of the whole run")
    heal.add_argument("--heal-data", action="append", default=[],
                      help="training text (repeat for a mix; default: the calibration text)")
    heal.add_argument("--heal-mode", choices=("full", "lora"), default="lora", help="default: %(default)s")
    heal.add_argument("--heal-lr", type=float, default=None, help="peak learning rate (default: 1e-4 full, 1e-3 lora)")
    heal.add_argument("--heal-seq-len", type=int_at_least(2), default=256, help="default: %(default)s")
    heal.add_argument("--heal-batch-size", type=positive_int, default=4, help="default: %(default)s")
    heal.add_argument("--heal-tokens", type=positive_int, default=None,
                      help="stop healing after this many training tokens, even with time left")
    heal.add_argument("--kd-weight", type=float, default=0.5,
                      help="distillation weight from the dense model; 0 trains on next tokens only")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--ppl", default=None, help="evaluation text: dense vs final perplexity in the report")
    evaluation.add_argument("--max-tokens", type=positive_int, default=16384, help="tokens of --ppl text")
    evaluation.add_argument("--ppl-seq-len", type=int_at_least(2), default=256, help="windows of --ppl text")
    parser.add_argument("--out", required=True, help="output directory: model/, report.md, report.png, state")
    parser.add_argument("--overwrite", action="store_true", help="start again in an existing --out")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out (skips finished stages)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(run=run)


def target_from_args(args: argparse.Namespace):
    """The one target given, as a `Target`."""
    from layercut.shrink import Target

    given = [(kind, value) for kind, value in (("params", args.target_params), ("layers", args.target_layers),
                                               ("speedup", args.target_speedup)) if value is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --target-params, --target-layers, --target-speedup")
    return Target(*given[0])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from layercut.commands.common import load_from_args
    from layercut.export import ensure_output_free
    from layercut.loading import peek_config
    from layercut.shrink import METHODS, STATE_FILE, ShrinkConfig, check_target_layers, shrink

    target = target_from_args(args)
    if args.budget_minutes <= 0:
        raise ConfigError(f"--budget-minutes {args.budget_minutes:g} must be positive")
    if not 0.0 <= args.kd_weight <= 1.0:
        raise ConfigError(f"--kd-weight {args.kd_weight:g} must be between 0 and 1")
    if target.kind == "layers":
        check_target_layers(target.value, peek_config(args.model, args.trust_remote_code).num_hidden_layers)
    if args.resume:
        if not (Path(args.out) / STATE_FILE).is_file():
            raise ConfigError(f"--resume: '{args.out}' holds no {STATE_FILE}; start without --resume")
    else:
        ensure_output_free(args.out, args.overwrite)
    config = ShrinkConfig(
        target=target, calib=calib_sources(args), samples=args.samples, heldout=args.heldout, seq_len=args.seq_len,
        batch_size=args.batch_size, check_top=args.check_top, methods=args.methods or METHODS,
        budget_minutes=args.budget_minutes, heal_data=args.heal_data, heal_mode=args.heal_mode, heal_lr=args.heal_lr,
        heal_seq_len=args.heal_seq_len, heal_batch_size=args.heal_batch_size, heal_tokens=args.heal_tokens,
        kd_weight=args.kd_weight, ppl=args.ppl, ppl_max_tokens=args.max_tokens, ppl_seq_len=args.ppl_seq_len,
        fit_memory_gib=args.fit_memory_gib, seed=args.seed, progress=not args.no_progress)
    loaded = load_from_args(args)
    result = shrink(loaded, config, args.out, resume=args.resume)
    if result.interrupted:
        print("layercut: interrupted while healing; continue with the same command and --resume", file=sys.stderr)
        return 130
    print(json.dumps({"out": str(result.model_dir), "chosen": result.state.chosen, "final": result.state.final,
                      "seconds": result.state.seconds}, indent=2))
    return 0
