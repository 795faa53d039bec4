"""Uniform access to linear layers stored either as torch `nn.Linear` ([out, in]) or as
GPT-2's `Conv1D` ([in, out]), so the math elsewhere sees one layout: [out, in]."""

from __future__ import annotations

import torch
from torch import nn


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as an [out_features, in_features] tensor (a view for Linear, a transpose for Conv1D)."""
    if isinstance(module, nn.Linear):
        return module.weight
    if _is_conv1d(module):
        return module.weight.t()
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def set_weight_out_in(module: nn.Module, weight: torch.Tensor) -> None:
    """Replace the weight with `weight` given as [out, in], keeping dtype/device and the layer type."""
    param = module.weight
    new = weight if isinstance(module, nn.Linear) else weight.t()
    module.weight = nn.Parameter(new.to(dtype=param.dtype, device=param.device).contiguous(),
                                 requires_grad=param.requires_grad)
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape
    else:
        module.nf = weight.shape[0]


def set_bias(module: nn.Module, bias: torch.Tensor | None) -> None:
    """Replace the bias (or leave it absent when `bias` is None)."""
    if bias is None:
        return
    param = module.bias
    module.bias = nn.Parameter(bias.to(dtype=param.dtype, device=param.device).contiguous(),
                               requires_grad=param.requires_grad)


def fold_right_matrix(module: nn.Module, transform: torch.Tensor) -> None:
    """Make the layer output `y T` instead of `y` for a square [d, d] matrix T.

    With y = x W^T + b (W as [out, in]), y T = x (T^T W)^T + b T, so W <- T^T W and b <- T^T b.
    The product is formed in float64 and cast back to the layer's dtype.
    """
    weight = weight_out_in(module)
    t64 = transform.to(device=weight.device, dtype=torch.float64)
    with torch.no_grad():
        new_weight = t64.T @ weight.to(torch.float64)
        set_weight_out_in(module, new_weight)
        if module.bias is not None:
            set_bias(module, t64.T @ module.bias.to(torch.float64))


def select_outputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the output features in `index` (rows of [out, in] and entries of the bias)."""
    with torch.no_grad():
        weight = weight_out_in(module)
        set_weight_out_in(module, weight[index].clone())
        if module.bias is not None:
            set_bias(module, module.bias[index].clone())


def select_inputs(module: nn.Module, index: torch.Tensor) -> None:
    """Keep only the input features in `index` (columns of [out, in]); the bias is unchanged."""
    with torch.no_grad():
        weight = weight_out_in(module)
        set_weight_out_in(module, weight[:, index].clone())
