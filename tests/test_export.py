"""Export: checkpoints reload in plain transformers with identical logits; writes are atomic."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.errors import OutputExistsError
from layercut.export import count_parameters, save_checkpoint, write_text_atomic
from layercut.loading import load_model
from layercut.prune import PruneRequest, prune


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma", "phi3", "gpt2", "gemma2"])
def test_pruned_checkpoint_reloads_with_same_logits(tmp_path, family):
    from transformers import AutoModelForCausalLM

    loaded = tiny_loaded(family, num_layers=6)
    method = "angular" if family == "gemma2" else "replaceme-lstsq"
    prune(loaded, random_windows(6, 16), PruneRequest(method=method, cut=2, progress=False))
    out = save_checkpoint(loaded, tmp_path / "out", {"command": "prune", "method": method})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    windows = random_windows(2, 12, seed=5)
    with torch.no_grad():
        assert torch.allclose(reloaded(windows).logits, loaded.model(windows).logits, atol=1e-5)
    assert reloaded.config.num_hidden_layers == 4
    if hasattr(reloaded.config, "layer_types") and reloaded.config.layer_types is not None:
        assert len(reloaded.config.layer_types) == 4
    record = json.loads((out / "layercut.json").read_text())
    assert record["steps"][0]["method"] == method
    assert "Pruned from tiny-" in (out / "README.md").read_text()


def test_checkpoint_loads_without_layercut(tmp_path):
    loaded = tiny_loaded("llama", num_layers=4)
    prune(loaded, random_windows(4, 16), PruneRequest(method="replaceme-lstsq", cut=1, progress=False))
    out = save_checkpoint(loaded, tmp_path / "out", {"command": "prune"})
    code = ("import sys, torch; sys.modules['layercut'] = None\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained(r'{out}')\n"
            "print(m.config.num_hidden_layers)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("3")


def test_history_chains_and_overwrite_rules(tmp_path):
    loaded = tiny_loaded("llama", num_layers=5)
    first = save_checkpoint(loaded, tmp_path / "a", {"command": "prune", "method": "angular"})
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_checkpoint(loaded, first, {"command": "prune"})
    again = load_model(str(first), device="cpu")
    assert again.history[0]["method"] == "angular"
    second = save_checkpoint(again, tmp_path / "b", {"command": "slim", "method": "magnitude"})
    steps = json.loads((second / "layercut.json").read_text())["steps"]
    assert [s["command"] for s in steps] == ["prune", "slim"]
    assert steps[1]["input_model"] == str(first)
    save_checkpoint(again, second, {"command": "heal"}, overwrite=True)
    assert len(json.loads((second / "layercut.json").read_text())["steps"]) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_interrupted_save_leaves_old_output(tmp_path, monkeypatch):
    loaded = tiny_loaded("llama", num_layers=3)
    out = save_checkpoint(loaded, tmp_path / "out", {"command": "prune"})
    before = (out / "model.safetensors").read_bytes()

    def explode(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loaded.tokenizer, "save_pretrained", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(loaded, out, {"command": "again"}, overwrite=True)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_and_param_count(tmp_path):
    path = write_text_atomic(tmp_path / "x.json", "{}")
    with pytest.raises(OutputExistsError):
        write_text_atomic(path, "{}", overwrite=False)
    loaded = tiny_loaded("llama", num_layers=2)
    expected = sum(p.numel() for p in loaded.model.parameters())
    assert count_parameters(loaded.model) == expected
