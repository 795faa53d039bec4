"""GGUF export: write a pruned / slimmed tiny Llama, read it back with transformers' GGUF reader,
and compare logits and tokenization with the original."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import random_windows, save_tiny, tiny_loaded

from layercut.cli import main
from layercut.errors import UnsupportedArchitectureError
from layercut.gguf_export import export_gguf, rotary_interleave
from layercut.loading import LoadedModel
from layercut.slicing import slice_ffn
from layercut.surgery import remove_blocks


def _reload_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits


def _logits(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(ids).logits


def test_rotary_interleave_pairs_rows_within_each_head():
    weight = torch.arange(8.0).unsqueeze(1)  # 2 heads of 4 rows: halves (0, 1 | 2, 3) and (4, 5 | 6, 7)
    assert rotary_interleave(weight, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize(("gguf_type", "tolerance"), [("f32", 1e-4), ("f16", 2e-2)])
def test_pruned_and_slimmed_llama_round_trips(tmp_path: Path, gguf_type: str, tolerance: float):
    loaded = tiny_loaded("llama")
    remove_blocks(loaded, [2, 3])
    slice_ffn(loaded, [torch.arange(0, 128, 2) for _ in range(loaded.num_layers)])
    path = export_gguf(loaded, tmp_path / "model.gguf", gguf_type)
    ids = random_windows(2, 16)
    expected, got = _logits(loaded, ids), _reload_logits(path, ids)
    assert (got - expected).abs().max() / expected.abs().max() < tolerance


def test_tokenizer_round_trips(tmp_path: Path):
    from transformers import AutoTokenizer

    loaded = tiny_loaded("llama")
    path = export_gguf(loaded, tmp_path / "model.gguf", "f32")
    reread = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = "def area(radius): return 3.14159 * radius ** 2  # The quick brown fox"
    assert reread(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]
    assert (reread.bos_token_id, reread.eos_token_id) == (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id)


def test_export_command_writes_gguf_and_refuses_bad_input(tmp_path: Path, capsys):
    directory = save_tiny(tmp_path / "tiny")
    out = tmp_path / "tiny.gguf"
    assert main(["export", "--model", str(directory), "--gguf", str(out), "--gguf-type", "f32", "--device", "cpu"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert main(["export", "--model", str(directory), "--gguf", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--model", str(directory)]) == 2
    assert "nothing to export" in capsys.readouterr().err


def test_families_without_a_layout_are_refused(tmp_path: Path):
    with pytest.raises(UnsupportedArchitectureError, match="Llama-family"):
        export_gguf(tiny_loaded("gpt2"), tmp_path / "gpt2.gguf")
    assert not list(tmp_path.iterdir())
