"""The CUDA paths, on tiny models: bf16 loading, ReplaceMe's float64 sums from bf16 activations,
healing under bf16 autocast with a resume that restores the CUDA RNG, and peak-memory measurement.
Marked `cuda` and skipped without a GPU (`bench/gpu_check.sh` runs them on a GPU machine)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layercut.calibration.capture import calibrate
from layercut.data import builtin_text
from layercut.healing.trainer import build_config, heal
from layercut.loading import load_model
from layercut.speed import PeakMemory, greedy_run
from tests.conftest import random_windows

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture
def train_text(tmp_path: Path) -> Path:
    path = tmp_path / "train.txt"
    path.write_text(builtin_text("builtin:pydoc-calib")[:40_000])
    return path


def test_auto_dtype_is_bf16_and_lstsq_sums_match_cpu(tiny_dir: Path):
    gpu = load_model(str(tiny_dir), device="cuda")
    assert gpu.device.type == "cuda" and next(gpu.model.parameters()).dtype == torch.bfloat16
    cpu = load_model(str(tiny_dir), device="cpu", dtype="float32")
    gpu32 = load_model(str(tiny_dir), device="cuda", dtype="float32")
    windows = random_windows(4, 16)
    expected = calibrate(cpu, windows, 2, cut=2, fold_blocks=[1], progress=False)
    got = calibrate(gpu32, windows, 2, cut=2, fold_blocks=[1], progress=False)
    assert got.fits[1].gram.device.type == "cpu" and got.fits[1].gram.dtype == torch.float64
    torch.testing.assert_close(got.fits[1].gram, expected.fits[1].gram, rtol=1e-4, atol=1e-3)
    bf16 = calibrate(gpu, windows, 2, cut=2, fold_blocks=[1], progress=False)
    assert torch.isfinite(bf16.fits[1].gram).all()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_bf16_heal_resumes_exactly_on_gpu(tiny_dir: Path, train_text: Path, tmp_path: Path, mode: str):
    settings = dict(data=str(train_text), mode=mode, steps=4, lr=3e-3, warmup=1, batch_size=2, seq_len=32,
                    precision="bf16", progress=False)
    straight = load_model(str(tiny_dir), device="cuda", dtype="float32")
    result = heal(straight, build_config(**settings, teacher=str(tiny_dir), kd_weight=0.5))
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    first = load_model(str(tiny_dir), device="cuda", dtype="float32")
    heal(first, build_config(**{**settings, "steps": 4}, save_every=2, work_dir=str(tmp_path / "a")))
    resumed = load_model(str(tiny_dir), device="cuda", dtype="float32")
    heal(resumed, build_config(**settings, work_dir=str(tmp_path / "b"),
                               resume=str(tmp_path / "a" / "checkpoint-000002")))
    for (name, a), b in zip(first.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)  # CUDA backward may reorder sums


def test_peak_memory_and_greedy_decoding_on_gpu(tiny_dir: Path):
    loaded = load_model(str(tiny_dir), device="cuda")
    timing = greedy_run(loaded.model, random_windows(2, 16), 8)
    assert timing.peak_memory_mb > 0 and timing.decode_tokens_per_s > 0
    with PeakMemory(loaded.device) as memory:
        torch.ones(1024, 1024, device="cuda")
    assert memory.megabytes >= 3.9
