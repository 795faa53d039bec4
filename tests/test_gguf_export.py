"""GGUF export: write each family's tiny model (pruned, slimmed, Streamline-style), read it back with
transformers' GGUF loader, and compare logits and tokenization with the original; refusals come
from the config, before any weights load, and name the family."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import random_windows, save_tiny, tiny_config, tiny_loaded

from layercut.cli import main
from layercut.data import builtin_text
from layercut.errors import UnsupportedArchitectureError
from layercut.gguf_export import check_gguf_export, export_gguf, rotary_interleave, same_setting
from layercut.loading import LoadedModel
from layercut.slicing import slice_ffn
from layercut.surgery import remove_blocks

GGUF_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")
TEXTS = ("def area(radius): return 3.14159 * radius ** 2  # The quick brown fox",
         "  Indented  twice,\nthen a new line; UTF-8: café 東京 ✓")


def _reload(path: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _randomise_vectors(loaded: LoadedModel) -> None:
    """Norm weights and biases away from their init, so offsets and row orders show in the logits."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in loaded.model.parameters():
            if param.dim() == 1:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def _pruned_slimmed_streamlined(family: str) -> LoadedModel:
    """Two of eight blocks dropped, every FFN halved, and one block's attention output zeroed (Streamline).

    Gemma 3 loses its last two blocks, so its full-attention layer stays at index 5 of a pattern of six.
    """
    # llama.cpp's Gemma 2 has no output tensor (tied, as every real Gemma 2).
    overrides = {"gemma2": {"tie_word_embeddings": True}}.get(family, {})
    loaded = tiny_loaded(family, num_layers=8, **overrides)
    _randomise_vectors(loaded)
    remove_blocks(loaded, [6, 7] if family == "gemma3" else [2, 3])
    width = int(loaded.model.config.intermediate_size)
    slice_ffn(loaded, [torch.arange(0, width, 2) for _ in range(loaded.num_layers)])
    with torch.no_grad():
        loaded.adapter.attn_out_proj(loaded.adapter.blocks(loaded.model)[1]).weight.zero_()
    return loaded


def test_rotary_interleave_pairs_rows_within_each_head():
    weight = torch.arange(8.0).unsqueeze(1)  # 2 heads of 4 rows: halves (0, 1 | 2, 3) and (4, 5 | 6, 7)
    assert rotary_interleave(weight, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_same_setting_reads_floats_at_f32_and_absent_flags_as_off():
    assert same_setting(1e-6, float(torch.tensor(1e-6, dtype=torch.float32)))
    assert not same_setting(1e-6, 1e-5)
    assert same_setting(None, False) and not same_setting(None, 0.5)
    assert same_setting({"rope_theta": 1e4, "rope_type": "default"}, {"rope_type": "default", "rope_theta": 10000})
    assert not same_setting(["full_attention"], ["sliding_attention"])


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_pruned_slimmed_streamline_model_round_trips(tmp_path: Path, family: str):
    loaded = _pruned_slimmed_streamlined(family)
    path = export_gguf(loaded, tmp_path / "model.gguf", "f32")
    reloaded = _reload(path)
    assert reloaded.config.model_type == {"mistral": "llama"}.get(family, loaded.model.config.model_type)
    assert reloaded.config.num_hidden_layers == 6
    assert reloaded.config.intermediate_size == 64
    assert getattr(reloaded.config, "layer_types", None) == getattr(loaded.model.config, "layer_types", None)
    ids = random_windows(2, 16)
    expected, got = _logits(loaded.model, ids), _logits(reloaded, ids)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_f16_round_trip_is_close(tmp_path: Path):
    loaded = _pruned_slimmed_streamlined("llama")
    path = export_gguf(loaded, tmp_path / "model.gguf", "f16")
    ids = random_windows(2, 16)
    expected, got = _logits(loaded.model, ids), _logits(_reload(path), ids)
    assert (got - expected).abs().max() / expected.abs().max() < 2e-2


def test_byte_level_tokenizer_round_trips(tmp_path: Path):
    from transformers import AutoTokenizer

    loaded = tiny_loaded("qwen2")
    path = export_gguf(loaded, tmp_path / "model.gguf", "f32")
    reread = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        assert reread(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]
    assert (reread.bos_token_id, reread.eos_token_id) == (loaded.tokenizer.bos_token_id, loaded.tokenizer.eos_token_id)


@functools.lru_cache(maxsize=1)
def _sentencepiece_tokenizer(folder: str):
    """A Gemma-style tokenizer from a SentencePiece BPE model trained here (byte fallback, BOS first)."""
    import sentencepiece
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    corpus = Path(folder) / "corpus.txt"
    corpus.write_text(builtin_text("builtin:pydoc-calib")[:60_000])
    prefix = str(Path(folder) / "sp")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=prefix, vocab_size=320, model_type="bpe", byte_fallback=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", add_dummy_prefix=False, character_coverage=0.995, minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_file=f"{prefix}.model")
    pieces = [processor.id_to_piece(index) for index in range(processor.get_piece_size())]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    merges = generate_merges(vocab, {piece: processor.get_score(index) for index, piece in enumerate(pieces)})
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)


