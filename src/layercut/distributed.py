"""torch.distributed helpers: calibration statistics are sums, so ranks each read a shard of the
calibration windows and the sums are all-reduced. In a single process every helper is a no-op."""

from __future__ import annotations

import os

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


def _all_reduce(tensors: list[torch.Tensor], op: "dist.ReduceOp") -> None:
    if not is_distributed():
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    for tensor in tensors:
        moved = tensor.to(device)
        dist.all_reduce(moved, op=op)
        # Statistics updated under inference_mode are inference tensors, writable only in that mode.
        with torch.inference_mode(tensor.is_inference()):
            tensor.copy_(moved.to(tensor.device))


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """In-place sum of each tensor across ranks. Tensors travel on the backend's device."""
    _all_reduce(tensors, dist.ReduceOp.SUM)


def all_reduce_max(tensors: list[torch.Tensor]) -> None:
    """In-place element-wise maximum of each tensor across ranks."""
    _all_reduce(tensors, dist.ReduceOp.MAX)


def init_from_env() -> bool:
    """Join the process group a launcher such as torchrun describes in the environment.

    Called once by the CLI. With WORLD_SIZE > 1 it starts torch.distributed with NCCL when CUDA is
    present (one GPU per local rank) and gloo otherwise; returns True when a group was started.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return False
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return True


def shutdown() -> None:
    """Leave the process group (after every rank has arrived), if one was started."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (or in a single process): the only rank that writes outputs and prints."""
    return rank_and_world()[0] == 0
