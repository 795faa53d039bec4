"""Depth-pruning baselines that only choose blocks to delete (no replacement):

- `shortgpt`: the `cut` blocks with the lowest Block Influence (ShortGPT), not necessarily contiguous,
  never a protected block (the first, the last unless `--allow-last`);
- `last`: the `cut` blocks just before the final one;
- `random`: `cut` blocks drawn with `--seed` (the final block kept);
- `ppl`: the contiguous span (covering no protected block) whose removal gives the lowest calibration
  perplexity. Exhaustive:
  one forward pass over `ppl_samples` calibration windows (default 16) *with* the LM head for each
  of the L - n + 1 candidate spans, so about (L - n + 1) * ppl_samples / samples scan passes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from layercut.calibration.capture import calibrate
from layercut.calibration.selection import lowest_scores
from layercut.errors import ConfigError
from layercut.evaluation.perplexity import window_nll
from layercut.loading import LoadedModel
from layercut.methods.base import NoOptions, PruneOutcome, PruneRequest, register
from layercut.methods.settings import PplSettings
from layercut.methods.protection import check_forced_span, explain_choice, protection_details
from layercut.surgery import remove_blocks


def last_blocks(num_layers: int, cut: int) -> list[int]:
    """The `cut` blocks just before the final block: L-1-cut .. L-2."""
    return list(range(num_layers - 1 - cut, num_layers - 1))


def random_blocks(num_layers: int, cut: int, seed: int) -> list[int]:
    """`cut` distinct blocks among 0 .. L-2 drawn with `seed` (the final block is kept, as in `last`)."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(int(i) for i in torch.randperm(num_layers - 1, generator=generator)[:cut])


def _outcome(request: PruneRequest, removed: list[int], scores: dict[str, Any] | None = None,
             details: dict[str, Any] | None = None) -> PruneOutcome:
    return PruneOutcome(request.method, removed, removed, 1, scores=scores or {}, details=details or {})


@register("shortgpt")
def shortgpt(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
             options: NoOptions) -> PruneOutcome:
    """ShortGPT: delete the `cut` blocks with the lowest Block Influence on the calibration windows."""
    guards = request.guards(loaded.num_layers)
    if request.cut > loaded.num_layers - len(guards):
        raise ConfigError(f"--cut {request.cut} leaves no room: blocks {sorted(guards)} are protected; lower --cut")
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    influence = calibration.scan.block_influence()
    removed = remove_blocks(loaded, lowest_scores(influence, request.cut, keep=tuple(guards)))
    note = explain_choice(lowest_scores(influence, request.cut), removed, 1, "block-influence", guards)
    return _outcome(request, removed, {"select": "block_influence", "block_influence": influence.tolist(),
                                       "calibration_tokens": int(calibration.scan.tokens)},
                    protection_details(guards, note))


@register("last")
def drop_last(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
              options: NoOptions) -> PruneOutcome:
    """Delete the `cut` blocks just before the final one (no calibration)."""
    return _outcome(request, remove_blocks(loaded, last_blocks(loaded.num_layers, request.cut)))


@register("random")
def drop_random(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                options: NoOptions) -> PruneOutcome:
    """Delete `cut` random blocks (seeded; no calibration)."""
    blocks = random_blocks(loaded.num_layers, request.cut, request.seed)
    return _outcome(request, remove_blocks(loaded, blocks), details={"seed": request.seed})


def span_perplexities(loaded: LoadedModel, windows: torch.Tensor, span_len: int, starts: list[int],
                      batch_size: int = 8, progress: bool = True) -> dict[int, float]:
    """Perplexity on `windows` with blocks k .. k+span_len-1 left out, for every start k in `starts`.

    Blocks are skipped by swapping the block list (no copy); the model is restored afterwards.
    """
    adapter, model = loaded.adapter, loaded.model
    original = list(adapter.blocks(model))
    results: dict[int, float] = {}
    try:
        for start in starts:
            kept = original[:start] + original[start + span_len:]
            adapter.set_blocks(model, nn.ModuleList(kept))
            nll, count = window_nll(model, windows, batch_size, progress=False)
            results[start] = math.exp(nll / count)
            if progress:
                print(f"ppl scan: blocks {start}..{start + span_len - 1} removed -> {results[start]:.3f}")
    finally:
        adapter.set_blocks(model, nn.ModuleList(original))
    return results


@register("ppl", PplSettings)
def drop_by_perplexity(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                       settings: PplSettings) -> PruneOutcome:
    """Delete the contiguous span whose removal keeps calibration perplexity lowest (exhaustive search)."""
    samples, cut = settings.ppl_samples, request.cut
    guards = request.guards(loaded.num_layers)
    if request.start is not None:
        check_forced_span(request.start, cut, guards)
        starts = [request.start]
    else:
        starts = [k for k in range(loaded.num_layers - cut + 1)
                  if not any(block in guards for block in range(k, k + cut))]
    if not starts:
        raise ConfigError(f"no span of {cut} blocks avoids the protected blocks {sorted(guards)}; lower --cut "
                          "or --min-start")
    perplexities = span_perplexities(loaded, windows[:samples], cut, starts, request.batch_size, request.progress)
    start = min(perplexities, key=lambda k: (perplexities[k], k))
    removed = remove_blocks(loaded, range(start, start + cut))
    outcome = _outcome(request, removed, {"select": "perplexity", "span_perplexity": perplexities,
                                          "ppl_samples": samples}, protection_details(guards))
    outcome.span_starts, outcome.span_len = [start], request.cut
    return outcome
