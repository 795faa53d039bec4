"""Integration: the real SmolLM2-135M and real WikiText-2 (marked `integration`)."""

import copy
import math

import pytest
from transformers import AutoModelForCausalLM

from conftest import shared_data
from layercut.data import calibration_windows
from layercut.evaluation.perplexity import text_perplexity
from layercut.export import save_checkpoint
from layercut.loading import load_model
from layercut.prune import PruneRequest, prune

pytestmark = pytest.mark.integration


def test_replaceme_lstsq_beats_plain_drop_on_wikitext(smollm2, tmp_path):
    calib = shared_data("text", "wikitext2_valid_tokenized.txt")
    test_text = str(shared_data("text", "wikitext2_raw_test.txt"))
    windows = calibration_windows(smollm2.tokenizer, str(calib), samples=32, seq_len=128, seed=0)
    results = {}
    for method in ("replaceme-lstsq", "angular"):
        loaded = copy.deepcopy(smollm2)
        prune(loaded, windows, PruneRequest(method=method, cut=8, progress=False))
        out = save_checkpoint(loaded, tmp_path / method, {"command": "prune", "method": method})
        reloaded = load_model(str(out), device="cpu")
        assert reloaded.num_layers == 22
        assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 22
        results[method] = text_perplexity(reloaded, test_text, seq_len=256, max_tokens=4096, progress=False).perplexity
    assert all(math.isfinite(v) for v in results.values())
    assert results["replaceme-lstsq"] < results["angular"], results
