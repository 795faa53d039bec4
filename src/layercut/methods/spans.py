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
from layercut.methods.protection import Guard, check_forced_span, explain_choice, protection_details


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


def place_spans(loaded: LoadedModel, calibration: Calibration, request: PruneRequest, guards: dict[int, Guard],
                gap: int = 0) -> tuple[list[int], dict[str, Any]]:
    """The span starts (`request.start`, else the `num_cuts` most redundant spans by `request.select`
    that cover no protected block) and the protection record: what was kept, and why the cut moved
    when the best spans by score alone cover a protected block."""
    span_len = request.cut // request.num_cuts
    if request.start is not None:
        if request.start + span_len > loaded.num_layers:
            raise ConfigError(f"--start {request.start} with --cut {request.cut} does not fit: the span must lie in "
                              f"blocks 0..{loaded.num_layers - 1}")
        check_forced_span(request.start, span_len, guards)
        return [request.start], protection_details(guards)
    scores = redundancy(calibration.scan, request.select)
    starts = choose_spans(scores, span_len, request.num_cuts, 0, gap, tuple(guards))
    best = choose_spans(scores, span_len, request.num_cuts, 0, gap)
    return starts, protection_details(guards, explain_choice(best, starts, span_len, request.select, guards))
