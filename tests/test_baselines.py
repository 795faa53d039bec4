"""Depth-pruning baselines: ShortGPT against Block Influence computed by hand, last, random, ppl."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.errors import ConfigError
from layercut.evaluation.perplexity import window_nll
from layercut.loading import LoadedModel
from layercut.methods.baselines import last_blocks, random_blocks, span_perplexities
from layercut.prune import PruneRequest, prune
from layercut.surgery import remove_blocks


def _request(method: str, cut: int = 2, **kw) -> PruneRequest:
    return PruneRequest(method=method, cut=cut, progress=False, **kw)


def test_shortgpt_removes_lowest_block_influence_by_hand():
    loaded = tiny_loaded("llama", num_layers=8)
    windows = random_windows(4, 16)
    with torch.no_grad():
        hidden = loaded.model(input_ids=windows, output_hidden_states=True).hidden_states
    # hidden_states[-1] has the final norm applied; the last block's raw output is what BI compares.
    states = list(hidden[:-1])
    captured = {}
    block = loaded.adapter.blocks(loaded.model)[-1]
    handle = block.register_forward_hook(lambda m, a, out: captured.update(x=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        loaded.model(input_ids=windows)
    handle.remove()
    states.append(captured["x"])
    influence = [1.0 - float(torch.nn.functional.cosine_similarity(states[k].double(), states[k + 1].double(),
                                                                   dim=-1).mean()) for k in range(8)]
    expected = sorted(sorted(range(1, 7), key=lambda k: influence[k])[:3])  # blocks 0 and 7 are protected
    unguarded = sorted(sorted(range(8), key=lambda k: influence[k])[:3])
    fresh = copy.deepcopy(loaded)
    outcome = prune(loaded, windows, _request("shortgpt", cut=3))
    assert outcome.removed == expected
    assert outcome.scores["block_influence"] == pytest.approx(influence, abs=1e-6)
    assert loaded.num_layers == 5
    assert [guard["block"] for guard in outcome.details["protected"]] == [0, 7]
    assert (expected != unguarded) == ("protection_note" in outcome.details)
    allowed = prune(fresh, windows, _request("shortgpt", cut=3, min_start=0, allow_last=True))
    assert allowed.removed == unguarded and allowed.details["protected"] == []


def test_last_keeps_the_final_block():
    assert last_blocks(30, 8) == list(range(21, 29))
    loaded = tiny_loaded("gpt2")
    final = loaded.adapter.blocks(loaded.model)[-1]
    outcome = prune(loaded, random_windows(2, 8), _request("last", cut=3))
    assert outcome.removed == [2, 3, 4]
    assert loaded.adapter.blocks(loaded.model)[-1] is final


def test_random_is_seeded():
    assert random_blocks(30, 8, 0) == random_blocks(30, 8, 0)
    assert random_blocks(30, 8, 0) != random_blocks(30, 8, 1)
    assert all(0 <= k < 29 for k in random_blocks(30, 8, 3)) and len(set(random_blocks(30, 8, 3))) == 8
    loaded = tiny_loaded("llama")
    outcome = prune(loaded, random_windows(2, 8), _request("random", cut=2, seed=5))
    assert outcome.removed == random_blocks(6, 2, 5)


def test_ppl_picks_the_span_with_lowest_perplexity_by_hand():
    loaded = tiny_loaded("qwen2")
    windows = random_windows(6, 16)
    by_hand = {}
    for start in range(0, 5):
        copy_ = LoadedModel(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.adapter, "copy")
        remove_blocks(copy_, [start, start + 1])
        nll, count = window_nll(copy_.model, windows[:4], progress=False)
        by_hand[start] = math.exp(nll / count)
    scanned = span_perplexities(loaded, windows[:4], 2, list(range(5)), progress=False)
    assert scanned == pytest.approx(by_hand, rel=1e-5)
    assert loaded.num_layers == 6
    outcome = prune(loaded, windows, _request("ppl", options={"ppl_samples": 4}))
    best = min((1, 2, 3), key=by_hand.get)  # spans covering block 0 or the last block 5 are protected
    assert outcome.removed == [best, best + 1] and outcome.span_starts == [best]


def test_ppl_refuses_a_min_start_with_no_span():
    loaded = tiny_loaded("llama", num_layers=4)
    with pytest.raises(ConfigError, match="or --min-start"):
        prune(loaded, random_windows(2, 8), PruneRequest(method="ppl", cut=2, min_start=3, progress=False))
