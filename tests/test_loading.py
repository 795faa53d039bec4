"""Model loading: directories, GGUF checks, adapters for every family, clear errors."""

import pytest
import torch

from conftest import FAMILIES, tiny_loaded
from layercut.adapters import adapter_for_model_type, get_adapter
from layercut.errors import ModelLoadError, UnsupportedArchitectureError
from layercut.loading import check_gguf_file, load_model, resolve_dtype


def test_every_family_has_a_checked_adapter():
    for family in FAMILIES + ("gemma2",):
        loaded = tiny_loaded(family, num_layers=2)
        adapter = loaded.adapter
        block = adapter.blocks(loaded.model)[0]
        assert adapter.down_proj(block).weight.numel() == 64 * 128
        assert len(adapter.blocks(loaded.model)) == 2


def test_unknown_architecture_is_named():
    with pytest.raises(UnsupportedArchitectureError, match="'mamba'.*adapters.py"):
        adapter_for_model_type("mamba")


def test_adapter_reports_missing_part():
    loaded = tiny_loaded("llama", num_layers=2)
    del loaded.adapter.blocks(loaded.model)[0].mlp.down_proj
    with pytest.raises(UnsupportedArchitectureError, match="mlp.down_proj"):
        get_adapter(loaded.model)


def test_load_directory_roundtrip(tiny_dir):
    loaded = load_model(str(tiny_dir), device="cpu")
    assert loaded.num_layers == 6 and loaded.adapter.name == "llama"
    assert loaded.model.dtype == torch.float32 and not loaded.model.training


def test_missing_path_and_non_model_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"), device="cpu")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_corrupt_and_truncated_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        load_model(str(bad), device="cpu")
    truncated = tmp_path / "trunc.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 20)
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        check_gguf_file(truncated)


def test_dtype_defaults():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hub is unreachable"):
        load_model("layercut-test/no-such-model", device="cpu")
