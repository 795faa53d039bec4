"""Bounded-memory log-probabilities: the chunked LM head equals the model's own full logits, for every
family in the adapter table (tied heads and Gemma's final soft-cap included), in perplexity and in
task scoring, with chunks that do and do not divide the positions."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import FAMILIES, random_windows, tiny_loaded
from layercut.adapters import soft_cap
from layercut.evaluation.logprobs import chunk_positions, chunked_target_logprobs
from layercut.evaluation.perplexity import window_nll
from layercut.evaluation.scoring import score_requests
from test_evaluation_scoring import GROUPS, REQUESTS, direct_score

VARIANTS = [(family, {}) for family in FAMILIES] + [
    ("gemma2", {"final_logit_softcapping": 0.3}),
    ("gemma3", {"final_logit_softcapping": 0.3}),
    ("llama", {"tie_word_embeddings": True}),
    ("mistral", {"sliding_window": 4}),  # one window for every layer, shorter than the requests
    ("gemma2", {"sliding_window": 4}),  # sliding and full layers alternate
]
IDS = [family + "".join(f"-{key}" for key in overrides) for family, overrides in VARIANTS]


def test_chunk_positions_fit_the_budget():
    assert chunk_positions(262_144, 256) == 256  # Gemma 3: 256 x 262,144 x 4 bytes = 256 MiB
    assert chunk_positions(49_152, 256) == 1365
    assert chunk_positions(262_144, 256) * 262_144 * 4 <= 256 * 2**20
    assert chunk_positions(10**9, 1) == 1


def test_soft_cap_formula():
    logits = torch.linspace(-100, 100, 11)
    assert torch.allclose(soft_cap(logits, 30.0), 30.0 * torch.tanh(logits / 30.0))


@pytest.mark.parametrize("family, overrides", VARIANTS, ids=IDS)
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_chunked_head_equals_full_logits(family, overrides, chunk):
    loaded = tiny_loaded(family, num_layers=2, **overrides)
    model, adapter = loaded.model, loaded.adapter
    windows = random_windows(batch=4, seq_len=16)
    targets = random_windows(batch=4, seq_len=16, seed=1).reshape(-1)
    with torch.no_grad():
        full = model(input_ids=windows).logits.reshape(-1, adapter.vocab_size(model))
        hidden = adapter.final_hidden(model, input_ids=windows).reshape(full.shape[0], -1)
        head = lambda h: adapter.head_logits(model, h)  # noqa: E731
        logprobs, greedy = chunked_target_logprobs(head, hidden, targets, chunk)
        only, skipped = chunked_target_logprobs(head, hidden, targets, chunk, greedy=False)
    direct = torch.log_softmax(full, dim=-1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(logprobs, direct, atol=1e-5)
    assert torch.equal(greedy, full.argmax(-1) == targets)
    assert torch.equal(only, logprobs) and skipped is None
    if "final_logit_softcapping" in overrides:  # the cap is active: it bounds logits the plain head exceeds
        assert full.abs().max() <= 0.3 < model.lm_head(hidden).abs().max()


@pytest.mark.parametrize("family, overrides", VARIANTS, ids=IDS)
@pytest.mark.parametrize("chunk", [7, 15])
def test_window_nll_equals_full_cross_entropy(family, overrides, chunk, monkeypatch):
    loaded = tiny_loaded(family, num_layers=2, **overrides)
    windows = random_windows(batch=5, seq_len=16)  # batches of 30 and 15 predicted tokens: 15 divides them, 7 does not
    monkeypatch.setattr("layercut.evaluation.logprobs.chunk_positions", lambda vocab, mib: chunk)
    nll, count = window_nll(loaded.model, windows, batch_size=2, progress=False)
    with torch.no_grad():
        logits = loaded.model(input_ids=windows).logits[:, :-1]
    direct = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                                               reduction="sum")
    assert count == 75 and nll == pytest.approx(float(direct), rel=1e-5)
    assert math.exp(nll / count) == pytest.approx(math.exp(float(direct) / 75), rel=1e-5)


@pytest.mark.parametrize("family, overrides", VARIANTS, ids=IDS)
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_task_scores_equal_full_logits(family, overrides, chunk, monkeypatch):
    loaded = tiny_loaded(family, num_layers=2, **overrides)
    monkeypatch.setattr("layercut.evaluation.logprobs.chunk_positions", lambda vocab, mib: chunk)
    scored = score_requests(loaded.model, loaded.tokenizer, REQUESTS, GROUPS, batch_size=3, progress=False)
    for result, (context, continuation) in zip(scored, REQUESTS):
        logprob, greedy = direct_score(loaded.model, loaded.tokenizer, context, continuation)
        assert result.logprob == pytest.approx(logprob, abs=1e-4)
        assert result.greedy == greedy
