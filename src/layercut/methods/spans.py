"""Placing contiguous spans from the calibration scan, and the record of why: shared by the
methods that cut the most redundant span(s) (angular drop, ReplaceMe)."""

from __future__ import annotations

from typing import Any

from layercut.calibration.capture import Calibration
from layercut.calibration.scores import redundancy
from layercut.calibration.selection import choose_spans
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import PruneRequest


def span_summary(calibration: Calibration, select: str, starts: list[int], span_len: int) -> dict[str, Any]:
    """Scores behind the choice: the chosen spans' own scores, plus every span's for the record."""
    scan = calibration.scan
    chosen = [{"start": k, "blocks": f"{k}..{k + span_len - 1}",
               "angular": float(scan.span_angular()[k, span_len]),
               "angular_last": float(scan.span_angular_last()[k, span_len]),
               "cosine": float(scan.span_cosine()[k, span_len])} for k in starts]
    return {"select": select, "chosen": chosen, "calibration_tokens": int(scan.tokens),
            "span_scores": redundancy(scan, select).abs().tolist(),
            "block_influence": scan.block_influence().tolist()}


def place_spans(loaded: LoadedModel, calibration: Calibration, request: PruneRequest, min_start: int,
                gap: int, protected: tuple[int, ...] = ()) -> list[int]:
    """The span starts: `request.start`, else the `num_cuts` most redundant spans by `request.select`."""
    span_len = request.cut // request.num_cuts
    if request.start is not None:
        if request.start < min_start or request.start + span_len > loaded.num_layers:
            raise ConfigError(f"--start {request.start} with --cut {request.cut} does not fit: the span must lie in "
                              f"blocks {min_start}..{loaded.num_layers - 1}")
        return [request.start]
    return choose_spans(redundancy(calibration.scan, request.select), span_len, request.num_cuts, min_start, gap,
                        protected)
