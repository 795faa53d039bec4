"""Layer-by-layer onloading: the same statistics as the in-memory pass, at a lower peak RSS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, random_windows, save_tiny, tiny_config
from safetensors.torch import load_file

from layercut.calibration.capture import calibrate, collect_fit
from layercut.cli import main
from layercut.loading import load_model
from layercut.onload import load_onloaded, materialize


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
def test_onloaded_calibration_equals_in_memory(tmp_path: Path, family: str):
    directory = save_tiny(tmp_path / family, family)
    windows = random_windows(6, 16)
    whole = load_model(str(directory), device="cpu")
    onloaded = load_onloaded(str(directory))
    assert all(param.is_meta for param in onloaded.adapter.blocks(onloaded.model).parameters())
    expected = calibrate(whole, windows, 4, cut=2, fold_blocks=[1, 2], progress=False)
    got = calibrate(onloaded, windows, 4, cut=2, fold_blocks=[1, 2], progress=False)
    for name in ("cos_sum", "angular_sum", "angular_last_sum", "tokens"):
        torch.testing.assert_close(getattr(got.scan, name), getattr(expected.scan, name), rtol=1e-9, atol=0)
    for j in (1, 2):
        torch.testing.assert_close(got.fits[j].gram, expected.fits[j].gram, rtol=1e-9, atol=0)
        torch.testing.assert_close(got.fits[j].cross, expected.fits[j].cross, rtol=1e-9, atol=0)
    fit_expected, _ = collect_fit(whole, windows, 2, 2, 4, progress=False)
    fit_got, _ = collect_fit(onloaded, windows, 2, 2, 4, progress=False)
    torch.testing.assert_close(fit_got.cross, fit_expected.cross, rtol=1e-9, atol=0)
    materialize(onloaded)
    for (name, a), b in zip(whole.model.state_dict().items(), onloaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_prune_with_offload_writes_the_same_model(tiny_dir: Path, text_file: Path, tmp_path: Path):
    common = ["prune", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "8", "--seq-len", "32",
              "--batch-size", "4", "--method", "replaceme-lstsq", "--cut", "2", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "memory")]) == 0
    assert main([*common, "--offload", "layers", "--offload-dir", str(tmp_path), "--out", str(tmp_path / "disk")]) == 0
    expected, got = load_file(tmp_path / "memory" / "model.safetensors"), load_file(tmp_path / "disk" / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)
    assert not list(tmp_path.glob("layercut-onload-*"))  # spilled hidden states are cleaned up


def test_offload_needs_a_local_checkpoint(capsys):
    assert main(["prune", "--model", "no/such/dir/", "--offload", "layers", "--method", "angular", "--cut", "1",
                 "--out", "unused"]) == 2
    assert "model path 'no/such/dir/' does not exist" in capsys.readouterr().err  # from the config, before loading
    assert main(["prune", "--model", "no/such/dir/", "--offload", "layers", "--method", "laco", "--cut", "1",
                 "--out", "unused"]) == 2
    assert "needs the whole model in memory" in capsys.readouterr().err


PEAK_SCRIPT = """
import resource, sys, torch
from layercut.calibration.capture import calibrate
from layercut.loading import load_model
from layercut.onload import load_onloaded
directory, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
windows = torch.randint(3, 300, (8, 64))
loaded = load_onloaded(directory) if mode == "layers" else load_model(directory, device="cpu")
calibrate(loaded, windows, 4, cut=2, fold_blocks=[3], progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


# Linux carries a process's peak RSS across fork and exec, so a child of this (large) test process
# would report at least our own peak; a small launcher in between gives the child a clean count.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


def _peak_kib(directory: Path, mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", PEAK_SCRIPT, str(directory), mode],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_onloading_lowers_peak_rss(tmp_path: Path):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", num_layers=12)
    config.hidden_size, config.intermediate_size = 512, 2048  # ~40M parameters: 160 MB in float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(tmp_path / "model")
    make_tokenizer().save_pretrained(tmp_path / "model")
    del model
    whole, onloaded = _peak_kib(tmp_path / "model", "memory"), _peak_kib(tmp_path / "model", "layers")
    assert onloaded < whole - 100 * 1024, (whole, onloaded)  # KiB: at least 100 MB less


def test_device_map_placement_gives_the_same_statistics(tiny_dir: Path, text_file: Path):
    windows = random_windows(4, 16)
    whole = load_model(str(tiny_dir), device="cpu")
    placed = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu",
              **{f"model.layers.{i}": "cpu" for i in range(6)}}
    expected = calibrate(whole, windows, 2, cut=1, fold_blocks=[2], progress=False)
    for device_map in ("auto", placed):
        mapped = load_model(str(tiny_dir), device_map=device_map)
        assert mapped.device.type == "cpu"
        got = calibrate(mapped, windows, 2, cut=1, fold_blocks=[2], progress=False)
        torch.testing.assert_close(got.scan.cos_sum, expected.scan.cos_sum, rtol=1e-9, atol=0)
        torch.testing.assert_close(got.fits[2].gram, expected.fits[2].gram, rtol=1e-9, atol=0)
    assert main(["eval", "--model", str(tiny_dir), "--ppl", str(text_file), "--max-tokens", "128", "--seq-len", "64",
                 "--device-map", "auto", "--no-progress"]) == 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to split blocks across devices")
def test_blocks_split_across_gpu_and_cpu(tiny_dir: Path):
    windows = random_windows(4, 16)
    whole = load_model(str(tiny_dir), device="cpu", dtype="float32")
    split = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.norm": "cpu", "lm_head": "cpu",
             **{f"model.layers.{i}": (0 if i < 3 else "cpu") for i in range(6)}}
    mapped = load_model(str(tiny_dir), dtype="float32", device_map=split)
    expected = calibrate(whole, windows, 2, cut=1, fold_blocks=[4], progress=False)
    got = calibrate(mapped, windows, 2, cut=1, fold_blocks=[4], progress=False)
    torch.testing.assert_close(got.scan.cos_sum, expected.scan.cos_sum, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(got.fits[4].gram, expected.fits[4].gram, rtol=1e-4, atol=1e-3)
