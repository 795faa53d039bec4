"""Depth pruning: one entry point, `prune(loaded, windows, request)`, and a registry of methods.

Each method takes the loaded model, the calibration windows and a `PruneRequest`, edits the
model in place and returns a `PruneOutcome` describing what it removed and why. The CLI and
recipes call `prune`; a new method is one function added to `METHODS`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from layercut.baselines import drop_by_perplexity, drop_last, drop_random, shortgpt
from layercut.capture import FIT_WEIGHTINGS, Calibration, LinearFitStats, calibrate, collect_fit, fit_memory_bytes
from layercut.errors import ConfigError
from layercut.heal import chop_layers
from layercut.laco import laco
from layercut.loading import LoadedModel
from layercut.onload import materialize
from layercut.replaceme import fit_cosine, fit_residual, fold_into_block, solve_lstsq
from layercut.scores import SPAN_SCORES, redundancy
from layercut.selection import choose_spans, spans_to_blocks
from layercut.streamline import streamline_ffn, streamline_layer
from layercut.sublayers import prune_sublayers
from layercut.surgery import remove_blocks


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


def _validate(loaded: LoadedModel, request: PruneRequest) -> None:
    num_layers = loaded.num_layers
    if request.method not in METHODS:
        raise ConfigError(f"unknown method '{request.method}'; choose one of: {', '.join(sorted(METHODS))}")
    if request.cut < 0 or request.cut >= num_layers:
        raise ConfigError(f"--cut {request.cut} is out of range: the model has {num_layers} layers, "
                          f"so cut between 0 and {num_layers - 1}")
    if request.num_cuts < 1 or (request.cut and request.cut % request.num_cuts):
        raise ConfigError(f"--cut {request.cut} must split evenly into --num-cuts {request.num_cuts} spans")
    if request.fit_weighting not in FIT_WEIGHTINGS:
        raise ConfigError(f"unknown --fit-weighting '{request.fit_weighting}'; use {' or '.join(FIT_WEIGHTINGS)}")
    if request.select not in SPAN_SCORES:
        raise ConfigError(f"unknown --select '{request.select}'; choose one of: {', '.join(SPAN_SCORES)}")
    if request.start is not None and request.num_cuts != 1:
        raise ConfigError("--start places a single cut; drop --num-cuts or --start")
    if request.start is not None and (request.start < 0 or request.start + request.cut > num_layers):
        raise ConfigError(f"--start {request.start} with --cut {request.cut} does not fit: the span must lie in "
                          f"blocks 0..{num_layers - 1}")


def _span_summary(calibration: Calibration, select: str, starts: list[int], span_len: int) -> dict[str, Any]:
    """Scores behind the choice: the chosen spans' own scores, plus every span's for the record."""
    scan = calibration.scan
    chosen = [{"start": k, "blocks": f"{k}..{k + span_len - 1}",
               "angular": float(scan.span_angular()[k, span_len]),
               "angular_last": float(scan.span_angular_last()[k, span_len]),
               "cosine": float(scan.span_cosine()[k, span_len])} for k in starts]
    return {"select": select, "chosen": chosen, "calibration_tokens": int(scan.tokens),
            "span_scores": redundancy(scan, select).abs().tolist(),
            "block_influence": scan.block_influence().tolist()}


def _place_spans(loaded: LoadedModel, calibration: Calibration, request: PruneRequest, min_start: int,
                 gap: int, protected: tuple[int, ...] = ()) -> list[int]:
    span_len = request.cut // request.num_cuts
    if request.start is not None:
        if request.start < min_start or request.start + span_len > loaded.num_layers:
            raise ConfigError(f"--start {request.start} with --cut {request.cut} does not fit: the span must lie in "
                              f"blocks {min_start}..{loaded.num_layers - 1}")
        return [request.start]
    return choose_spans(redundancy(calibration.scan, request.select), span_len, request.num_cuts, min_start, gap,
                        protected)


def drop_spans(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """Gromov et al.: remove the most redundant span(s) by the selected score, no replacement."""
    min_start = 0 if request.min_start is None else request.min_start
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    starts = _place_spans(loaded, calibration, request, min_start, gap=0)
    span_len = request.cut // request.num_cuts
    removed = remove_blocks(loaded, spans_to_blocks(starts, span_len))
    return PruneOutcome(request.method, removed, starts, span_len,
                        scores=_span_summary(calibration, request.select, starts, span_len))


def _replaceme(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest, cosine: bool) -> PruneOutcome:
    span_len = request.cut // request.num_cuts
    min_start = max(1, 1 if request.min_start is None else request.min_start)
    dim = loaded.model.config.hidden_size
    candidates = [request.start] if request.start is not None else \
        list(range(min_start, loaded.num_layers - span_len + 1))
    fold_blocks = [k - 1 for k in candidates if k >= 1]
    one_pass = not cosine and fit_memory_bytes(dim, len(fold_blocks)) <= request.fit_memory_budget * 2**30
    calibration = calibrate(loaded, windows, request.batch_size, cut=span_len,
                            fold_blocks=fold_blocks if one_pass else (), fit_weighting=request.fit_weighting,
                            progress=request.progress)
    protected = tuple(calibration.scan.massive_creators()) if request.protect_massive else ()
    starts = _place_spans(loaded, calibration, request, min_start, gap=1, protected=protected)
    transforms, details = {}, {"single_pass": one_pass, "protected_blocks": list(protected), "cuts": []}
    for start in starts:
        fold_block = start - 1
        rows = None
        if one_pass:
            stats: LinearFitStats = calibration.fits[fold_block]
        else:
            keep_rows = request.cosine_tokens if cosine else 0
            stats, rows = collect_fit(loaded, windows, fold_block, span_len, request.batch_size,
                                      keep_rows=keep_rows, seed=request.seed,
                                      fit_weighting=request.fit_weighting, progress=request.progress)
        transform = solve_lstsq(stats.gram, stats.cross, request.alpha)
        cut_info = {"start": start, "fold_block": fold_block, "tokens": int(stats.tokens),
                    "output_sq": float(stats.output_sq),
                    "lstsq_residual": fit_residual(stats.gram, stats.cross, stats.target_sq, transform),
                    "identity_residual": fit_residual(stats.gram, stats.cross, stats.target_sq,
                                                      torch.eye(dim, dtype=torch.float64))}
        if cosine:
            init = transform if request.cosine_init == "lstsq" else torch.eye(dim, dtype=torch.float64)
            transform = fit_cosine(rows, init, lr=request.cosine_lr, epochs=request.cosine_epochs,
                                   batch_tokens=request.cosine_batch_tokens, objective=request.cosine_objective,
                                   seed=request.seed, progress=request.progress)
            cut_info["cosine_rows"] = int(rows[0].shape[0])
            cut_info["cosine_residual"] = fit_residual(stats.gram, stats.cross, stats.target_sq, transform)
        transforms[fold_block] = transform
        details["cuts"].append(cut_info)
    materialize(loaded, list(transforms))
    for fold_block, transform in transforms.items():
        fold_into_block(loaded, fold_block, transform)
    removed = remove_blocks(loaded, spans_to_blocks(starts, span_len))
    return PruneOutcome(request.method, removed, starts, span_len,
                        scores=_span_summary(calibration, request.select, starts, span_len), details=details)


def replaceme_lstsq(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """ReplaceMe with the closed-form (ridge) least-squares map."""
    return _replaceme(loaded, windows, request, cosine=False)


def replaceme_cosine(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """ReplaceMe with the map refined by the cosine objective (Adam, from the LS solution by default)."""
    if request.cosine_init not in ("lstsq", "identity"):
        raise ConfigError(f"unknown --cosine-init '{request.cosine_init}'; use lstsq or identity")
    if request.cosine_objective not in ("full", "residual"):
        raise ConfigError(f"unknown --cosine-objective '{request.cosine_objective}'; use full or residual")
    return _replaceme(loaded, windows, request, cosine=True)


def chop(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """LayerChop: drop the contiguous run `chop_layers` picks (first and last block kept); no calibration."""
    removed = remove_blocks(loaded, chop_layers(loaded.num_layers, request.cut))
    return PruneOutcome(request.method, removed, [removed[0]], len(removed))


def drop_sublayers(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """`--granularity attn|mlp`: remove the `cut` most redundant attention or MLP halves (blocks stay)."""
    if request.method != "angular":
        raise ConfigError(f"--granularity {request.granularity} works with --method angular only")
    record = prune_sublayers(loaded, windows, request)
    return PruneOutcome(request.method, [], record["removed_sublayers"], 0, details=record)


Method = Callable[[LoadedModel, torch.Tensor, PruneRequest], PruneOutcome]

METHODS: dict[str, Method] = {
    "chop": chop,
    "angular": drop_spans,
    "replaceme-lstsq": replaceme_lstsq,
    "replaceme-cosine": replaceme_cosine,
    "laco": laco,
    "streamline-layer": streamline_layer,
    "streamline-ffn": streamline_ffn,
    "shortgpt": shortgpt,
    "last": drop_last,
    "random": drop_random,
    "ppl": drop_by_perplexity,
}


def prune(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """Run one depth-pruning method on `loaded` in place. A cut of 0 blocks leaves the model unchanged."""
    _validate(loaded, request)
    if request.cut == 0:
        return PruneOutcome(request.method, [], [], 0)
    began = time.perf_counter()
    method = METHODS[request.method] if request.granularity == "block" else drop_sublayers
    outcome = method(loaded, windows, request)
    outcome.seconds = time.perf_counter() - began
    return outcome
