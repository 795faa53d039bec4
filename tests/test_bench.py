"""`layercut bench`: structure of the results on tiny models (no timing thresholds)."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_loaded
from layercut.cli import main
from layercut.speed import bench_models, compute_profile, greedy_run, ideal_speedups, synthetic_prompts
from layercut.sublayers import zero_sublayers
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
