"""`layercut bench`: structure of the results on tiny models (no timing thresholds)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_loaded
from layercut.cli import main
from layercut.export import save_checkpoint
from layercut.methods.sublayers import zero_sublayers
from layercut.speed import (bench_models, compute_profile, greedy_run, ideal_speedups, last_logits_only,
                            synthetic_prompts)
from layercut.surgery import remove_blocks


def test_greedy_run_gives_positive_numbers():
    loaded = tiny_loaded("llama")
    timing = greedy_run(loaded.model, synthetic_prompts(320, 2, 12), 5)
    assert timing.prefill_tokens_per_s > 0 and timing.decode_tokens_per_s > 0 and timing.ttft_ms > 0
    assert timing.peak_memory_mb >= 0


def test_ideal_speedups_count_layers_and_zeroed_halves():
    dense, cut, attn_cut = tiny_loaded("llama"), tiny_loaded("llama"), tiny_loaded("llama")
    remove_blocks(cut, [1, 2, 3])
    zero_sublayers(attn_cut, [1, 2, 3], "attn")
    base = compute_profile(dense, 32, 8)
    blocks = ideal_speedups(base, compute_profile(cut, 32, 8))
    halves = ideal_speedups(base, compute_profile(attn_cut, 32, 8))
    assert blocks["layers"] == pytest.approx(2.0) and blocks["parameters"] > 1.0
    assert halves["layers"] == 1.0 and halves["parameters"] == 1.0
    assert halves["sublayers"] == pytest.approx(12 / 9) and 1.0 < halves["decode_flops"] < blocks["decode_flops"]


def test_bench_models_structure():
    dense, cut = tiny_loaded("llama"), tiny_loaded("llama")
    remove_blocks(cut, [2, 3])
    results = bench_models({"dense": dense, "cut": cut}, [1, 2], prompt_len=8, gen_len=3, repeats=2)
    assert [(r["model"], r["batch"]) for r in results["runs"]] == [("dense", 1), ("cut", 1), ("dense", 2), ("cut", 2)]
    dense_run = results["runs"][0]
    assert dense_run["measured_speedup"]["decode"] == pytest.approx(1.0)
    assert len(dense_run["repeats"]) == 2
    stat = dense_run["decode_tokens_per_s"]
    assert stat["min"] <= stat["median"] <= stat["max"]
    assert results["runs"][1]["ideal_speedup"]["layers"] == pytest.approx(1.5)


def test_bench_cli_writes_json_and_report(tmp_path, tiny_dir, capsys):
    out, report = tmp_path / "bench.json", tmp_path / "bench.md"
    code = main(["bench", "--model", str(tiny_dir), "--baseline", str(tiny_dir), "--prompt-len", "8",
                 "--gen-len", "3", "--batch", "1,2", "--repeats", "1", "--json", str(out), "--report", str(report)])
    assert code == 0
    record = json.loads(out.read_text())
    assert len(record["runs"]) == 4 and "| model |" in report.read_text()
    assert main(["bench", "--model", str(tiny_dir), "--batch", "one"]) == 2


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_prefill_keeps_only_the_last_logits(family):
    """The prefill's reduced LM head gives the same last-position logits as the full forward."""
    loaded = tiny_loaded(family)
    prompts = synthetic_prompts(int(loaded.model.config.vocab_size), 2, 10)
    with torch.no_grad():
        full = loaded.model(input_ids=prompts).logits
        kept = loaded.model(input_ids=prompts, **last_logits_only(loaded.model)).logits
    assert last_logits_only(loaded.model) == {"logits_to_keep": 1}
    assert kept.shape[1] == 1
    torch.testing.assert_close(kept[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_prefill_flops_count_the_head_once_per_prompt():
    """Prefill FLOPs per token = 2 * (block weights + head / prompt) + attention; decode counts the head fully."""
    loaded = tiny_loaded("llama")
    profile = compute_profile(loaded, 32, 8)
    head = loaded.model.lm_head.weight.numel()
    blocks = sum(m.weight.numel() for m in loaded.model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    width = loaded.model.model.layers[0].self_attn.o_proj.weight.shape[1]
    layers = len(loaded.model.model.layers)
    assert profile["prefill_flops_per_token"] == pytest.approx(2 * (blocks + head / 32) + 4 * 16 * width * layers)
    assert profile["decode_flops_per_token"] == pytest.approx(2 * (blocks + head) + 4 * 36 * width * layers)


def test_bench_cli_measures_further_models_in_the_same_run(tmp_path, tiny_dir):
    cut = tiny_loaded("llama")
    remove_blocks(cut, [1, 2])
    cut_dir = tmp_path / "cut"
    save_checkpoint(cut, cut_dir, {"command": "test"})
    out = tmp_path / "bench.json"
    code = main(["bench", "--model", str(tiny_dir), "--also", str(cut_dir), "--baseline", str(tiny_dir),
                 "--prompt-len", "8", "--gen-len", "2", "--repeats", "1", "--json", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert [run["model"] for run in record["runs"]] == [f"{tiny_dir} (baseline)", str(tiny_dir), str(cut_dir)]
    layers = {name: profile["layers"] for name, profile in record["models"].items()}
    assert layers[str(cut_dir)] == layers[str(tiny_dir)] - 2
    assert record["runs"][2]["ideal_speedup"]["layers"] == pytest.approx(layers[str(tiny_dir)] / layers[str(cut_dir)])
    assert main(["bench", "--model", str(tiny_dir), "--also", str(tiny_dir)]) == 2
