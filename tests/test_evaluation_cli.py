"""`layercut eval` end to end on tiny saved models: table, JSON, markdown, PNG, overwrite rules."""

from __future__ import annotations

import json

import pytest

from conftest import shared_data, tiny_loaded
from layercut.cli import main


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Two tiny llama checkpoints on disk: a 'dense' one and a 'pruned' one with fewer layers."""
    root = tmp_path_factory.mktemp("models")
    for name, layers in (("dense", 4), ("pruned", 2)):
        loaded = tiny_loaded("llama", num_layers=layers)
        loaded.model.save_pretrained(root / name)
        loaded.tokenizer.save_pretrained(root / name)
    return root / "dense", root / "pruned"


def run_eval(*argv: str) -> int:
    return main(["eval", "--device", "cpu", "--no-progress", *map(str, argv)])


def test_side_by_side_eval_writes_json_report_and_plot(tiny_dirs, tmp_path, text_file, capsys):
    dense, pruned = tiny_dirs
    out = tmp_path / "out"
    code = run_eval("--model", pruned, "--baseline", dense, "--ppl", text_file, "--max-tokens", 512,
                    "--seq-len", 128, "--tasks", "piqa,winogrande,lambada", "--tasks-dir", shared_data("tasks"),
                    "--limit", 4, "--json", out / "eval.json", "--report", out / "report.md")
    table = capsys.readouterr().out
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["model"]["layers"] == 2 and report["baseline"]["layers"] == 4
    assert report["model"]["parameters"] < report["baseline"]["parameters"]
    rows = {row["task"]: row for row in report["comparison"]["tasks"]}
    assert rows["piqa"]["retention"] == pytest.approx(rows["piqa"]["model"] / rows["piqa"]["baseline"]) \
        if rows["piqa"]["baseline"] else rows["piqa"]["retention"] is None
    assert 0.0 <= rows["winogrande"]["stability"] <= 1.0 and rows["lambada"]["stability"] is None
    assert report["model"]["perplexity"]["windows"] == 4
    assert report["model"]["speed"]["task_tokens_per_second"] > 0
    for words in ("dense", "pruned", "retention", "stability", "perplexity", "parameters", "tok/s"):
        assert words in table
    assert "![scores](report.png)" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_same_model_as_baseline_keeps_everything(tiny_dirs, tmp_path, capsys):
    dense, _ = tiny_dirs
    code = run_eval("--model", dense, "--baseline", dense, "--tasks", "arc_easy,boolq", "--tasks-dir",
                    shared_data("tasks"), "--limit", 5, "--json", tmp_path / "e.json")
    assert code == 0
    for row in json.loads((tmp_path / "e.json").read_text())["comparison"]["tasks"]:
        assert row["model"] == row["baseline"] and row["stability"] == pytest.approx(1.0)


def test_existing_output_is_refused_without_overwrite(tiny_dirs, tmp_path, capsys):
    target = tmp_path / "eval.json"
    target.write_text("{}")
    code = run_eval("--model", tiny_dirs[0], "--tasks", "piqa", "--tasks-dir", shared_data("tasks"),
                    "--json", target)
    assert code == 2 and "--overwrite" in capsys.readouterr().err and target.read_text() == "{}"


def test_nothing_to_evaluate_is_a_config_error(capsys):
    assert run_eval("--model", "smollm2-135m") == 2
    assert "--ppl" in capsys.readouterr().err
