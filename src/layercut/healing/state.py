"""Training checkpoints of healing: everything needed to continue a run bit for bit.

A checkpoint directory `checkpoint-NNNNNN` holds the trainable weights (`trainable.safetensors`:
all weights in full mode, only the LoRA matrices in LoRA mode), the optimizer and gradient-scaler
state (`optimizer.pt`), the RNG states (`rng.pt`), the training log so far (`log.jsonl`), and
`trainer_state.json` (step, data position, tokens seen, schedule, and a fingerprint of the model
it belongs to). It is written to a temporary sibling and renamed into place. The `.pt` files
are read back with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from layercut.errors import ConfigError
from layercut.export import atomic_replace_dir, follow_umask_tree, make_staging_dir

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
LOG_FILE = "log.jsonl"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies a model's shape: family, sizes, and a hash of every parameter name and shape."""
    config = model.config
    shapes = "\n".join(f"{name}:{tuple(p.shape)}" for name, p in model.named_parameters())
    return {"model_type": config.model_type, "num_layers": int(config.num_hidden_layers),
            "hidden_size": int(config.hidden_size), "vocab_size": int(config.vocab_size),
            "parameters": hashlib.sha256(shapes.encode()).hexdigest()[:16]}


def describe_fingerprint(fingerprint: dict[str, Any]) -> str:
    return (f"{fingerprint['model_type']}, {fingerprint['num_layers']} layers, hidden {fingerprint['hidden_size']}, "
            f"vocab {fingerprint['vocab_size']}")


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable parameters by name (tied parameters appear once)."""
    return {name: param.detach().clone().contiguous() for name, param in model.named_parameters()
            if param.requires_grad}


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch and CUDA random states, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_training_checkpoint(work_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scaler: torch.amp.GradScaler, state: dict[str, Any], log: list[dict],
                             rng: dict[str, Any]) -> Path:
    """Write `work_dir/checkpoint-<step>` atomically and return its path.

    `rng` is the RNG state at the step boundary (taken by the caller with `rng_states()`), so a
    checkpoint saved on Ctrl-C in the middle of a step still resumes exactly.
    """
    from safetensors.torch import save_file

    target = work_dir / checkpoint_name(step)
    work_dir.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(target)
    try:
        save_file(trainable_tensors(model), str(staging / WEIGHTS_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, staging / "optimizer.pt")
        torch.save(rng, staging / "rng.pt")
        (staging / LOG_FILE).write_text("".join(json.dumps(record) + "\n" for record in log))
        (staging / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        follow_umask_tree(staging)
        atomic_replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_training_state(path: Path, fingerprint: dict[str, Any], mode: str) -> dict[str, Any]:
    """The trainer state of checkpoint `path`, after checking it belongs to this model and mode."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ConfigError(f"'{path}' is not a layercut heal checkpoint (no {STATE_FILE}); "
                          f"pass --resume OUT/{CHECKPOINT_PREFIX}NNNNNN")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict) or "step" not in state:
        raise ConfigError(f"checkpoint '{path}' is damaged ({STATE_FILE} is not a valid trainer state); resume from "
                          "an earlier checkpoint-NNNNNN or start again without --resume")
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"checkpoint '{path}' was written for another model "
                          f"({describe_fingerprint(state['fingerprint'])}) but --model is "
                          f"{describe_fingerprint(fingerprint)}; resume with the model that run started from")
    if state.get("mode") != mode:
        raise ConfigError(f"checkpoint '{path}' was written in --mode {state.get('mode')}; resume with that mode")
    return state


def _damaged(path: Path, part: str) -> ConfigError:
    return ConfigError(f"checkpoint '{path}' is damaged ({part} cannot be read); resume from an earlier "
                       "checkpoint-NNNNNN or start again without --resume")


def _read_checkpoint_part(path: Path, name: str, read: Any) -> Any:
    """`read(file)` for one file of a checkpoint; a missing or corrupt file is a one-line ConfigError."""
    try:
        return read(path / name)
    except Exception:  # safetensors, pickle and JSON each fail in their own exception types
        raise _damaged(path, name) from None


def read_checkpoint_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained tensors of checkpoint `path`, checked against `model`'s parameters (names, shapes,
    and every trainable parameter present) but not yet copied into it."""
    from safetensors.torch import load_file

    device = str(next(model.parameters()).device)
    saved = _read_checkpoint_part(path, WEIGHTS_FILE, lambda file: load_file(str(file), device=device))
    params = dict(model.named_parameters())
    wrong = sorted(name for name in saved if name not in params or params[name].shape != saved[name].shape)
    missing = sorted(name for name, p in params.items() if p.requires_grad and name not in saved)
    if wrong or missing:
        raise ConfigError(f"checkpoint '{path}' does not match this model ({(wrong + missing)[0]} differs); "
                          "resume with the model and --mode that run used")
    return saved


def copy_weights(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Copy tensors read by `read_checkpoint_weights` into `model`, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)


def load_training_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             scaler: torch.amp.GradScaler) -> list[dict]:
    """Restore weights, optimizer, scaler and RNG states from checkpoint `path`; return its log.

    Every file is read and checked before anything is restored, so a damaged checkpoint leaves
    the model and optimizer untouched."""
    saved = read_checkpoint_weights(path, model)
    optim_state = _read_checkpoint_part(path, "optimizer.pt", lambda file: torch.load(file, weights_only=True))
    rng = _read_checkpoint_part(path, "rng.pt", lambda file: torch.load(file, weights_only=True))
    log = _read_checkpoint_part(path, LOG_FILE, lambda file: [json.loads(line) for line in
                                                              file.read_text().splitlines() if line.strip()])
    if not isinstance(optim_state, dict) or not {"optimizer", "scaler"} <= set(optim_state):
        raise _damaged(path, "optimizer.pt")
    try:
        optimizer.load_state_dict(optim_state["optimizer"])
        scaler.load_state_dict(optim_state["scaler"])
        restore_rng_states(rng)
    except (KeyError, ValueError, TypeError, RuntimeError):
        raise _damaged(path, "optimizer.pt / rng.pt") from None
    copy_weights(model, saved)
    return log
