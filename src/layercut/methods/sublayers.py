"""Sublayer cuts: score and remove the attention half or the MLP half of single blocks.

For block k the attention half maps X_k to Y_k = X_k + Attn(norm1(X_k)) and the MLP half maps
Y_k to X_{k+1} = Y_k + M_k. A half that barely turns the residual stream (low angular distance
between its input and output) is a candidate for removal. A removed half is exported natively by
zeroing its output projection (weight and bias): the residual then passes through unchanged and
the checkpoint still loads in plain `transformers`, though the zeroed half is still computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from layercut.calibration.capture import forward_blocks, real_token_rows
from layercut.calibration.scores import angular_distance, cosine_rows
from layercut.calibration.selection import lowest_scores
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import PruneOutcome, PruneRequest
from layercut.methods.protection import protection_details

SUBLAYER_PARTS = ("attn", "mlp")


@dataclass
class SublayerStats:
    """Per-block float64 sums over calibration tokens of cos / angular distance between each half's
    input and output: attention X_k vs Y_k, MLP Y_k vs X_{k+1}."""

    cos_sum: dict[str, torch.Tensor]
    angular_sum: dict[str, torch.Tensor]
    tokens: float = 0.0

    @classmethod
    def empty(cls, num_layers: int) -> "SublayerStats":
        zeros = lambda: torch.zeros(num_layers, dtype=torch.float64)  # noqa: E731
        return cls({part: zeros() for part in SUBLAYER_PARTS}, {part: zeros() for part in SUBLAYER_PARTS})

    def update(self, hidden: list[torch.Tensor], mlp: dict[int, torch.Tensor], mask: torch.Tensor) -> None:
        """Add one batch: `hidden` = X_0 .. X_L and `mlp[k]` = M_k for every block."""
        for k in range(len(hidden) - 1):
            block_in = real_token_rows(hidden[k], mask)
            block_out = real_token_rows(hidden[k + 1], mask)
            attn_out = block_out - real_token_rows(mlp[k], mask)
            for part, (before, after) in {"attn": (block_in, attn_out), "mlp": (attn_out, block_out)}.items():
                self.cos_sum[part][k] += float(cosine_rows(before, after).sum())
                self.angular_sum[part][k] += float(angular_distance(before, after).sum())
        self.tokens += float(mask.sum())

    def angular(self, part: str) -> torch.Tensor:
        """Mean angular distance between the half's input and output per block (lower = more redundant)."""
        return self.angular_sum[part] / max(self.tokens, 1.0)

    def cosine(self, part: str) -> torch.Tensor:
        """Mean cosine similarity between the half's input and output per block (higher = more redundant)."""
        return self.cos_sum[part] / max(self.tokens, 1.0)


def scan_sublayers(loaded: LoadedModel, windows: torch.Tensor, batch_size: int = 8,
                   progress: bool = True) -> SublayerStats:
    """One calibration pass that scores the attention and MLP half of every block."""
    num_layers = loaded.num_layers
    stats = SublayerStats.empty(num_layers)
    for capture in forward_blocks(loaded, windows, batch_size, mlp_blocks=set(range(num_layers)),
                                  desc="sublayer scan", progress=progress):
        stats.update(capture.hidden, capture.mlp, capture.mask)
    return stats


def sublayer_scores(stats: SublayerStats, part: str, select: str) -> torch.Tensor:
    """Per-block scores of one half, oriented so that lower = more redundant."""
    if select == "angular":
        return stats.angular(part)
    if select == "cosine":
        return -stats.cosine(part)
    raise ConfigError(f"--select {select} has no sublayer form; use angular or cosine with --granularity {part}")


def output_projection(loaded: LoadedModel, block: nn.Module, part: str) -> nn.Module:
    """The last linear op of a block's attention (`attn`) or MLP (`mlp`) half."""
    return loaded.adapter.attn_out_proj(block) if part == "attn" else loaded.adapter.down_proj(block)


