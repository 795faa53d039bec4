"""`layercut eval` end to end on tiny saved models: table, JSON, markdown, PNG, overwrite rules."""

from __future__ import annotations

import json

import pytest
import torch

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
    for words in ("dense", "pruned / dense", "stability", "perplexity", "parameters", "tok/s", "indicative"):
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


def test_a_second_run_reuses_the_cached_baseline_with_identical_results(tiny_dirs, tmp_path, text_file, capsys,
                                                                        monkeypatch):
    from layercut.evaluation import suite

    dense, pruned = tiny_dirs
    calls = []
    real = suite.evaluate_model
    monkeypatch.setattr(suite, "evaluate_model", lambda loaded, *a, **k: calls.append(loaded.source) or
                        real(loaded, *a, **k))
    argv = ["--model", pruned, "--baseline", dense, "--ppl", text_file, "--max-tokens", 256, "--seq-len", 64,
            "--tasks", "piqa", "--tasks-dir", shared_data("tasks"), "--limit", 4]
    assert run_eval(*argv, "--json", tmp_path / "a.json") == 0
    assert run_eval(*argv, "--json", tmp_path / "b.json") == 0
    assert "reusing its evaluation" in capsys.readouterr().err
    assert calls == [str(pruned), str(dense), str(pruned)]
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert first["comparison"] == second["comparison"]
    assert first["baseline"]["perplexity"]["perplexity"] == second["baseline"]["perplexity"]["perplexity"]
    assert run_eval(*argv, "--json", tmp_path / "c.json", "--no-cache") == 0
    assert calls[-2:] == [str(pruned), str(dense)]


def test_a_changed_baseline_is_not_served_from_the_cache(tmp_path, text_file, capsys):
    from layercut.evaluation.cache import evaluation_key, weights_hash
    from layercut.evaluation.suite import PerplexitySettings

    loaded = tiny_loaded("llama", num_layers=2)
    ppl = PerplexitySettings(str(text_file), 64, 256)
    key = evaluation_key(loaded.model, [], ppl, {"limit": None})
    digest = weights_hash(loaded.model)
    with torch.no_grad():
        loaded.model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_hash(loaded.model) != digest
    assert evaluation_key(loaded.model, [], ppl, {"limit": None}) != key
    assert evaluation_key(loaded.model, [], PerplexitySettings(str(text_file), 64, 512), {"limit": None}) != \
        evaluation_key(loaded.model, [], ppl, {"limit": None})


def test_evaluating_a_layercut_checkpoint_records_the_results_in_its_card(tmp_path, text_file, capsys):
    from layercut.export import save_checkpoint

    out = save_checkpoint(tiny_loaded("llama", num_layers=2), tmp_path / "made", {"command": "prune",
                                                                                  "method": "angular"})
    assert run_eval("--model", out, "--ppl", text_file, "--max-tokens", 256, "--seq-len", 64,
                    "--json", tmp_path / "e.json") == 0
    value = json.loads((tmp_path / "e.json").read_text())["model"]["perplexity"]["perplexity"]
    record = json.loads((out / "layercut.json").read_text())
    assert record["evaluations"][-1]["perplexity"]["value"] == pytest.approx(value, rel=1e-4)
    assert record["steps"][-1]["method"] == "angular"
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and f"{value:.3f}" in card
    assert run_eval("--model", out, "--ppl", text_file, "--max-tokens", 256, "--seq-len", 64, "--no-record") == 0
    assert len(json.loads((out / "layercut.json").read_text())["evaluations"]) == 1
