"""Width slicing of FFN neurons, through the adapter table.

An FFN neuron j of a block is row j of every MLP input projection (gate and up, or GPT-2's
`c_fc`; for Phi-3's fused `gate_up_proj` row j of the gate half and row j of the up half), entry
j of their biases, and column j of the down projection. Keeping a set of neurons removes the
others exactly: the sliced MLP computes the original MLP restricted to the kept neurons.
"""

from __future__ import annotations

import torch
from torch import nn

from layercut.adapters import ArchAdapter
from layercut.errors import ConfigError
from layercut.linear import select_inputs, select_outputs, weight_out_in
from layercut.loading import LoadedModel


def ffn_width(adapter: ArchAdapter, block: nn.Module) -> int:
    """Number of FFN neurons in `block` (the input width of its down projection)."""
    return int(weight_out_in(adapter.down_proj(block)).shape[1])


def neuron_weight(adapter: ArchAdapter, block: nn.Module) -> torch.Tensor:
    """The first FFN weight W as [d_ff, d]: gate_proj, c_fc, or the gate half of a fused gate_up_proj."""
    weight = weight_out_in(adapter.mlp_inputs(block)[0])
    return weight[: ffn_width(adapter, block)]


def keep_count(width: int, ratio: float) -> int:
    """Neurons kept when pruning a fraction `ratio` of `width`: round((1 - ratio) * width), at least 1."""
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"ratio must be strictly between 0 and 1 (got {ratio}); e.g. --ratio 0.2 removes 20%")
    return max(1, min(width, round((1.0 - ratio) * width)))


def keep_neurons(adapter: ArchAdapter, block: nn.Module, index: torch.Tensor) -> None:
    """Keep only the FFN neurons in `index` (in that order) in one block, in place."""
    width = ffn_width(adapter, block)
    index = index.to(device=weight_out_in(adapter.down_proj(block)).device, dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= width:
        raise ValueError(f"neuron index out of range for FFN width {width}")
    rows = torch.cat([index, index + width]) if adapter.fused_gate_up else index
    for module in adapter.mlp_inputs(block):
        select_outputs(module, rows)
    select_inputs(adapter.down_proj(block), index)


def slice_ffn(loaded: LoadedModel, keep: list[torch.Tensor]) -> int:
    """Keep neurons `keep[i]` in block i of the model and record the new width in the config.

    Every block must keep the same number of neurons: a plain `transformers` config holds one
    FFN width for all layers, so that is the only shape a standard checkpoint can express.
    Indices are sorted first so kept neurons stay in their original order. Returns the new width.
    """
    blocks = loaded.adapter.blocks(loaded.model)
    if len(keep) != len(blocks):
        raise ValueError(f"got {len(keep)} index sets for {len(blocks)} blocks")
    widths = {int(index.numel()) for index in keep}
    if len(widths) != 1:
        raise ValueError(f"every block must keep the same number of neurons, got {sorted(widths)}")
    for block, index in zip(blocks, keep):
        keep_neurons(loaded.adapter, block, torch.sort(index).values)
    new_width = widths.pop()
    setattr(loaded.model.config, loaded.adapter.ffn_width_key, new_width)
    return new_width
