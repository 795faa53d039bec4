"""`bi-span`: drop the contiguous span of `cut` blocks whose summed Block Influence is lowest.

ShortGPT removes the `cut` least influential blocks wherever they are; this keeps its score but
cuts one contiguous span, as the span methods do, and never touches the last `bi_keep_last` blocks
(cutting next to the output hurts most). It is also the worked example of docs/ARCHITECTURE.md:
a whole method, options included, in one module.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from layercut.calibration.capture import calibrate
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import MethodOptions, PruneOutcome, PruneRequest, register
from layercut.surgery import remove_blocks


class BiSpanSettings(MethodOptions):
    """The options of `bi-span`."""

    title: ClassVar[str] = "bi-span"
    keep_last: int = Field(1, ge=0, alias="bi_keep_last", description="final blocks a span may not cover")


def span_influence(influence: torch.Tensor, span_len: int) -> torch.Tensor:
    """S_k = BI_k + ... + BI_{k+n-1} for every start k = 0 .. L-n."""
    return influence.unfold(0, span_len, 1).sum(dim=1)


@register("bi-span", BiSpanSettings)
def bi_span(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
            settings: BiSpanSettings) -> PruneOutcome:
    """Remove the span of `cut` blocks with the lowest summed Block Influence (or the one at `--start`)."""
    if request.num_cuts != 1:
        raise ConfigError("bi-span removes one span; drop --num-cuts")
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    influence = calibration.scan.block_influence()
    sums = span_influence(influence, request.cut)
    first = request.start if request.start is not None else (request.min_start or 0)
    last = request.start if request.start is not None else loaded.num_layers - settings.keep_last - request.cut
    if first > last:
        raise ConfigError(f"no span of {request.cut} blocks starts at block {first} or later and leaves the last "
                          f"{settings.keep_last} blocks; lower --cut, --min-start or --bi-keep-last")
    start = first + int(torch.argmin(sums[first:last + 1]))
    removed = remove_blocks(loaded, range(start, start + request.cut))
    return PruneOutcome(request.method, removed, [start], request.cut,
                        scores={"select": "block_influence_sum", "block_influence": influence.tolist(),
                                "span_influence": sums.tolist(), "calibration_tokens": int(calibration.scan.tokens)})
