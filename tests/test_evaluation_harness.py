"""Agreement with lm-evaluation-harness: same model, same local items, same accuracy.

lm_eval reads the shared JSONL through the task configs of `layercut.evaluation.harness`
(no network). The 200-item comparison on all six tasks is in bench/eval_tasks.py; this test
keeps the suite fast with the first ITEMS items of PIQA and ARC-Easy.
"""

from __future__ import annotations

import os

import pytest

from conftest import shared_data
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
