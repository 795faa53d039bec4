"""What every depth method shares: the request it receives, the outcome it returns, and the
registry `layercut.prune` dispatches through. Method modules import this module, never the
dispatcher, so the import graph stays one-way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from layercut.loading import LoadedModel


@dataclass
class PruneRequest:
    """What to cut and how. `cut` is the total number of blocks removed."""

    method: str
    cut: int
    start: int | None = None
    min_start: int | None = None
    num_cuts: int = 1
    select: str = "angular"
    alpha: float = 0.0
    fit_weighting: str = "none"
    batch_size: int = 8
    seed: int = 0
    cosine_epochs: int = 10
    cosine_lr: float = 1e-4
    cosine_batch_tokens: int = 1024
    cosine_tokens: int = 65536
    cosine_init: str = "lstsq"
    cosine_objective: str = "full"
    fit_memory_budget: float = 4.0
    protect_massive: bool = True
    granularity: str = "block"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The settings for the model card: the ReplaceMe fit settings only for the methods that fit."""
        unused = {"progress"}
        if not self.method.startswith("replaceme-"):
            unused |= {"alpha", "fit_weighting", "fit_memory_budget"}
        if self.method != "replaceme-cosine":
            unused |= {name for name in asdict(self) if name.startswith("cosine_")}
        return {k: v for k, v in asdict(self).items() if k not in unused}


@dataclass
class PruneOutcome:
    """What a method did: removed block indices (of the input model), the chosen span starts,
    the scores behind the choice, and method-specific details (fit residuals, timings...)."""

    method: str
    removed: list[int]
    span_starts: list[int]
    span_len: int
    scores: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


Method = Callable[[LoadedModel, torch.Tensor, PruneRequest], PruneOutcome]

METHODS: dict[str, Method] = {}


def register(name: str) -> Callable[[Method], Method]:
    """Decorator: make a method function available to `prune` (and the CLI, recipes, compare) as `name`."""

    def add(method: Method) -> Method:
        METHODS[name] = method
        return method

    return add
