"""LaCo layer collapse: the merge rule, the similarity check and the method."""

from __future__ import annotations

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.errors import ConfigError
from layercut.methods.laco import LacoSettings, collapse, merge_blocks, merge_parameters
from layercut.prune import PruneRequest, prune


def test_merge_parameters_formula():
    base, a, b = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(merge_parameters(base, [a, b]), base + (a - base) + (b - base))


def test_merging_a_layer_with_itself_equals_the_layer():
    loaded = tiny_loaded("llama")
    block = loaded.adapter.blocks(loaded.model)[2]
    before = {name: param.detach().clone() for name, param in block.named_parameters()}
    merge_blocks(block, [block, block])
    for name, param in block.named_parameters():
        assert torch.equal(param, before[name])


def test_laco_removes_cut_blocks_and_records_trials():
    loaded = tiny_loaded("llama", num_layers=8)
    outcome = prune(loaded, random_windows(), PruneRequest(method="laco", cut=3, progress=False,
                                                           options={"laco_threshold": -1.0, "laco_layers": 2}))
    assert loaded.num_layers == 5 and len(outcome.removed) == 3
    trials = outcome.details["laco"]["trials"]
    assert all(t["accepted"] for t in trials) and sorted(i for t in trials for i in t["merged"]) == outcome.removed
    assert loaded.model.config.num_hidden_layers == 5
    assert loaded.model(random_windows(1, 8)).logits.shape == (1, 8, 320)


def test_merged_block_holds_the_rdsc_parameters():
    loaded = tiny_loaded("qwen2")
    blocks = list(loaded.adapter.blocks(loaded.model))
    expected = {name: merge_parameters(p.detach(), [dict(blocks[5].named_parameters())[name].detach()])
                for name, p in blocks[4].named_parameters()}
    removed, _ = collapse(loaded, random_windows(), 1, LacoSettings(layers=2, threshold=-1.0))
    assert removed == [5]
    for name, param in loaded.adapter.blocks(loaded.model)[4].named_parameters():
        assert torch.allclose(param, expected[name])


def test_rejected_merges_are_undone_and_reported():
    loaded = tiny_loaded("llama")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    with pytest.raises(ConfigError, match="laco-threshold"):
        collapse(loaded, random_windows(), 2, LacoSettings(threshold=1.0))
    assert loaded.num_layers == 6
    for name, param in loaded.model.named_parameters():
        assert torch.equal(param, before[name])
