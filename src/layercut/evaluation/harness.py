"""lm-evaluation-harness task configs for the same local files layercut reads, to cross-check.

`write_harness_tasks(["piqa", "arc_easy", "my_task.jsonl"], tasks_dir, out_dir)` writes one YAML
per task into `out_dir` (named `layercut_<task>`), each reading the local JSONL through the `json`
dataset builder with the prompt layercut uses, so `lm_eval --include_path out_dir --tasks
layercut_piqa ...` scores exactly the items `layercut eval --tasks piqa` scores, offline. A path
to the user's own JSONL file (query/choices/gold or context_options/continuation/gold) is scored
verbatim, as `layercut eval --tasks FILE` does. HellaSwag's text format is first converted to
JSONL next to the YAML.

Metrics: `acc_norm` divides each choice's log-likelihood by the UTF-8 length of the text that is
scored (the continuation). In partial-scoring tasks (WinoGrande) every option scores the same
continuation, so acc_norm equals acc by that definition; lm_eval would divide by the length of
the differing *context* instead, a different metric, so those configs ask lm_eval for acc only.
"""

from __future__ import annotations

import json
from pathlib import Path

from layercut.errors import ConfigError
from layercut.evaluation.tasks import REGISTRY, answer_prompt, generic_format, read_hellaswag_text, read_jsonl_records

PREFIX = "layercut_"


def harness_yaml(name: str, data_file: Path, fmt: str, answer_line: bool) -> str:
    """The YAML of one task: `fmt` is query (one context, many choices) or partial (WinoGrande)."""
    if fmt == "partial":
        text, choice, target = "{{gold}}", "{{context_options}}", "{{continuation}}"
    else:
        text = "{{query.rstrip()}}\\nAnswer:" if answer_line else "{{query}}"
        choice, target = "{{choices}}", "{{gold}}"
    return "\n".join([
        f"task: {PREFIX}{name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: multiple_choice",
        f'doc_to_text: "{text}"',
        f'doc_to_choice: "{choice}"',
        f'doc_to_target: "{target}"',
        "metric_list:",
        "  - metric: acc",
        *([] if fmt == "partial" else ["  - metric: acc_norm"]),
        "", ])


def hellaswag_as_jsonl(source: Path, target: Path) -> Path:
    """HellaSwag's 6-line text items as query/choices/gold JSONL (the prompt layercut scores)."""
    lines = [json.dumps({"query": item.contexts[0], "choices": list(item.continuations), "gold": item.gold})
             for item in read_hellaswag_text(source)]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _choice_tasks() -> str:
    return ", ".join(n for n, s in REGISTRY.items() if s.fmt != "cloze")


def user_task_format(path: Path) -> str:
    """The format of the user's own JSONL task file (query or partial), read from its first record."""
    if not path.is_file():
        raise ConfigError(f"task file '{path}' does not exist; pass a registered task name or a .jsonl path")
    records = read_jsonl_records(path)
    if not records:
        raise ConfigError(f"task file '{path}' is empty; give one JSON object per line")
    fmt = generic_format(records[0][1], records[0][0])
    if fmt == "cloze":
        raise ConfigError(f"'{path}' is a cloze task (context/continuation); lm_eval configs are written for "
                          "multiple-choice files only (query/choices/gold or context_options/continuation/gold)")
    return fmt


def write_harness_tasks(names: list[str], tasks_dir: str | Path | None, out_dir: str | Path) -> list[str]:
    """Write lm_eval task YAMLs for registered multiple-choice tasks and the user's own multiple-choice
    JSONL files; return the lm_eval task names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        spec = REGISTRY.get(name)
        if spec is None and name.endswith((".jsonl", ".json")):
            data_file = Path(name).expanduser().resolve()
            fmt, task_name, answer_line = user_task_format(data_file), data_file.stem, False
        elif spec is None or spec.fmt == "cloze":
            raise ConfigError(f"no lm_eval config for '{name}'; choose among the multiple-choice tasks "
                              f"{_choice_tasks()} or pass your own .jsonl file")
        else:
            if tasks_dir is None:
                raise ConfigError(f"task '{name}' reads {spec.filename} from a folder; pass the tasks directory")
            data_file = Path(tasks_dir).expanduser().resolve() / spec.filename
            fmt, task_name, answer_line = spec.fmt, name, spec.prompt is answer_prompt
        if fmt == "hellaswag":
            data_file, fmt = hellaswag_as_jsonl(data_file, out / f"{task_name}.jsonl"), "query"
        (out / f"{PREFIX}{task_name}.yaml").write_text(harness_yaml(task_name, data_file, fmt, answer_line))
        written.append(f"{PREFIX}{task_name}")
    return written
