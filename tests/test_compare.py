"""`compare`: every method from its own fresh copy, one table, JSON and PNG."""

from __future__ import annotations

import json

import pytest

from conftest import random_windows, tiny_loaded
from layercut.cli import main
from layercut.commands.compare import parse_methods
from layercut.compare import compare_methods, removed_label, render_markdown, table
from layercut.errors import ConfigError
from layercut.evaluation.suite import PerplexitySettings
from layercut.evaluation.tasks import load_task
from layercut.prune import PruneRequest

METHODS = ["angular", "shortgpt", "last", "random", "ppl", "replaceme-lstsq", "streamline-ffn", "streamline-layer"]
QUICK_OPTIONS = {"ppl": {"ppl_samples": 2}, "streamline-ffn": {"epochs": 1}, "streamline-layer": {"epochs": 1}}


def _choice_task(tmp_path):
    path = tmp_path / "toy.jsonl"
    rows = [{"query": f"Question {i}: which word follows?", "choices": [" yes", " no", " maybe"], "gold": i % 3}
            for i in range(4)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def _small_text(tmp_path, text_file):
    path = tmp_path / "small.txt"
    path.write_text(text_file.read_text()[:4000])
    return path


def test_compare_table_has_every_method_and_leaves_dense_untouched(tmp_path, text_file):
    ppl_text = _small_text(tmp_path, text_file)
    dense = tiny_loaded("llama")
    before = {name: value.clone() for name, value in dense.model.state_dict().items()}
    requests = [PruneRequest(method=name, cut=2, select="cosine" if name.startswith("streamline") else "angular",
                             progress=False, options=QUICK_OPTIONS.get(name, {})) for name in METHODS]
    task = load_task(str(_choice_task(tmp_path)), None, None, 0)
    report = compare_methods(dense, random_windows(6, 16), requests, [task],
                             PerplexitySettings(str(ppl_text), seq_len=64, max_tokens=256), progress=False)
    for name, value in dense.model.state_dict().items():
        assert value.equal(before[name]), name
    header, rows = table(report)
    assert [row[0] for row in rows] == ["dense", *METHODS]
    assert "retention (%)" in header and "prune time (s)" in header
    column = header.index("stability")
    assert rows[0][column] == "1.000"
    for entry, row in zip(report["methods"], rows[1:]):
        value = entry["comparison"]["mean"]["stability"]
        assert 0.0 <= value <= 1.0 and row[column] == f"{value:.3f}"
    layers = {row[0]: row[2] for row in rows}
    assert layers["angular"] == "4" and layers["streamline-ffn"] == "5"
    assert all(entry["error"] is None and entry["prune_seconds"] >= 0 for entry in report["methods"])
    assert "| streamline-layer" in render_markdown(report)


def test_compare_cli_writes_report_json_and_png(tmp_path, tiny_dir, text_file):
    out = tmp_path / "compare.md"
    text_file = _small_text(tmp_path, text_file)
    code = main(["compare", "--model", str(tiny_dir), "--cut", "2",
                 "--methods", "angular,last,streamline-ffn,angular:attn,replaceme-lstsq:mlp",
                 "--calib", str(text_file), "--samples", "4", "--seq-len", "16", "--ppl", str(text_file),
                 "--max-tokens", "128", "--eval-seq-len", "64", "--epochs", "1", "--report", str(out),
                 "--json", str(tmp_path / "compare.json"), "--no-progress"])
    assert code == 0
    text = out.read_text()
    assert all(f"| {name}" in text for name in ("dense", "angular", "last", "streamline-ffn"))
    assert (tmp_path / "compare.png").stat().st_size > 0
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [entry["method"] for entry in report["methods"]] == ["angular", "last", "streamline-ffn", "angular:attn",
                                                                 "replaceme-lstsq:mlp"]
    attn, failed = report["methods"][3:]
    assert attn["evaluation"]["layers"] == report["dense"]["layers"] and len(attn["details"]["removed_sublayers"]) == 2
    assert f"{removed_label(attn)} |" in text and removed_label(attn).startswith("attn of ")
    assert "angular only" in failed["error"]


def test_methods_are_checked():
    assert parse_methods("angular, last") == [("angular", "block"), ("last", "block")]
    assert parse_methods("angular,angular:attn,angular:mlp") == [("angular", "block"), ("angular", "attn"),
                                                                   ("angular", "mlp")]
    with pytest.raises(ConfigError, match="NAME:attn or NAME:mlp"):
        parse_methods("angular:heads")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("angular,angular:block")
    with pytest.raises(ConfigError, match="choose among"):
        parse_methods("angular,nope")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods("last,last")


def test_removed_label_names_spans_replacements_and_sublayers():
    assert removed_label({"details": {}, "removed": [3, 4, 5, 9]}) == "3-5, 9"
    assert removed_label({"details": {"streamline": {"replaced_blocks": [2, 3, 4]}}, "removed": [3, 4]}) == \
        "2-4 -> 1 trained"
    assert removed_label({"details": {"granularity": "mlp", "removed_sublayers": [1, 6, 7]}, "removed": []}) == \
        "mlp of 1, 6-7"
