"""How long healing runs, how fast it learns at each step, and which windows each step reads."""

from __future__ import annotations

import math

import torch


def planned_steps(steps: int | None, tokens: int | None, tokens_per_step: int) -> int:
    """Optimizer steps to run: `steps`, or enough steps to see `tokens` tokens, whichever is fewer."""
    candidates = [s for s in (steps, math.ceil(tokens / tokens_per_step) if tokens else None) if s]
    return min(candidates)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate for 0-based optimizer step `step`.

    Linear warmup over the first `warmup` steps, then a cosine decay that reaches `min_ratio`
    at step `total`.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(num_windows: int, batch_size: int, seed: int, position: int) -> torch.Tensor:
    """Window indices of micro-batch number `position` (0-based, counted over the whole run).

    Each epoch shuffles the windows with a generator seeded by (seed, epoch), so any position
    can be recomputed directly: resuming needs only the position, not a replay of the run.
    The windows left over after the last whole batch of an epoch are skipped in that epoch.
    """
    per_epoch = num_windows // batch_size
    epoch, slot = divmod(position, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_windows, generator=generator)
    return order[slot * batch_size:(slot + 1) * batch_size]
