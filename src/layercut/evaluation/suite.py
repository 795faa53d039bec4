"""Evaluate one model on everything asked (perplexity and tasks), timing each scoring pass."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from layercut.evaluation.logprobs import DEFAULT_LOGITS_MIB
from layercut.evaluation.perplexity import PerplexityResult, text_perplexity
from layercut.evaluation.tasks import Task
from layercut.evaluation.zeroshot import TaskResult, evaluate_task
from layercut.export import count_parameters
from layercut.finite import require_finite, require_finite_value
from layercut.loading import LoadedModel


@dataclass
class PerplexitySettings:
    """Which text to measure perplexity on, and how."""

    source: str
    seq_len: int | None = None
    max_tokens: int | None = None
    batch_size: int = 1
    text_field: str = "text"


@dataclass
class ModelEvaluation:
    """Everything measured on one model."""

    model: str
    parameters: int
    layers: int
    perplexity: PerplexityResult | None = None
    perplexity_seconds: float = 0.0
    tasks: dict[str, TaskResult] = field(default_factory=dict)

    @property
    def perplexity_tokens_per_second(self) -> float | None:
        if self.perplexity is None or self.perplexity_seconds <= 0:
            return None
        return self.perplexity.windows * self.perplexity.seq_len / self.perplexity_seconds

    @property
    def task_tokens_per_second(self) -> float | None:
        tokens = sum(result.stats.tokens for result in self.tasks.values())
        seconds = sum(result.stats.seconds for result in self.tasks.values())
        return tokens / seconds if seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        speed = {"perplexity_tokens_per_second": self.perplexity_tokens_per_second,
                 "task_tokens_per_second": self.task_tokens_per_second}
        return {"model": self.model, "parameters": self.parameters, "layers": self.layers,
                "perplexity": None if self.perplexity is None else
                {**self.perplexity.to_dict(), "seconds": round(self.perplexity_seconds, 3)},
                "tasks": {name: result.to_dict() for name, result in self.tasks.items()},
                "speed": {key: None if value is None else round(value, 1) for key, value in speed.items()}}


def evaluate_model(loaded: LoadedModel, tasks: Sequence[Task] = (), ppl: PerplexitySettings | None = None,
                   batch_size: int = 16, progress: bool = True,
                   logits_mib: int = DEFAULT_LOGITS_MIB) -> ModelEvaluation:
    """Perplexity (when `ppl` is given) and every task, on one loaded model, with at most
    `logits_mib` MiB of logits at a time; a model with NaN/Inf weights or outputs is refused
    rather than scored."""
    require_finite(loaded.model)
    evaluation = ModelEvaluation(model=loaded.source, parameters=count_parameters(loaded.model),
                                 layers=loaded.num_layers)
    if ppl is not None:
        started = time.perf_counter()
        evaluation.perplexity = text_perplexity(loaded, ppl.source, ppl.seq_len, ppl.max_tokens, ppl.batch_size,
                                                ppl.text_field, progress, logits_mib)
        evaluation.perplexity_seconds = time.perf_counter() - started
        require_finite_value(evaluation.perplexity.perplexity, "perplexity", loaded.model)
    for task in tasks:
        evaluation.tasks[task.name] = evaluate_task(loaded, task, batch_size, progress, logits_mib)
    return evaluation