def zero_sublayers(loaded: LoadedModel, indices: list[int], part: str) -> list[int]:
    """Remove the `part` half of the given blocks by zeroing its output projection (weight and bias),
    so that half adds nothing to the residual stream (a norm after the half, as in Gemma 2, maps zero
    to zero). Returns the sorted block indices."""
    if part not in SUBLAYER_PARTS:
        raise ConfigError(f"unknown sublayer '{part}'; use attn or mlp")
    blocks = loaded.adapter.blocks(loaded.model)
    chosen = sorted(set(int(i) for i in indices))
    for index in chosen:
        if not 0 <= index < len(blocks):
            raise ConfigError(f"cannot remove the {part} of block {index}: the model has blocks 0..{len(blocks) - 1}")
        projection = output_projection(loaded, blocks[index], part)
        with torch.no_grad():
            projection.weight.zero_()
            if getattr(projection, "bias", None) is not None:
                projection.bias.zero_()
    return chosen


def removed_sublayers(loaded: LoadedModel, part: str) -> list[int]:
    """Blocks whose `part` half is removed (an all-zero output projection)."""
    blocks = loaded.adapter.blocks(loaded.model)
    return [k for k, block in enumerate(blocks)
            if not bool(output_projection(loaded, block, part).weight.detach().any())]


def prune_sublayers(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> dict[str, Any]:
    """Score the halves named by `request.granularity` and zero the `request.cut` most redundant ones
    (not necessarily contiguous; protected blocks are kept: `PruneRequest.guards`). Returns the record."""
    part = request.granularity
    if part not in SUBLAYER_PARTS:
        raise ConfigError(f"unknown --granularity '{part}'; use block, attn or mlp")
    num_layers = loaded.num_layers
    if request.cut > num_layers:
        raise ConfigError(f"--cut {request.cut} is more {part} sublayers than the model's {num_layers} blocks")
    stats = scan_sublayers(loaded, windows, request.batch_size, progress=request.progress)
    scores = sublayer_scores(stats, part, request.select)
    guards = request.guards(num_layers)
    chosen = lowest_scores(scores, request.cut, keep=tuple(guards))
    if len(chosen) < request.cut:
        raise ConfigError(f"only {len(chosen)} {part} sublayers are not protected (blocks {sorted(guards)}); "
                          "lower --cut or --min-start, or pass --allow-last")
    zero_sublayers(loaded, chosen, part)
    return {"granularity": part, "removed_sublayers": chosen, **protection_details(guards),
            "sublayer_scores": {p: {"angular": stats.angular(p).tolist(), "cosine": stats.cosine(p).tolist()}
                                for p in SUBLAYER_PARTS},
            "calibration_tokens": int(stats.tokens)}


def drop_sublayers(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest) -> PruneOutcome:
    """`--granularity attn|mlp`: remove the `cut` most redundant attention or MLP halves (blocks stay)."""
    if request.method != "angular":
        raise ConfigError(f"--granularity {request.granularity} works with --method angular only")
    record = prune_sublayers(loaded, windows, request)
    return PruneOutcome(request.method, [], record["removed_sublayers"], 0, details=record)


def render_sublayer_table(stats: SublayerStats, part: str, top: int = 5) -> str:
    """Per-block angular distance and cosine of one half, then the most redundant blocks."""
    angular, cosine = stats.angular(part), stats.cosine(part)
    lines = [f"block  {part} angular  {part} cosine", "-----  ------------  -----------"]
    lines += [f"{k:5d}  {float(a):12.4f}  {float(c):11.4f}" for k, (a, c) in enumerate(zip(angular, cosine))]
    best = lowest_scores(angular, min(top, len(angular)))
    ordered = sorted(best, key=lambda k: float(angular[k]))
    lines.append("")
    lines.append(f"most redundant {part} sublayers (lowest angular): {ordered}")
    return "\n".join(lines)


def sublayers_to_dict(stats: SublayerStats) -> dict[str, Any]:
    """The scores of both halves as lists indexed by block."""
    clean = lambda values: [None if math.isnan(v) else v for v in values.tolist()]  # noqa: E731
    return {"sublayers": {part: {"angular": clean(stats.angular(part)), "cosine": clean(stats.cosine(part))}
                          for part in SUBLAYER_PARTS},
            "sublayer_tokens": int(stats.tokens),
            "sublayer_index": "attn[k] compares X_k with Y_k; mlp[k] compares Y_k with X_{k+1}"}
