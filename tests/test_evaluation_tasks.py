"""Task loaders for the shared formats, the generic JSONL format, and bad input."""

from __future__ import annotations

import json

import pytest

from conftest import shared_data
from layercut.cli import main
from layercut.errors import ConfigError, DataError
from layercut.evaluation.tasks import CHOICE, CLOZE, REGISTRY, load_task


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_task_loads_from_shared_data(name):
    task = load_task(name, shared_data("tasks"), limit=5)
    assert task.name == name and len(task.items) == 5
    for item in task.items:
        assert len(item.contexts) == len(item.continuations) and 0 <= item.gold < len(item.contexts)
    assert task.kind == (CLOZE if name == "lambada" else CHOICE)


def test_harness_prompts():
    arc = load_task("arc_easy", shared_data("tasks"), limit=1).items[0]
    piqa = load_task("piqa", shared_data("tasks"), limit=1).items[0]
    assert arc.contexts[0].startswith("Question: ") and arc.contexts[0].endswith("?\nAnswer:")
    assert piqa.contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"


def test_winogrande_scores_one_continuation_after_each_option():
    item = load_task("winogrande", shared_data("tasks"), limit=1).items[0]
    assert item.contexts[0].endswith("so Sarah") and item.contexts[1].endswith("so Maria")
    assert item.continuations == ("always got the easier cases.",) * 2 and item.gold == 1


def test_hellaswag_text_format():
    item = load_task("hellaswag", shared_data("tasks"), limit=1).items[0]
    assert item.contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"
    assert item.gold == 3 and item.continuations[3] == "starts pulling up roofing on a roof."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_generic_jsonl_formats(tmp_path):
    choice = write_jsonl(tmp_path / "mine.jsonl", [{"query": "2+2 =", "choices": ["4", "5"], "gold": 0}])
    cloze = write_jsonl(tmp_path / "cloze.jsonl", [{"context": "one two", "continuation": "three"}])
    task = load_task(str(choice))
    assert task.name == "mine" and task.kind == CHOICE and task.items[0].contexts == ("2+2 =",) * 2
    assert load_task(str(cloze)).kind == CLOZE


def test_fewshot_prefixes_solved_examples_from_other_items(tmp_path):
    rows = [{"query": f"q{i}", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(6)]
    task = load_task(str(write_jsonl(tmp_path / "t.jsonl", rows)), limit=2, num_fewshot=2)
    context = task.items[0].contexts[0]
    assert context.endswith("q0") and context.count("\n\n") == 2 and "q0 " not in context


@pytest.mark.parametrize("rows, error, words", [
    ([{"query": "q", "choices": ["a", "b"], "gold": 2}], DataError, "gold index 2 is out of range"),
    ([{"query": "q", "choices": ["a", "b"]}], DataError, "field 'gold'"),
    ([], DataError, "is empty"),
    ([{"question": "q"}], DataError, "unknown task format"),
])
def test_bad_task_files_are_one_line_errors(tmp_path, rows, error, words):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(error, match=words):
        load_task(str(path))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"query": "q", "choices": ["a"], "gold": 0}\n\n{"query": "q", "choices": \n')
    with pytest.raises(DataError, match=rf"{path}:3: invalid JSON"):
        load_task(str(path))


def test_unknown_task_and_missing_tasks_dir():
    with pytest.raises(ConfigError, match="unknown task 'piqq'"):
        load_task("piqq")
    with pytest.raises(ConfigError, match="--tasks-dir"):
        load_task("piqa")


@pytest.mark.parametrize("tasks, words", [
    ("piqq", "unknown task 'piqq'"),
    ("{bad}", ":1: gold index 7 is out of range"),
    ("{empty}", "is empty"),
    ("{broken}", ":1: invalid JSON"),
])
def test_cli_bad_task_input_exits_2_with_one_line(tmp_path, capsys, tasks, words):
    files = {"bad": write_jsonl(tmp_path / "bad.jsonl", [{"query": "q", "choices": ["a"], "gold": 7}]),
             "empty": write_jsonl(tmp_path / "empty.jsonl", []),
             "broken": tmp_path / "broken.jsonl"}
    files["broken"].write_text("{not json\n")
    code = main(["eval", "--model", "smollm2-135m", "--tasks", tasks.format(**files)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and err.count("\n") == 1
