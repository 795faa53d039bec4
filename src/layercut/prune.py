"""Depth pruning: one entry point, `prune(loaded, windows, request)`, over the method registry.

Each method (a module of `layercut.methods`) takes the loaded model, the calibration windows and
a `PruneRequest`, edits the model in place and returns a `PruneOutcome` describing what it removed
and why. This module imports every method module (so each registers itself), checks the request
and times the run. The CLI and recipes call `prune`; a new method is one new module in
`layercut/methods/` plus its line in the import list below.
"""

from __future__ import annotations

import time

import torch

from layercut.calibration.capture import FIT_WEIGHTINGS
from layercut.calibration.scores import SPAN_SCORES
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods import baselines, chop, drop, laco, replaceme, streamline  # noqa: F401  (register)
from layercut.methods.base import METHODS, PruneOutcome, PruneRequest
from layercut.methods.sublayers import drop_sublayers

__all__ = ["METHODS", "PruneOutcome", "PruneRequest", "prune"]


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