def test_sentencepiece_tokenizer_round_trips_as_gemma3(tmp_path: Path):
    from transformers import AutoTokenizer

    tokenizer = _sentencepiece_tokenizer(str(tmp_path))
    loaded = tiny_loaded("gemma3")
    loaded = LoadedModel(model=loaded.model, tokenizer=tokenizer, adapter=loaded.adapter, source="tiny-gemma3")
    path = export_gguf(loaded, tmp_path / "model.gguf", "f32")
    reread = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert reread(text)["input_ids"] == ids
        assert reread.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids, skip_special_tokens=True)


def test_export_command_writes_gguf_and_refuses_bad_input(tmp_path: Path, capsys):
    directory = save_tiny(tmp_path / "tiny")
    out = tmp_path / "tiny.gguf"
    assert main(["export", "--model", str(directory), "--gguf", str(out), "--gguf-type", "f32", "--device", "cpu"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"
    assert main(["export", "--model", str(directory), "--gguf", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--model", str(directory)]) == 2
    assert "nothing to export" in capsys.readouterr().err


@pytest.mark.parametrize(("family", "reason"), [
    ("gpt2", "gpt2"),
    ("gemma2", "gemma2: llama.cpp's 'gemma2' layout has no tensor for lm_head"),  # untied output
    ("gemma", "gemma: llama.cpp's 'gemma' layout"),
])
def test_families_the_reader_cannot_rebuild_are_refused_from_the_config(family: str, reason: str):
    with pytest.raises(UnsupportedArchitectureError, match=f"does not support {reason}"):
        check_gguf_export(tiny_config(family))


def test_a_window_that_never_slides_needs_no_key_but_a_real_one_does():
    config = tiny_config("mistral")  # window 4096 over a 512-token context: a `llama` file without one is the same
    assert check_gguf_export(config).arch == "llama"
    config.sliding_window = 256
    with pytest.raises(UnsupportedArchitectureError, match=r"this mistral model.*sliding_window \(256; a GGUF reader"):
        check_gguf_export(config)


def test_gemma3_layer_pattern_a_gguf_cannot_record_is_refused():
    config = tiny_config("gemma3", num_layers=8)
    config.layer_types = config.layer_types[:4] + config.layer_types[5:]  # a cut of block 4 moves the full layer
    config.num_hidden_layers = 7
    with pytest.raises(UnsupportedArchitectureError, match=r"this gemma3 model.*layer_types \(layer 4 is 'full_att"):
        check_gguf_export(config)


def test_export_command_refuses_before_loading_weights(tmp_path: Path, capsys, monkeypatch):
    directory = save_tiny(tmp_path / "tiny", family="gemma3", num_layers=8)
    config_path = directory / "config.json"
    config_text = config_path.read_text()
    config_path.write_text(config_text.replace('"query_pre_attn_scalar": 256', '"query_pre_attn_scalar": 16'))
    for weights in directory.glob("*.safetensors"):
        weights.unlink()  # a load would fail; the refusal must come first
    assert main(["export", "--model", str(directory), "--gguf", str(tmp_path / "out.gguf")]) == 2
    err = capsys.readouterr().err
    assert "this gemma3 model" in err and "query_pre_attn_scalar (16" in err
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.integration
def test_smollm2_round_trips_with_equal_logits_and_tokens(smollm2: LoadedModel, tmp_path: Path):
    from transformers import AutoTokenizer

    path = export_gguf(smollm2, tmp_path / "smollm2.gguf", "f32")
    reread = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    text = builtin_text("builtin:pydoc-calib")[:2000]
    ids = smollm2.tokenizer(text, return_tensors="pt")["input_ids"][:, :64]
    assert reread(text, return_tensors="pt")["input_ids"][:, :64].tolist() == ids.tolist()
    expected, got = _logits(smollm2.model, ids), _logits(_reload(path), ids)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
