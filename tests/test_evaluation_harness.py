"""Agreement with lm-evaluation-harness: same model, same local items, same accuracy.

lm_eval reads the shared JSONL through the task configs of `layercut.evaluation.harness`
(no network). The 200-item comparison on all six tasks is in bench/eval_tasks.py; this test
keeps the suite fast with the first ITEMS items of PIQA and ARC-Easy.
"""

from __future__ import annotations

import json
import os

import pytest

from conftest import shared_data, tiny_loaded
from layercut.errors import ConfigError
from layercut.evaluation.harness import PREFIX, write_harness_tasks
from layercut.evaluation.tasks import load_task
from layercut.evaluation.zeroshot import evaluate_task

ITEMS = 20


@pytest.mark.integration
def test_layercut_accuracy_equals_lm_eval_on_piqa_and_arc_easy(smollm2, tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.setitem(os.environ, "HF_DATASETS_OFFLINE", "1")
    tasks_dir = shared_data("tasks")
    names = write_harness_tasks(["piqa", "arc_easy"], tasks_dir, tmp_path)
    harness_model = HFLM(pretrained=smollm2.model, tokenizer=smollm2.tokenizer, batch_size=8)
    results = lm_eval.simple_evaluate(model=harness_model, tasks=names, limit=ITEMS,
                                      task_manager=TaskManager(include_path=str(tmp_path)))["results"]
    for name in ("piqa", "arc_easy"):
        ours = evaluate_task(smollm2, load_task(name, tasks_dir, limit=ITEMS), progress=False).metrics
        theirs = results[PREFIX + name]
        assert abs(ours["acc"] - theirs["acc,none"]) <= 0.005
        assert abs(ours["acc_norm"] - theirs["acc_norm,none"]) <= 0.005


def _write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_user_jsonl_tasks_get_lm_eval_configs_scored_like_layercut(tmp_path, monkeypatch):
    """The user's own multiple-choice and partial-scoring files: lm_eval on the written configs gives
    the same acc (and, for multiple choice, the same acc_norm) as layercut on a tiny model."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    monkeypatch.setitem(os.environ, "HF_DATASETS_OFFLINE", "1")
    words = ["the cat", "a dog", "some water", "an idea", "the river", "old bread"]
    choice_file = _write_jsonl(tmp_path / "mine_mc.jsonl", [
        {"query": f"Question {i}: what is near {words[i]}?", "choices": words[:3] if i % 2 else words[3:],
         "gold": i % 3} for i in range(6)])
    partial_file = _write_jsonl(tmp_path / "mine_partial.jsonl", [
        {"context_options": [f"{words[i]} sat", f"{words[(i + 1) % 6]} sat"], "continuation": "by the door.",
         "gold": i % 2} for i in range(6)])
    configs = tmp_path / "configs"
    names = write_harness_tasks([choice_file, partial_file], None, configs)
    assert names == [PREFIX + "mine_mc", PREFIX + "mine_partial"]
    assert "acc_norm" not in (configs / f"{PREFIX}mine_partial.yaml").read_text()
    loaded = tiny_loaded("llama")
    harness_model = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4)
    results = lm_eval.simple_evaluate(model=harness_model, tasks=names,
                                      task_manager=TaskManager(include_path=str(configs)))["results"]
    for path, name in ((choice_file, "mine_mc"), (partial_file, "mine_partial")):
        ours = evaluate_task(loaded, load_task(path), progress=False).metrics
        theirs = results[PREFIX + name]
        assert ours["acc"] == pytest.approx(theirs["acc,none"])
        if name == "mine_mc":
            assert ours["acc_norm"] == pytest.approx(theirs["acc_norm,none"])
        else:
            assert ours["acc_norm"] == ours["acc"] and "acc_norm,none" not in theirs


def test_cloze_and_missing_user_files_are_refused(tmp_path):
    cloze = _write_jsonl(tmp_path / "cloze.jsonl", [{"context": "One two", "continuation": "three"}])
    with pytest.raises(ConfigError, match="cloze task"):
        write_harness_tasks([cloze], None, tmp_path / "c")
    with pytest.raises(ConfigError, match="does not exist"):
        write_harness_tasks([str(tmp_path / "nope.jsonl")], None, tmp_path / "c")
