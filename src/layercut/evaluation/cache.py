"""A cache of evaluations, so the dense baseline is measured once and reused by later runs.

The key is a hash of everything that decides the numbers: the model's weights (a content hash
of every parameter and buffer, so a changed checkpoint never hits a stale entry), the exact
perplexity text and task items, every scoring setting, and the versions of layercut, torch and
transformers. Entries are JSON files under `$LAYERCUT_CACHE/evaluations/`, written atomically;
they keep per-question results too, so stability against a cached baseline is exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from torch import nn

from layercut import __version__
from layercut.data import read_text
from layercut.evaluation.perplexity import PerplexityResult
from layercut.evaluation.scoring import ScoringStats
from layercut.evaluation.suite import ModelEvaluation, PerplexitySettings
from layercut.evaluation.tasks import Task
from layercut.evaluation.zeroshot import TaskResult
from layercut.export import write_text_atomic
from layercut.loading import cache_dir

CACHE_FORMAT = 1


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted((*model.named_parameters(), *model.named_buffers()), key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def evaluation_key(model: nn.Module, tasks: Sequence[Task], ppl: PerplexitySettings | None,
                   settings: dict[str, Any]) -> str:
    """The cache key of one model's evaluation on these tasks and this text with these settings."""
    parts: dict[str, Any] = {
        "format": CACHE_FORMAT, "layercut": __version__, "torch": torch.__version__,
        "transformers": transformers.__version__, "weights": weights_hash(model),
        "dtype": str(next(model.parameters()).dtype), "device": next(model.parameters()).device.type,
        "settings": settings, "tasks": [(task.name, task.metric, task.kind, task.num_fewshot,
                                         hashlib.sha256(repr(task.items).encode()).hexdigest()) for task in tasks]}
    if ppl is not None:
        text = read_text(ppl.source, ppl.text_field)
        parts["ppl"] = {**asdict(ppl), "source": ppl.source, "text": hashlib.sha256(text.encode()).hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_dir() / "evaluations" / f"{key}.json"


def evaluation_record(evaluation: ModelEvaluation) -> dict[str, Any]:
    """Everything a `ModelEvaluation` holds, per-question results included, as JSON-ready data."""
    return {"model": evaluation.model, "parameters": evaluation.parameters, "layers": evaluation.layers,
            "perplexity": asdict(evaluation.perplexity) if evaluation.perplexity else None,
            "perplexity_seconds": evaluation.perplexity_seconds,
            "tasks": {name: {**{k: v for k, v in asdict(result).items() if k != "stats"},
                             "stats": asdict(result.stats)} for name, result in evaluation.tasks.items()}}


def evaluation_from_record(record: dict[str, Any]) -> ModelEvaluation:
    """The inverse of `evaluation_record`."""
    tasks = {name: TaskResult(**{**fields, "stats": ScoringStats(**fields["stats"])})
             for name, fields in record["tasks"].items()}
    perplexity = PerplexityResult(**record["perplexity"]) if record["perplexity"] else None
    return ModelEvaluation(model=record["model"], parameters=record["parameters"], layers=record["layers"],
                           perplexity=perplexity, perplexity_seconds=record["perplexity_seconds"], tasks=tasks)


def load_cached(key: str) -> tuple[ModelEvaluation, str] | None:
    """The cached evaluation of `key` and the date it was measured, or None (missing or unreadable)."""
    path = cache_path(key)
    try:
        record = json.loads(path.read_text())
        return evaluation_from_record(record["evaluation"]), record["date"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(key: str, evaluation: ModelEvaluation, date: str) -> Path:
    """Write one evaluation to the cache (atomically)."""
    return write_text_atomic(cache_path(key), json.dumps({"date": date, "evaluation": evaluation_record(evaluation)}))
