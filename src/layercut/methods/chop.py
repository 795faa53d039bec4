"""LayerChop (ALGORITHMS.md section 4): drop one contiguous run of interior blocks chosen by a fixed
rule, with no calibration; the paper then heals the model (`layercut.healing`)."""

from __future__ import annotations

import torch

from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import NoOptions, PruneOutcome, PruneRequest, register
from layercut.surgery import remove_blocks


def chop_layers(num_layers: int, cut: int) -> list[int]:
    """LayerChop's deterministic choice of `cut` blocks to drop from a `num_layers`-block model.

    The rule: drop one contiguous run of blocks centred among the interior blocks 1..L-2, so
    the first and the last block always survive and the cut stays away from the output end
    (the paper found cutting next to the output worst). An odd remainder puts the run one block
    closer to the input. Example: 30 blocks, cut 8 -> blocks 11..18.
    """
    interior = num_layers - 2
    if not 1 <= cut <= interior:
        raise ConfigError(f"--cut {cut} must be between 1 and {interior} for a {num_layers}-block model "
                          "(LayerChop keeps the first and the last block)")
    start = 1 + (interior - cut) // 2
    return list(range(start, start + cut))


@register("chop")
def chop(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
         options: NoOptions) -> PruneOutcome:
    """LayerChop: drop the contiguous run `chop_layers` picks (first and last block kept); no calibration."""
    removed = remove_blocks(loaded, chop_layers(loaded.num_layers, request.cut))
    return PruneOutcome(request.method, removed, [removed[0]], len(removed))
