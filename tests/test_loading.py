"""Model loading: directories, GGUF checks, adapters for every family, clear errors."""

import pytest
import torch

from transformers import AutoTokenizer

from conftest import FAMILIES, make_tokenizer, save_tiny, tiny_loaded
from layercut.adapters import adapter_for_model_type, get_adapter
from layercut.data import bos_id, split_windows, starts_with_bos
from layercut.errors import ModelLoadError, UnsupportedArchitectureError
from layercut.loading import check_gguf_file, check_gguf_reader, load_model, resolve_dtype


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


@pytest.mark.parametrize("family, needs_bos", [("gemma3", True), ("gemma", True), ("llama", False)])
def test_bos_is_added_where_the_family_needs_it(tmp_path, family, needs_bos):
    """A Gemma checkpoint whose tokenizer forgets BOS (transformers 5.17's GGUF conversion of
    Gemma 3 does) loads with a tokenizer that adds it; a saved copy keeps it; Llama is left alone."""
    directory = save_tiny(tmp_path / "model", family)
    make_tokenizer(add_bos=False).save_pretrained(directory)
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    bos = loaded.tokenizer.bos_token_id
    expected = [bos] if needs_bos else []
    assert loaded.tokenizer("a b")["input_ids"][: len(expected)] == expected
    assert (bos_id(loaded.tokenizer) == bos) is needs_bos
    assert loaded.tokenizer("a b", add_special_tokens=False)["input_ids"][0] != bos
    loaded.tokenizer.save_pretrained(tmp_path / "copy")
    assert starts_with_bos(AutoTokenizer.from_pretrained(tmp_path / "copy")) is needs_bos
    windows = split_windows(torch.arange(3, 40), 8, bos_id(loaded.tokenizer))
    assert (windows[:, 0] == bos).all().item() is needs_bos


def test_gguf_reader_too_old_for_the_family_is_refused():
    with pytest.raises(ModelLoadError, match=r"transformers 5\.17\.0 converts gemma3 GGUF tokenizers wrongly; "
                                             r"upgrade it: pip install 'transformers>=5\.18'"):
        check_gguf_reader("gemma3_text", "5.17.0")
    check_gguf_reader("gemma3_text", "5.18.0")
    check_gguf_reader("llama", "5.17.0")
    check_gguf_reader("mamba", "5.17.0")
