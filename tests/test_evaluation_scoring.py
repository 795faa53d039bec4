"""Log-likelihood scoring: packed, batched scores equal a direct forward pass per request."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, make_tokenizer, tiny_loaded
from layercut.evaluation.scoring import batch_rows, encode_pair, pack_groups, score_requests, shared_prefix_len

REQUESTS = [
    ("Question: what does a list hold?\nAnswer:", " a sequence of items"),
    ("Question: what does a list hold?\nAnswer:", " keys"),
    ("Question: what does a list hold?\nAnswer:", " a mapping from keys to values"),
    ("The loop ends when the", " iterator is exhausted"),
    ("The class ends when the", " iterator is exhausted"),
    ("", " the return value"),
    ("A trailing space moves ", "forward"),
]
GROUPS = [[0, 1, 2], [3, 4], [5], [6]]


def direct_score(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """One unpadded forward pass of context + continuation; sum the continuation's log-probs."""
    ids, cont_len = encode_pair(tokenizer, context, continuation, 512)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    predicting = logprobs[len(ids) - cont_len - 1:-1]
    target = torch.tensor(ids[-cont_len:])
    return float(predicting.gather(-1, target[:, None]).sum()), bool((predicting.argmax(-1) == target).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batched_scores_equal_direct_forward(family):
    loaded = tiny_loaded(family)
    scored = score_requests(loaded.model, loaded.tokenizer, REQUESTS, GROUPS, batch_size=3, progress=False)
    for result, (context, continuation) in zip(scored, REQUESTS):
        logprob, greedy = direct_score(loaded.model, loaded.tokenizer, context, continuation)
        assert result.logprob == pytest.approx(logprob, abs=1e-4)
        assert result.greedy == greedy


def test_ungrouped_scores_equal_grouped():
    loaded = tiny_loaded("llama")
    grouped = score_requests(loaded.model, loaded.tokenizer, REQUESTS, GROUPS, progress=False)
    single = score_requests(loaded.model, loaded.tokenizer, REQUESTS, None, batch_size=1, progress=False)
    assert [s.logprob for s in grouped] == pytest.approx([s.logprob for s in single], abs=1e-4)


def test_trailing_context_space_moves_to_continuation():
    tokenizer = make_tokenizer()
    assert encode_pair(tokenizer, "The value ", "is None", 512) == encode_pair(tokenizer, "The value", " is None", 512)


def test_empty_context_starts_from_bos():
    tokenizer = make_tokenizer()
    ids, cont_len = encode_pair(tokenizer, "", " hello", 512)
    assert ids[0] == tokenizer.bos_token_id and cont_len == len(ids) - 1


def test_long_input_keeps_rightmost_tokens():
    tokenizer = make_tokenizer()
    ids, cont_len = encode_pair(tokenizer, " ".join(["word"] * 100), " end", 16)
    assert len(ids) == 17 and ids[-cont_len:] == encode_pair(tokenizer, "word", " end", 512)[0][-cont_len:]


def test_shared_prefix_leaves_each_sequence_a_token():
    assert shared_prefix_len([[1, 2, 3], [1, 2, 4]]) == 2
    assert shared_prefix_len([[1, 2], [1, 2, 3]]) == 1
    assert shared_prefix_len([[5, 6, 7]]) == 2


def test_group_too_long_for_model_falls_back_to_single_rows():
    encoded = [([1, 2, 3, 4, 5], 2), ([1, 2, 3, 6, 7], 2)]
    assert len(pack_groups(encoded, [[0, 1]], max_len=5)) == 1  # prefix 1 2 3, then 4 and 6
    assert len(pack_groups(encoded, [[0, 1]], max_len=4)) == 2


def test_batches_respect_row_and_token_limits():
    rows = pack_groups([([1] * n, 1) for n in (40, 10, 10, 10, 10, 10)], [[i] for i in range(6)], 512)
    batches = batch_rows(rows, batch_size=4, token_budget=60)
    assert [len(batch) for batch in batches] == [1, 4, 1]
    assert all(len(batch) * len(batch[0].tokens) <= 60 for batch in batches[1:])
