"""Data-parallel calibration: two gloo processes launched by torchrun give the same pruned weights
and span scores as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from layercut.cli import main
from layercut.distributed import all_reduce_sum, init_from_env, is_main_process, rank_and_world, shard_windows

PRUNE_ARGS = ["--samples", "12", "--seq-len", "32", "--batch-size", "4", "--method", "replaceme-lstsq",
              "--cut", "2", "--device", "cpu"]


def test_single_process_helpers_are_no_ops(monkeypatch):
    import torch

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() is False
    assert rank_and_world() == (0, 1) and is_main_process()
    windows = torch.arange(10).view(5, 2)
    assert torch.equal(shard_windows(windows), windows)
    total = torch.ones(3)
    all_reduce_sum([total])
    assert torch.equal(total, torch.ones(3))


def _relative_gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.nanmax(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))


@pytest.mark.slow
def test_two_gloo_processes_match_one(tiny_dir: Path, text_file: Path, tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["prune", "--model", str(tiny_dir), "--calib", str(text_file), *PRUNE_ARGS, "--out", str(one)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "layercut",
         "prune", "--model", str(tiny_dir), "--calib", str(text_file), *PRUNE_ARGS, "--out", str(two)],
        env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert launched.stdout.count("saved to") == 1  # only rank 0 writes and reports
    weights_one, weights_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        assert _relative_gap(weights_one[name].numpy(), weights_two[name].numpy()) < 1e-6, name
    step_one, step_two = (json.loads((d / "layercut.json").read_text())["steps"][-1] for d in (one, two))
    assert step_one["result"]["removed_blocks"] == step_two["result"]["removed_blocks"]
    for key in ("span_scores", "block_influence"):
        a = np.array(step_one["scores"][key], dtype=float)
        b = np.array(step_two["scores"][key], dtype=float)
        assert _relative_gap(a, b) < 1e-6, key
