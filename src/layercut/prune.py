"""Depth pruning: one entry point, `prune(loaded, windows, request)`, over the method registry.

Each method (a module of `layercut.methods`) takes the loaded model, the calibration windows, a
`PruneRequest` and its own validated `MethodOptions`, edits the model in place and returns a
`PruneOutcome` describing what it removed and why. This module imports every module of
`layercut.methods` (each registers its methods on import), checks the request and times the run.
The CLI, recipes and `compare` call `prune`; a new method is one new module in `layercut/methods/`.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from typing import Any

import torch

from layercut import methods
from layercut.adapters import adapter_for_model_type, family_name
from layercut.calibration.scores import SPAN_SCORES
from layercut.errors import ConfigError, UnsupportedArchitectureError
from layercut.loading import LoadedModel
from layercut.methods.base import METHODS, MethodOptions, PruneOutcome, PruneRequest, method_spec
from layercut.methods.sublayers import drop_sublayers

__all__ = ["METHODS", "MethodOptions", "PruneOutcome", "PruneRequest", "check_family", "check_request", "prune"]

for _module in pkgutil.iter_modules(methods.__path__):
    importlib.import_module(f"{methods.__name__}.{_module.name}")


def check_request(request: PruneRequest, num_layers: int) -> None:
    """Refuse a request that cannot work on a model of `num_layers` blocks (known from the config, so
    commands call this before loading any weights)."""
    method_spec(request.method)
    if request.cut < 0 or request.cut >= num_layers:
        raise ConfigError(f"--cut {request.cut} is out of range: the model has {num_layers} layers, "
                          f"so cut between 1 and {num_layers - 1}")
    if request.num_cuts < 1 or (request.cut and request.cut % request.num_cuts):
        raise ConfigError(f"--cut {request.cut} must split evenly into --num-cuts {request.num_cuts} spans")
    if request.select not in SPAN_SCORES:
        raise ConfigError(f"unknown --select '{request.select}'; choose one of: {', '.join(SPAN_SCORES)}")
    if request.start is not None and request.num_cuts != 1:
        raise ConfigError("--start places a single cut; drop --num-cuts or --start")
    if request.start is not None and (request.start < 0 or request.start + request.cut > num_layers):
        raise ConfigError(f"--start {request.start} with --cut {request.cut} does not fit: the span must lie in "
                          f"blocks 0..{num_layers - 1}")
    request.method_options()


def check_family(method: str, config: Any) -> None:
    """Refuse a method that cannot work on the family of `config` (decided from the adapter entry,
    before any weights load); the message names the model's own family (`gemma3`, not its entry)."""
    limit = method_spec(method).family_limit
    reason = limit(adapter_for_model_type(config.model_type)) if limit else None
    if reason:
        raise UnsupportedArchitectureError(
            f"--method {method} does not work on {family_name(config.model_type)} models: {reason}")


def prune(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """Run one depth-pruning method on `loaded` in place. A cut of 0 blocks leaves the model unchanged."""
    check_request(request, loaded.num_layers)
    check_family(request.method, loaded.model.config)
    options = request.method_options()
    if request.cut == 0:
        return PruneOutcome(request.method, [], [], 0)
    began = time.perf_counter()
    if request.granularity == "block":
        outcome = METHODS[request.method].run(loaded, windows, request, options)
    else:
        outcome = drop_sublayers(loaded, windows, request)
    outcome.seconds = time.perf_counter() - began
    return outcome
