"""lm-evaluation-harness task configs for the same local files layercut reads, to cross-check.

`write_harness_tasks(["piqa", "arc_easy"], tasks_dir, out_dir)` writes one YAML per task into
`out_dir` (named `layercut_<task>`), each reading the local JSONL through the `json` dataset
builder with the prompt layercut uses, so `lm_eval --include_path out_dir --tasks
layercut_piqa ...` scores exactly the items `layercut eval --tasks piqa` scores, offline.
HellaSwag's text format is first converted to JSONL next to the YAML.
"""

from __future__ import annotations

import json
from pathlib import Path

from layercut.errors import ConfigError
from layercut.evaluation.tasks import REGISTRY, answer_prompt, read_hellaswag_text

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
        "  - metric: acc_norm",
        "", ])


def hellaswag_as_jsonl(source: Path, target: Path) -> Path:
    """HellaSwag's 6-line text items as query/choices/gold JSONL (the prompt layercut scores)."""
    lines = [json.dumps({"query": item.contexts[0], "choices": list(item.continuations), "gold": item.gold})
             for item in read_hellaswag_text(source)]
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def write_harness_tasks(names: list[str], tasks_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Write lm_eval task YAMLs for registered multiple-choice tasks; return the lm_eval task names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        spec = REGISTRY.get(name)
        if spec is None or spec.fmt == "cloze":
            raise ConfigError(f"no lm_eval config for '{name}'; choose among the multiple-choice tasks "
                              f"{', '.join(n for n, s in REGISTRY.items() if s.fmt != 'cloze')}")
        data_file = Path(tasks_dir).expanduser().resolve() / spec.filename
        fmt = spec.fmt
        if fmt == "hellaswag":
            data_file, fmt = hellaswag_as_jsonl(data_file, out / f"{name}.jsonl"), "query"
        (out / f"{PREFIX}{name}.yaml").write_text(harness_yaml(name, data_file, fmt, spec.prompt is answer_prompt))
        written.append(f"{PREFIX}{name}")
    return written
