"""LLM-Streamline's stability of a compressed model against its dense original (ALGORITHMS.md §3).

For each question q, sigma_q is the standard deviation of the dense model's per-choice scores;
the weights w = softmax(sigma) over questions favour questions the dense model separates
clearly. Stability = sum_q w_q * [pruned correct on q == dense correct on q]: 1.0 means the
pruned model gets exactly the same questions right and wrong, weighted by the dense model's
confidence.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def choice_probabilities(logprobs: Sequence[float]) -> list[float]:
    """The per-choice scores layercut uses: the softmax of a question's choice log-likelihoods.

    Probabilities keep sigma in [0, 0.5]; raw log-likelihood sums (tens of nats apart) would put
    nearly all of the softmax weight on a single question.
    """
    values = np.asarray(logprobs, dtype=np.float64)
    exp = np.exp(values - values.max())
    return (exp / exp.sum()).tolist()


def stability(dense_scores: Sequence[Sequence[float]], dense_correct: Sequence[bool],
              pruned_correct: Sequence[bool]) -> float:
    """Softmax(sigma)-weighted agreement of pruned and dense correctness, sigma = population
    standard deviation of each question's dense per-choice scores."""
    if not len(dense_scores) == len(dense_correct) == len(pruned_correct) or not dense_scores:
        raise ValueError("stability needs the same non-zero number of questions for both models")
    sigma = np.array([np.std(np.asarray(scores, dtype=np.float64)) for scores in dense_scores])
    weights = np.exp(sigma - sigma.max())
    weights /= weights.sum()
    agree = np.asarray(dense_correct, dtype=bool) == np.asarray(pruned_correct, dtype=bool)
    return float((weights * agree).sum())
