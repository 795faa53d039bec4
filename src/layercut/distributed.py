"""torch.distributed helpers: calibration statistics are sums, so ranks each read a shard of the
calibration windows and the sums are all-reduced. In a single process every helper is a no-op."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_windows(windows: torch.Tensor) -> torch.Tensor:
    """This rank's share of the calibration windows (round-robin, so shards differ by at most one)."""
    rank, world = rank_and_world()
    return windows[rank::world]


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """In-place sum of each tensor across ranks. Tensors travel on the backend's device."""
    if not is_distributed():
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for tensor in tensors:
        moved = tensor.to(device)
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        tensor.copy_(moved.to(tensor.device))
