"""Angular drop (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper Layers"): remove the
most redundant contiguous span(s) by the selected span score, with no replacement."""

from __future__ import annotations

import torch

from layercut.calibration.capture import calibrate
from layercut.calibration.selection import spans_to_blocks
from layercut.loading import LoadedModel
from layercut.methods.base import NoOptions, PruneOutcome, PruneRequest, register
from layercut.methods.spans import place_spans, span_summary
from layercut.surgery import remove_blocks


@register("angular")
def drop_spans(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
               options: NoOptions) -> PruneOutcome:
    """Gromov et al.: remove the most redundant span(s) by the selected score, no replacement."""
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    starts, protection = place_spans(loaded, calibration, request, request.guards(loaded.num_layers))
    span_len = request.cut // request.num_cuts
    removed = remove_blocks(loaded, spans_to_blocks(starts, span_len))
    return PruneOutcome(request.method, removed, starts, span_len,
                        scores=span_summary(calibration, request.select, starts, span_len), details=protection)
