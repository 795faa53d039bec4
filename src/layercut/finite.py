"""Non-finite weights and losses: a NaN or Inf anywhere makes every later number meaningless, so
layercut refuses to save or report such a model and names the first tensor that holds one."""

from __future__ import annotations

import math

import torch
from torch import nn

from layercut.errors import NonFiniteError


def first_non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or Inf, or None when all are finite."""
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def require_finite(model: nn.Module) -> None:
    """Raise `NonFiniteError` naming the first non-finite tensor of `model`."""
    name = first_non_finite(model)
    if name is not None:
        raise NonFiniteError(f"the model's weight '{name}' holds NaN or Inf values; the input model or a step "
                             "before this one is broken (check the source checkpoint, lower the learning rate)")


def require_finite_value(value: float, what: str, model: nn.Module | None = None) -> float:
    """Return `value`, or raise `NonFiniteError` when it is NaN/Inf (naming a bad weight when one exists)."""
    if math.isfinite(value):
        return value
    culprit = first_non_finite(model) if model is not None else None
    where = f" (weight '{culprit}' holds NaN or Inf)" if culprit else ""
    raise NonFiniteError(f"{what} is {value}{where}; the model produces non-finite outputs, so no score is "
                         "meaningful: check the checkpoint and the steps that made it")
