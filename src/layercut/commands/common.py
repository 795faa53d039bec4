"""Flags shared by several subcommands, and the helpers that turn them into library calls."""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch

from layercut.data import calibration_windows
from layercut.loading import LoadedModel, load_model

DEFAULT_MODEL = "smollm2-135m"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="alias (smollm2-135m), HF directory, .gguf file or hub id (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the checkpoint to run (off by default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--device-map", default=None,
                        help="let accelerate place the model over several devices (e.g. auto); overrides --device")


def add_calib_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--calib", default=None if required else "builtin:pydoc-calib", required=required,
                        help="calibration text: .txt, .jsonl, builtin:pydoc-calib, or hf:NAME[:CONFIG][:SPLIT]")
    parser.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text")
    parser.add_argument("--samples", type=int, default=64, help="number of calibration windows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")


def add_output_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--out", required=required, help="output directory (a Hugging Face checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


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
    return calibration_windows(loaded.tokenizer, args.calib, args.samples, args.seq_len, args.seed, args.text_field)


def calib_description(args: argparse.Namespace) -> dict:
    """What the model card records about the calibration data."""
    return {"source": args.calib, "samples": args.samples, "seq_len": args.seq_len, "seed": args.seed}
