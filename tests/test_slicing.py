"""FFN width slicing through the adapter: exact restriction of the MLP to the kept neurons."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_loaded
from layercut.errors import ConfigError
from layercut.linear import weight_out_in
from layercut.slicing import ffn_width, keep_count, keep_neurons, neuron_weight, slice_ffn


def restricted_mlp_output(adapter, block, index: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The original MLP with every neuron outside `index` silenced (its down-projection column zeroed)."""
    silenced = copy.deepcopy(block)
    down = adapter.down_proj(silenced)
    mask = torch.zeros(ffn_width(adapter, silenced))
    mask[index] = 1.0
    with torch.no_grad():
        weight_out_in(down).mul_(mask)
    return adapter.mlp_module(silenced)(hidden)


def test_keep_count_rounds_and_rejects_bad_ratios() -> None:
    assert keep_count(1536, 0.2) == 1229
    assert keep_count(128, 0.5) == 64
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="ratio"):
            keep_count(128, bad)


def test_sliced_mlp_equals_restricted_original(family: str) -> None:
    loaded = tiny_loaded(family, num_layers=2)
    adapter = loaded.adapter
    block = adapter.blocks(loaded.model)[0]
    width = ffn_width(adapter, block)
    gen = torch.Generator().manual_seed(1)
    index = torch.sort(torch.randperm(width, generator=gen)[: keep_count(width, 0.3)]).values
    for module in adapter.mlp_inputs(block) + [adapter.down_proj(block)]:
        if getattr(module, "bias", None) is not None:
            with torch.no_grad():
                module.bias.normal_(0.0, 0.1)
    hidden = torch.randn(3, 5, loaded.model.config.hidden_size, generator=gen)
    expected = restricted_mlp_output(adapter, block, index, hidden)
    gate_rows = neuron_weight(adapter, block)[index].clone()

    keep_neurons(adapter, block, index)

    assert ffn_width(adapter, block) == keep_count(width, 0.3)
    assert torch.equal(neuron_weight(adapter, block), gate_rows)
    with torch.no_grad():
        torch.testing.assert_close(adapter.mlp_module(block)(hidden), expected, rtol=1e-5, atol=1e-6)


def test_slice_ffn_sets_config_width_and_needs_one_width() -> None:
    loaded = tiny_loaded("llama", num_layers=2)
    adapter = loaded.adapter
    with pytest.raises(ValueError, match="same number"):
        slice_ffn(loaded, [torch.arange(10), torch.arange(12)])
    assert slice_ffn(loaded, [torch.arange(100), torch.arange(28, 128)]) == 100
    assert loaded.model.config.intermediate_size == 100
    for block in adapter.blocks(loaded.model):
        assert ffn_width(adapter, block) == 100
    logits = loaded.model(input_ids=torch.tensor([[3, 4, 5]])).logits
    assert torch.isfinite(logits).all()
