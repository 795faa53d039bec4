"""Task metrics (acc, acc_norm, cloze), LLM-Streamline stability, and perplexity, each against a
hand or direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_loaded
from layercut.data import read_text, tokenize_text
from layercut.evaluation.perplexity import text_perplexity
from layercut.evaluation.scoring import Scored
from layercut.evaluation.stability import choice_probabilities, stability
from layercut.evaluation.tasks import CHOICE, ChoiceItem, Task
from layercut.evaluation.zeroshot import choice_metrics, cloze_metrics, evaluate_task


def test_acc_and_acc_norm_disagree_on_hand_built_item():
    # a 1-byte choice at -3 nats beats a 12-byte one at -9 by sum, loses per byte (-3 < -0.75)
    item = ChoiceItem(("Q:",) * 2, ("a", "bbbbbbbbbbbb"), gold=1)
    metrics, correct = choice_metrics((item,), [[-3.0, -9.0]])
    assert metrics == {"acc": 0.0, "acc_norm": 1.0} and correct == [False]


def test_acc_norm_counts_bytes_not_characters():
    item = ChoiceItem(("Q:",) * 2, ("ééé", "abcd"), gold=0)  # 6 bytes vs 4 bytes, 3 vs 4 characters
    metrics, _ = choice_metrics((item,), [[-5.0, -4.0]])  # per byte: -0.83 > -1.0; per char: -1.67 < -1.0
    assert metrics["acc_norm"] == 1.0


def test_cloze_metrics_are_greedy_accuracy_and_item_perplexity():
    metrics, correct = cloze_metrics([Scored(-1.0, True), Scored(-3.0, False)])
    assert correct == [True, False]
    assert metrics["acc"] == 0.5 and metrics["perplexity"] == pytest.approx(math.exp(2.0))


def test_stability_equals_hand_computation():
    dense_scores = [[0.9, 0.1], [0.5, 0.5], [0.7, 0.2, 0.1]]
    dense_correct, pruned_correct = [True, False, True], [True, True, True]
    sigma = [0.4, 0.0, float(np.std([0.7, 0.2, 0.1]))]
    weights = [math.exp(s) / sum(math.exp(t) for t in sigma) for s in sigma]
    expected = weights[0] + weights[2]  # question 2 flips
    assert stability(dense_scores, dense_correct, pruned_correct) == pytest.approx(expected)
    assert stability(dense_scores, dense_correct, dense_correct) == pytest.approx(1.0)


def test_choice_probabilities_are_a_softmax():
    probs = choice_probabilities([-1.0, -2.0, -3.0])
    expected = np.exp([-1.0, -2.0, -3.0]) / np.exp([-1.0, -2.0, -3.0]).sum()
    assert probs == pytest.approx(expected.tolist())


def test_evaluate_task_scores_follow_log_likelihoods():
    loaded = tiny_loaded("llama")
    items = (ChoiceItem(("The function returns",) * 3, ("None", "a list of values", "x"), gold=1),
             ChoiceItem(("import", "from"), ("os",) * 2, gold=0))
    result = evaluate_task(loaded, Task("hand", CHOICE, items, "acc", "memory"), progress=False)
    expected_acc = [int(np.argmax(lls)) == item.gold for item, lls in zip(items, result.choice_logprobs)]
    assert result.correct == expected_acc and result.items == 2 and result.stats.tokens > 0


def test_perplexity_equals_direct_computation(tmp_path):
    loaded = tiny_loaded("llama")
    path = tmp_path / "eval.txt"
    path.write_text(read_text("builtin:pydoc-eval")[:20_000])
    result = text_perplexity(loaded, str(path), seq_len=64, max_tokens=640, batch_size=4, progress=False)
    ids = tokenize_text(loaded.tokenizer, path.read_text())[:640].view(10, 64)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert result.windows == 10 and result.perplexity == pytest.approx(math.exp(float(nll)), rel=1e-4)
