"""Evaluate one zero-/few-shot task: build the harness's requests, score them, compute metrics.

Multiple choice: `acc` = the choice with the highest summed log-probability is gold; `acc_norm`
= the same after dividing each sum by the UTF-8 byte length of the continuation it scores
(ALGORITHMS.md §6; lm-evaluation-harness divides by characters, the same for ASCII text). In
partial-scoring tasks (WinoGrande) all options score one shared continuation, so acc_norm = acc. Cloze (LAMBADA): `acc` =
the continuation is what greedy decoding produces; `perplexity` = exp(-mean per-item
log-likelihood), the harness's LAMBADA perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from layercut.evaluation.logprobs import DEFAULT_LOGITS_MIB
from layercut.evaluation.scoring import Scored, ScoringStats, score_requests
from layercut.evaluation.tasks import CLOZE, TARGET_DELIMITER, ChoiceItem, Task
from layercut.loading import LoadedModel


@dataclass
class TaskResult:
    """Metrics of one task, with per-question details kept for stability (not written to JSON)."""

    name: str
    kind: str
    metric: str
    items: int
    num_fewshot: int
    source: str
    metrics: dict[str, float]
    stats: ScoringStats
    correct: list[bool] = field(default_factory=list, repr=False)
    choice_logprobs: list[list[float]] = field(default_factory=list, repr=False)

    @property
    def score(self) -> float:
        return self.metrics[self.metric]

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.name, "kind": self.kind, "metric": self.metric, "score": self.score,
                "metrics": self.metrics, "items": self.items, "num_fewshot": self.num_fewshot,
                "source": self.source, "scored_tokens": self.stats.tokens, "seconds": round(self.stats.seconds, 3),
                "tokens_per_second": round(self.stats.tokens_per_second, 1)}


def task_requests(items: tuple[ChoiceItem, ...]) -> tuple[list[tuple[str, str]], list[list[int]]]:
    """(context, delimiter + continuation) pairs for every choice, grouped by question."""
    requests: list[tuple[str, str]] = []
    groups: list[list[int]] = []
    for item in items:
        groups.append(list(range(len(requests), len(requests) + len(item.contexts))))
        requests += [(context, TARGET_DELIMITER + continuation)
                     for context, continuation in zip(item.contexts, item.continuations)]
    return requests, groups


def argmax(values: list[float]) -> int:
    """Index of the largest value, the first one on ties (as numpy's argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_metrics(items: tuple[ChoiceItem, ...], logprobs: list[list[float]]) -> tuple[dict[str, float], list[bool]]:
    """acc and acc_norm over questions, and whether each question was right by acc."""
    correct, correct_norm = [], []
    for item, lls in zip(items, logprobs):
        lengths = [max(1, len(continuation.encode("utf-8"))) for continuation in item.continuations]
        correct.append(argmax(lls) == item.gold)
        correct_norm.append(argmax([ll / n for ll, n in zip(lls, lengths)]) == item.gold)
    return {"acc": sum(correct) / len(items), "acc_norm": sum(correct_norm) / len(items)}, correct


def cloze_metrics(scored: list[Scored]) -> tuple[dict[str, float], list[bool]]:
    """Greedy-match accuracy and the harness's per-item perplexity."""
    correct = [s.greedy for s in scored]
    mean_ll = sum(s.logprob for s in scored) / len(scored)
    return {"acc": sum(correct) / len(scored), "perplexity": math.exp(-mean_ll)}, correct


def evaluate_task(loaded: LoadedModel, task: Task, batch_size: int = 16, progress: bool = True,
                  logits_mib: int = DEFAULT_LOGITS_MIB) -> TaskResult:
    """Score every item of `task` with `loaded` (at most `logits_mib` MiB of logits at a time) and
    compute its metrics."""
    requests, groups = task_requests(task.items)
    stats = ScoringStats()
    scored = score_requests(loaded.model, loaded.tokenizer, requests, groups, batch_size, progress,
                            desc=task.name, stats=stats, logits_mib=logits_mib)
    logprobs = [[scored[i].logprob for i in group] for group in groups]
    if task.kind == CLOZE:
        metrics, correct = cloze_metrics(scored)
    else:
        metrics, correct = choice_metrics(task.items, logprobs)
    return TaskResult(name=task.name, kind=task.kind, metric=task.metric, items=len(task.items),
                      num_fewshot=task.num_fewshot, source=task.source, metrics=metrics, stats=stats,
                      correct=correct, choice_logprobs=logprobs)
