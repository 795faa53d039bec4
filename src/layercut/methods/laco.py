"""LaCo (Yang et al., 2024, "LaCo: Large Language Model Pruning via Layer Collapse").

Layer collapse merges a run of consecutive blocks l .. l+m into block l by keeping block l's
parameters and adding each later block's difference from it ("reserving differences while
seeking common"): theta_l + sum_k (theta_{l+k} - theta_l); the merged-away blocks are deleted.
Every merge is tried on a few calibration windows and kept only when the final hidden states of
the merged model stay close to the original model's (mean token cosine >= a threshold);
otherwise it is undone. Merges proceed from the top of the model down, as in the paper, but below
the final block unless `--allow-last` (the first block is never merged away either).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from layercut.calibration.scores import cosine_rows
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import PruneOutcome, PruneRequest, register
from layercut.methods.settings import LacoSettings
from layercut.methods.protection import protection_details
from layercut.surgery import remove_blocks


def merge_parameters(base: torch.Tensor, others: list[torch.Tensor]) -> torch.Tensor:
    """theta_l + sum_k (theta_{l+k} - theta_l), formed in float64 and cast back to the base dtype."""
    base64 = base.double()
    merged = base64.clone()
    for other in others:
        merged += other.double() - base64
    return merged.to(base.dtype)


def merge_blocks(base: nn.Module, others: list[nn.Module]) -> None:
    """Overwrite `base`'s parameters with their merge with the same-named parameters of `others`."""
    other_params = [dict(block.named_parameters()) for block in others]
    with torch.no_grad():
        for name, param in base.named_parameters():
            param.copy_(merge_parameters(param, [params[name] for params in other_params]))


def final_hidden(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The decoder's last hidden states (after the final norm) for `windows`, [N, T, d]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        outputs = [model.base_model(input_ids=windows[i:i + batch_size].to(device), use_cache=False).last_hidden_state
                   for i in range(0, windows.shape[0], batch_size)]
    return torch.cat(outputs)


def representation_similarity(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean over tokens of cos(reference, candidate) of final hidden states."""
    return float(cosine_rows(reference.reshape(-1, reference.shape[-1]),
                             candidate.reshape(-1, candidate.shape[-1])).mean())


def collapse(loaded: LoadedModel, windows: torch.Tensor, cut: int, settings: LacoSettings, lowest: int = 1,
             batch_size: int = 8, keep_top: int = 0) -> tuple[list[int], list[dict[str, Any]]]:
    """Merge blocks from the top down until `cut` blocks are gone, never touching the final
    `keep_top` blocks; returns the removed block indices (of the input model) and a log of every
    merge tried."""
    model, adapter = loaded.model, loaded.adapter
    original = list(adapter.blocks(model))
    check_windows = windows[:settings.samples]
    reference = final_hidden(model, check_windows, batch_size)
    alive = list(range(len(original)))
    removed: list[int] = []
    trials: list[dict[str, Any]] = []
    position = len(alive) - settings.layers - keep_top
    while len(removed) < cut and position >= lowest:
        merged_away = alive[position + 1:position + min(settings.layers, cut - len(removed) + 1)]
        base = original[alive[position]]
        saved = {name: param.detach().clone() for name, param in base.named_parameters()}
        merge_blocks(base, [original[i] for i in merged_away])
        trial_alive = [i for i in alive if i not in merged_away]
        adapter.set_blocks(model, nn.ModuleList(original[i] for i in trial_alive))
        similarity = representation_similarity(reference, final_hidden(model, check_windows, batch_size))
        accepted = similarity >= settings.threshold
        trials.append({"into": alive[position], "merged": merged_away, "similarity": round(similarity, 5),
                       "accepted": accepted})
        if accepted:
            alive, removed = trial_alive, removed + merged_away
            position = min(position - settings.interval, len(alive) - settings.layers - keep_top)
        else:
            with torch.no_grad():
                for name, param in base.named_parameters():
                    param.copy_(saved[name])
            position -= 1
    adapter.set_blocks(model, nn.ModuleList(original))
    if len(removed) < cut:
        best = max((t["similarity"] for t in trials if not t["accepted"]), default=float("nan"))
        raise ConfigError(f"LaCo removed only {len(removed)} of {cut} blocks: no further merge kept the output "
                          f"similarity above --laco-threshold {settings.threshold} (best rejected merge: {best:.3f}); "
                          "lower the threshold or --cut")
    return remove_blocks(loaded, removed), trials


@register("laco", LacoSettings)
def laco(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest, settings: LacoSettings) -> PruneOutcome:
    """`--method laco`: layer collapse with the calibration-similarity check (merges start at block 1 or
    `--min-start`)."""
    lowest = 1 if request.min_start is None else request.min_start
    keep_top = 0 if request.allow_last else 1
    guards = request.guards(loaded.num_layers)
    removed, trials = collapse(loaded, windows, request.cut, settings, lowest, request.batch_size, keep_top)
    merged_into = sorted({t["into"] for t in trials if t["accepted"]})
    return PruneOutcome(request.method, removed, merged_into, len(removed),
                        details={**protection_details(guards), "laco": {"layers": settings.layers, "interval": settings.interval,
                                          "threshold": settings.threshold, "lowest": lowest,
                                          "samples": settings.samples, "trials": trials}})
