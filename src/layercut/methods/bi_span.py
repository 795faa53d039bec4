"""`bi-span`: drop the contiguous span of `cut` blocks whose summed Block Influence is lowest.

ShortGPT removes the `cut` least influential blocks wherever they are; this keeps its score but
cuts one contiguous span, as the span methods do, and never touches the protected blocks (the first,
the last unless `--allow-last`, and the last `bi_keep_last`). It is also the worked example of docs/ARCHITECTURE.md:
a whole method, options included, in one module.
"""

from __future__ import annotations


import torch

from layercut.calibration.capture import calibrate
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import PruneOutcome, PruneRequest, register
from layercut.methods.settings import BiSpanSettings
from layercut.methods.protection import Guard, check_forced_span, explain_choice, protection_details
from layercut.surgery import remove_blocks


def span_influence(influence: torch.Tensor, span_len: int) -> torch.Tensor:
    """S_k = BI_k + ... + BI_{k+n-1} for every start k = 0 .. L-n."""
    return influence.unfold(0, span_len, 1).sum(dim=1)


@register("bi-span", BiSpanSettings)
def bi_span(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
            settings: BiSpanSettings) -> PruneOutcome:
    """Remove the span of `cut` blocks with the lowest summed Block Influence that covers no protected
    block (or the one at `--start`)."""
    if request.num_cuts != 1:
        raise ConfigError("bi-span removes one span; drop --num-cuts")
    num_layers, cut = loaded.num_layers, request.cut
    guards = request.guards(num_layers)
    for block in range(max(0, num_layers - settings.keep_last), num_layers):
        guards.setdefault(block, Guard(f"is among the last {settings.keep_last} blocks", "a lower --bi-keep-last"))
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    influence = calibration.scan.block_influence()
    sums = span_influence(influence, cut)
    if request.start is not None:
        check_forced_span(request.start, cut, guards)
        start, note = request.start, None
    else:
        allowed = [k for k in range(len(sums)) if not any(block in guards for block in range(k, k + cut))]
        if not allowed:
            raise ConfigError(f"no span of {cut} blocks avoids the protected blocks {sorted(guards)}; lower --cut, "
                              "--min-start or --bi-keep-last")
        start = min(allowed, key=lambda k: (float(sums[k]), k))
        note = explain_choice([int(torch.argmin(sums))], [start], cut, "block-influence", guards)
    removed = remove_blocks(loaded, range(start, start + cut))
    return PruneOutcome(request.method, removed, [start], cut, details=protection_details(guards, note),
                        scores={"select": "block_influence_sum", "block_influence": influence.tolist(),
                                "span_influence": sums.tolist(), "calibration_tokens": int(calibration.scan.tokens)})
