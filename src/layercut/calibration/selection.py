"""Choosing which blocks to cut from scores: contiguous spans for span scores, any blocks for
per-layer scores. Pure functions on score tensors."""

from __future__ import annotations

import math

import torch

from layercut.errors import ConfigError


def choose_spans(redundancy: torch.Tensor, span_len: int, num_cuts: int = 1, min_start: int = 0,
                 gap: int = 0, protected: tuple[int, ...] = ()) -> list[int]:
    """Start blocks of `num_cuts` non-overlapping spans of `span_len` blocks, most redundant first.

    `redundancy[k, n]` is lower for more redundant spans (NaN where invalid). Spans start at
    `min_start` or later and keep at least `gap` untouched blocks between them (ReplaceMe needs
    one, so that each span still has its own fold block just before it), and never cover a block
    in `protected`. Returned sorted.
    """
    num_layers = redundancy.shape[0] - 1
    candidates = [(float(redundancy[k, span_len]), k) for k in range(min_start, num_layers - span_len + 1)
                  if not math.isnan(float(redundancy[k, span_len]))
                  and not any(k <= block < k + span_len for block in protected)]
    chosen: list[int] = []
    for _, start in sorted(candidates):
        if all(start + span_len + gap <= other or other + span_len + gap <= start for other in chosen):
            chosen.append(start)
        if len(chosen) == num_cuts:
            return sorted(chosen)
    keep_out = f" without cutting blocks {list(protected)}" if protected else ""
    raise ConfigError(f"cannot place {num_cuts} non-overlapping cut(s) of {span_len} blocks starting at block "
                      f"{min_start} or later in {num_layers} blocks{keep_out}; lower --cut, --num-cuts or --min-start")


def spans_to_blocks(starts: list[int], span_len: int) -> list[int]:
    """All block indices covered by the spans."""
    return [k + offset for k in starts for offset in range(span_len)]


def lowest_scores(per_layer: torch.Tensor, count: int, keep: tuple[int, ...] = ()) -> list[int]:
    """Indices of the `count` lowest per-layer scores (ties by index), never those in `keep`."""
    order = sorted((float(value), index) for index, value in enumerate(per_layer) if index not in keep)
    return sorted(index for _, index in order[:count])
