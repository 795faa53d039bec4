"""The helpers that turn parsed flags into library calls (load the model, read calibration text and
tasks, check outputs); the commands import them when they run (the flags are in `commands/flags.py`)."""

from __future__ import annotations

import argparse
import random
from typing import Any

import numpy as np
import torch

from layercut.commands.flags import calib_sources
from layercut.data import calibration_windows
from layercut.errors import ConfigError
from layercut.evaluation.suite import PerplexitySettings
from layercut.evaluation.tasks import Task, load_task
from layercut.export import check_output_location
from layercut.loading import (LoadedModel, estimate_checkpoint_bytes, load_model, peek_config, resolve_device,
                              resolve_dtype)


def tasks_from_args(args: argparse.Namespace) -> list[Task]:
    """Every requested task, read and checked before any model is loaded."""
    names = [name.strip() for name in (args.tasks or "").split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise ConfigError("--tasks names a task twice; list each once")
    return [load_task(name, args.tasks_dir, args.limit, args.num_fewshot) for name in names]


def ppl_from_args(args: argparse.Namespace) -> PerplexitySettings | None:
    """The perplexity settings, or None without --ppl."""
    if not args.ppl:
        return None
    return PerplexitySettings(args.ppl, args.ppl_seq_len, args.max_tokens, args.ppl_batch_size, args.ppl_text_field)


def peek_from_args(args: argparse.Namespace) -> Any:
    """The model's config, read without its weights, so a command refuses what cannot work first."""
    return peek_config(args.model, args.trust_remote_code)


def check_output_room(args: argparse.Namespace, config: Any, path: str, flag: str = "--out",
                      dtype: str | None = None) -> None:
    """Refuse an output location that is not writable or lacks room for a checkpoint of `config`
    (in `dtype`, by default the one the model will load in), before any weights load."""
    resolved = resolve_dtype(dtype or args.dtype, resolve_device(args.device))
    check_output_location(path, estimate_checkpoint_bytes(config, resolved), flag)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    seed_everything(args.seed)
    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      device_map=args.device_map)


def calib_from_args(args: argparse.Namespace, loaded: LoadedModel) -> torch.Tensor:
    return calibration_windows(loaded.tokenizer, calib_sources(args), args.samples, args.seq_len, args.seed,
                               args.text_field)


def calib_description(args: argparse.Namespace) -> dict:
    """What the model card records about the calibration data (one source, or the list of a mix)."""
    sources = calib_sources(args)
    return {"source": sources[0] if len(sources) == 1 else sources, "samples": args.samples,
            "seq_len": args.seq_len, "seed": args.seed}
