"""`layercut prune`: remove decoder blocks with a depth-pruning method and export the result."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from layercut.commands.flags import (add_calib_args, add_cut_args, add_model_args, add_output_args, calib_sources,
                                    int_at_least, positive_int)
from layercut.commands.options import add_option_groups, options_from_args
from layercut.errors import ConfigError
from layercut.methods.settings import DEPTH_METHODS, GRANULARITIES, OFFLOAD_CHOICES

if TYPE_CHECKING:
    from layercut.loading import LoadedModel
    from layercut.methods.base import PruneOutcome, PruneRequest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prune", help="cut decoder blocks (ReplaceMe, angular drop, ...)")
    add_model_args(parser)
    add_calib_args(parser)
    add_output_args(parser)
    parser.add_argument("--method", required=True, choices=sorted(DEPTH_METHODS), help="depth-pruning method")
    add_cut_args(parser)
    parser.add_argument("--start", type=int_at_least(0), help="force the first removed block (single cut)")
    parser.add_argument("--num-cuts", type=positive_int, default=1, help="split the cut into this many separate spans")
    parser.add_argument("--select", default=None,
                        help="span score: angular, angular-last or cosine (default: cosine for streamline-*, else angular)")
    parser.add_argument("--offload", choices=OFFLOAD_CHOICES, default="none",
                        help="layers: calibrate one block at a time from the safetensors on disk (CPU; for models "
                             "larger than memory)")
    parser.add_argument("--offload-dir", help="folder for the hidden states spilled between blocks (default: system temp)")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block",
                        help="block: cut whole blocks; attn / mlp: remove --cut attention or MLP sublayers "
                             "(zeroed output projections; --method angular)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_option_groups(parser, DEPTH_METHODS.values())
    healing = parser.add_argument_group("healing (LayerChop; `layercut heal` has every option)")
    healing.add_argument("--heal-steps", type=int_at_least(0), default=0,
                         help="after the cut, continue pretraining for N steps on the --calib text")
    healing.add_argument("--heal-mode", choices=("full", "lora"), default="lora",
                         help="train LoRA matrices (merged) or all weights (default: %(default)s)")
    healing.add_argument("--heal-lr", type=float, default=None, help="peak learning rate (default: 1e-4 full, 1e-3 lora)")
    parser.set_defaults(run=run)


def request_from_args(args: argparse.Namespace) -> PruneRequest:
    from layercut.prune import METHODS, PruneRequest

    spec = METHODS[args.method]
    return PruneRequest(
        method=args.method, cut=args.cut, start=args.start, min_start=args.min_start, num_cuts=args.num_cuts,
        select=args.select or spec.select, batch_size=args.batch_size, seed=args.seed,
        granularity=args.granularity, allow_last=args.allow_last, progress=not args.no_progress,
        options=options_from_args(args, spec.options))


def load_for_prune(args: argparse.Namespace) -> LoadedModel:
    """The whole model, or with --offload layers an empty skeleton whose blocks are read when needed."""
    from layercut.commands.common import load_from_args, seed_everything
    from layercut.onload import load_onloaded

    if args.offload != "layers":
        return load_from_args(args)
    seed_everything(args.seed)
    return load_onloaded(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                         spill_dir=args.offload_dir)


def heal_after_prune(loaded: LoadedModel, args: argparse.Namespace) -> dict:
    """`--heal-steps N`: heal the cut model on the calibration text; returns the heal record for the card."""
    from layercut.healing.trainer import build_config, heal, heal_step_record

    config = build_config(data=calib_sources(args), text_field=args.text_field, mode=args.heal_mode,
                          steps=args.heal_steps, lr=args.heal_lr, seq_len=args.seq_len, batch_size=args.batch_size,
                          seed=args.seed)
    result = heal(loaded, config)
    if result.interrupted:
        raise KeyboardInterrupt
    return heal_step_record(config, result)


def describe_removal(outcome: PruneOutcome, granularity: str) -> str:
    """One line on what was cut, in the dense model's block numbers."""
    if granularity != "block":
        return f"removed the {granularity} sublayers of blocks {outcome.span_starts}"
    replaced = outcome.details.get("streamline", {}).get("replaced_blocks")
    if replaced:
        module = {"layer": "decoder layer", "ffn": "FFN"}.get(outcome.details["streamline"]["kind"], "module")
        return (f"replaced blocks {replaced[0]}-{replaced[-1]} by one trained {module} "
                f"(removed blocks {outcome.removed})")
    return f"removed blocks {outcome.removed}"


def check_before_loading(args: argparse.Namespace) -> PruneRequest:
    """Everything decided from the arguments and the config alone: the request fits the model, the
    method works on its family, the output location is free, writable and has room."""
    from layercut.commands.common import check_output_room, peek_from_args
    from layercut.export import ensure_output_free
    from layercut.onload import check_offload_supported
    from layercut.prune import check_family, check_request

    request = request_from_args(args)
    ensure_output_free(args.out, args.overwrite)
    if args.offload == "layers":
        if args.device_map:
            raise ConfigError("--offload layers and --device-map both place the weights; pass only one")
        check_offload_supported(args.method, args.granularity, args.heal_steps)
    config = peek_from_args(args)
    check_request(request, config.num_hidden_layers)
    check_family(request, config)
    check_output_room(args, config, args.out)
    return request


def protection_lines(outcome: PruneOutcome) -> list[str]:
    """What the summary says about the blocks the method kept, and why the cut moved off the best span."""
    summary, note = outcome.details.get("protected_summary"), outcome.details.get("protection_note")
    return ([f"protected: {summary}"] if summary else []) + ([note] if note else [])


def run(args: argparse.Namespace) -> int:
    from layercut.commands.common import calib_description, calib_from_args
    from layercut.distributed import is_main_process
    from layercut.export import count_parameters, save_checkpoint
    from layercut.onload import materialize
    from layercut.prune import prune

    request = check_before_loading(args)
    loaded = load_for_prune(args)
    layers_before, params_before = loaded.num_layers, count_parameters(loaded.model)
    windows = calib_from_args(args, loaded)
    outcome = prune(loaded, windows, request)
    result = {"layers_before": layers_before, "layers_after": loaded.num_layers, "removed_blocks": outcome.removed,
              "span_starts": outcome.span_starts, "params_before": params_before,
              "params_after": count_parameters(loaded.model), "seconds": round(outcome.seconds, 2),
              "selected_by": outcome.scores.get("select"), "chosen_spans": outcome.scores.get("chosen"),
              **outcome.details}
    removed_what = describe_removal(outcome, args.granularity)
    step = {"command": "prune", "method": args.method, "summary": f"{removed_what} of {layers_before}",
            "params": request.to_dict(), "calibration": calib_description(args), "result": result,
            "scores": outcome.scores}
    if not is_main_process():
        return 0
    materialize(loaded)
    if args.heal_steps:
        step["heal"] = heal_after_prune(loaded, args)
        step["summary"] += f"; healed: {step['heal']['summary']}"
    save_checkpoint(loaded, args.out, step, overwrite=args.overwrite)
    print(f"{args.method}: {removed_what} ({layers_before} -> {loaded.num_layers} layers, "
          f"{params_before:,} -> {result['params_after']:,} parameters) in {outcome.seconds:.1f}s")
    for line in protection_lines(outcome):
        print(line)
    print(f"saved to {args.out}")
    return 0
