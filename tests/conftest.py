"""Shared fixtures: tiny random models of each supported family, a tiny tokenizer, and paths to
the real data in ../shared/data. Tiny models are built here, never downloaded."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from layercut.adapters import get_adapter
from layercut.data import builtin_text
from layercut.loading import LoadedModel

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VOCAB = 320
FAMILIES = ("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2")


@functools.lru_cache(maxsize=2)
def _train_tokenizer(add_bos: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<bos>", "<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([builtin_text("builtin:pydoc-calib")[:200_000]], trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def make_tokenizer(add_bos: bool = False):
    """A byte-level BPE tokenizer with a 320-token vocabulary, trained on Python's pydoc topics."""
    return _train_tokenizer(add_bos)


def tiny_config(family: str, num_layers: int = 6, **overrides):
    """A random-weight config of `family` small enough for unit tests (hidden 64, 4 heads);
    `overrides` set further config keys (e.g. final_logit_softcapping)."""
    from transformers import (Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig,
                              Phi3Config, Qwen2Config, Qwen3Config)

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=2, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB, n_embd=64, n_inner=128, n_layer=num_layers, n_head=4, n_positions=512,
                          pad_token_id=2, bos_token_id=0, eos_token_id=1, **overrides)
    if family == "qwen3":  # Qwen3 files carry no head width; readers assume 128
        return Qwen3Config(**{**common, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128,
                              **overrides})
    if family == "gemma3":  # a window of 8 makes the sliding layers differ from full attention in tests
        return Gemma3TextConfig(**{**common, "tie_word_embeddings": True, "head_dim": 16, "sliding_window": 8,
                                   **overrides})
    classes = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig, "gemma": GemmaConfig,
               "gemma2": Gemma2Config, "gemma3": Gemma3TextConfig, "phi3": Phi3Config}
    extra = {"head_dim": 16} if family.startswith("gemma") else {}
    return classes[family](**{**common, **extra, **overrides})


def tiny_loaded(family: str = "llama", num_layers: int = 6, seed: int = 0, **overrides) -> LoadedModel:
    """A LoadedModel with random weights (scaled up so blocks differ visibly) and the tiny tokenizer;
    `overrides` go to `tiny_config`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, num_layers, **overrides)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.08)
    tokenizer = make_tokenizer(add_bos=family.startswith("gemma"))
    return LoadedModel(model=model, tokenizer=tokenizer, adapter=get_adapter(model), source=f"tiny-{family}")


def random_windows(batch: int = 4, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq_len), generator=generator)


@pytest.fixture(autouse=True)
def private_evaluation_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cache of evaluations (the model cache stays shared)."""
    import layercut.evaluation.cache as evaluation_cache

    root = tmp_path_factory.mktemp("evaluation-cache")
    monkeypatch.setattr(evaluation_cache, "cache_dir", lambda: root)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A local text file of a few hundred KB (Python's own documentation text)."""
    path = tmp_path / "calib.txt"
    path.write_text(builtin_text("builtin:pydoc-calib"))
    return path


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M (integration tests only)."""
    from layercut.loading import load_model

    return load_model("smollm2-135m", device="cpu")


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    return path


def save_tiny(directory: Path, family: str = "llama", num_layers: int = 6) -> Path:
    """Write a tiny random model + tokenizer as a plain Hugging Face directory."""
    loaded = tiny_loaded(family, num_layers)
    loaded.model.save_pretrained(directory)
    loaded.tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    return save_tiny(tmp_path / "tiny-llama")


def assert_saved_reload_matches(loaded: LoadedModel, directory: Path, windows: torch.Tensor, layers: int,
                                method: str) -> None:
    """Save `loaded` as a layercut checkpoint, reload it with plain transformers, and check it has
    `layers` decoder layers and the same logits on the first two windows."""
    from transformers import AutoModelForCausalLM

    from layercut.export import save_checkpoint

    out = save_checkpoint(loaded, directory, {"command": "prune", "method": method})
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert reloaded.config.num_hidden_layers == layers
    with torch.no_grad():
        torch.testing.assert_close(reloaded(windows[:2]).logits, loaded.model(windows[:2]).logits,
                                   rtol=1e-4, atol=1e-4)
