"""Flags of the trained and search-based depth-pruning methods (LLM-Streamline, perplexity drop),
shared by `layercut prune` and `layercut compare`; they travel in `PruneRequest.extra`."""

from __future__ import annotations

import argparse
from typing import Any

from layercut.methods.baselines import PPL_SAMPLES
from layercut.methods.streamline import StreamlineSettings

DEFAULT_SELECT = {"streamline-layer": "cosine", "streamline-ffn": "cosine"}


def add_method_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("streamline-layer / streamline-ffn (LLM-Streamline)")
    defaults = StreamlineSettings()
    group.add_argument("--train-samples", type=int, default=defaults.train_samples,
                       help="calibration windows used to train the replacement, a tenth held out (0 = all)")
    group.add_argument("--epochs", type=int, default=defaults.epochs, help="training epochs (default: %(default)s)")
    group.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (default: %(default)s)")
    group.add_argument("--train-batch-tokens", type=int, default=defaults.train_batch_tokens,
                       help="tokens per training step (default: %(default)s)")
    group.add_argument("--patience", type=int, default=defaults.patience,
                       help="stop after this many epochs without held-out improvement (default: %(default)s)")
    group.add_argument("--lm-loss-steps", type=int, default=defaults.lm_loss_steps,
                       help="second stage: steps of next-token loss on the replacement only (default: off)")
    group.add_argument("--lm-loss-lr", type=float, default=defaults.lm_loss_lr,
                       help="learning rate of the LM-loss stage (default: %(default)s)")
    group.add_argument("--streamline-memory", type=float, default=defaults.memory_gib,
                       help="GiB of captured hidden states kept in RAM; above it they go to a memory-mapped "
                            "temp file (default: %(default)s)")
    ppl = parser.add_argument_group("ppl (perplexity-drop selection)")
    ppl.add_argument("--ppl-samples", type=int, default=PPL_SAMPLES,
                     help="calibration windows scored per candidate span (default: %(default)s)")


def method_extra(args: argparse.Namespace, method: str) -> dict[str, Any]:
    """The `PruneRequest.extra` entries of `method` from parsed flags (empty for other methods)."""
    if method.startswith("streamline-"):
        return {"train_samples": args.train_samples, "epochs": args.epochs, "lr": args.lr,
                "train_batch_tokens": args.train_batch_tokens, "patience": args.patience,
                "lm_loss_steps": args.lm_loss_steps, "lm_loss_lr": args.lm_loss_lr,
                "memory_gib": args.streamline_memory}
    if method == "ppl":
        return {"ppl_samples": args.ppl_samples}
    return {}


def select_for(method: str, select: str | None) -> str:
    """The span score a method selects by when --select is not given (cosine for LLM-Streamline)."""
    return select or DEFAULT_SELECT.get(method, "angular")
