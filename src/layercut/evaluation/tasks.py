"""Zero-shot tasks: read multiple-choice and LAMBADA files into one item shape.

Every task becomes a list of `ChoiceItem`s: choice i is scored as the log-probability of
`continuations[i]` given `contexts[i]` (lm-evaluation-harness puts a single space between them).
Ordinary multiple choice shares one context; WinoGrande's partial scoring shares one
continuation across different contexts; LAMBADA is a one-choice item scored by greedy match.

Where a task comes from:
- a registered name (`piqa`, `arc_easy`, ... see `REGISTRY`) reads its file from `--tasks-dir`
  and applies the harness's prompt for that task (e.g. ARC's `Question: ...\\nAnswer:`);
- a path to a `.jsonl` file in the generic format below is scored verbatim;
- `hf:NAME[:CONFIG][:SPLIT]` reads a Hugging Face dataset in the generic format (online only).

Generic JSONL format, one JSON object per line, all lines of one kind:
- multiple choice: `{"query": str, "choices": [str, ...], "gold": int}`
- partial scoring: `{"context_options": [str, ...], "continuation": str, "gold": int}`
- cloze (LAMBADA-like): `{"context": str, "continuation": str}`
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from layercut.errors import ConfigError, DataError

CHOICE = "choice"
CLOZE = "cloze"
FEWSHOT_DELIMITER = "\n\n"
TARGET_DELIMITER = " "


@dataclass(frozen=True)
class ChoiceItem:
    """One question: choice i is `continuations[i]` scored after `contexts[i]`; `gold` is the answer."""

    contexts: tuple[str, ...]
    continuations: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class Task:
    """A loaded task: its items, how to score them (`kind`), its headline metric and its file."""

    name: str
    kind: str
    items: tuple[ChoiceItem, ...]
    metric: str
    source: str
    num_fewshot: int = 0


def answer_prompt(query: str) -> str:
    """The harness prompt for ARC, PIQA and BoolQ: the question, then `Answer:` on its own line."""
    return query.rstrip() + "\nAnswer:"


def verbatim(query: str) -> str:
    return query


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: the file it reads in --tasks-dir, its format and its headline metric."""

    filename: str
    fmt: str
    metric: str = "acc"
    prompt: Callable[[str], str] = verbatim


REGISTRY: dict[str, TaskSpec] = {
    "arc_easy": TaskSpec("arc_easy.jsonl", "query", "acc", answer_prompt),
    "arc_challenge": TaskSpec("arc_challenge.jsonl", "query", "acc_norm", answer_prompt),
    "boolq": TaskSpec("boolq.jsonl", "query", "acc", answer_prompt),
    "piqa": TaskSpec("piqa.jsonl", "query", "acc", answer_prompt),
    "openbookqa": TaskSpec("openbook_qa.jsonl", "query", "acc_norm"),
    "winogrande": TaskSpec("winogrande.jsonl", "partial", "acc"),
    "hellaswag": TaskSpec("hellaswag_val.txt", "hellaswag", "acc_norm"),
    "lambada": TaskSpec("lambada_openai.jsonl", "cloze", "acc"),
}
ALIASES = {"openbook_qa": "openbookqa", "lambada_openai": "lambada"}


def _field(record: dict, key: str, kind: type, where: str) -> Any:
    value = record.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DataError(f"{where}: field '{key}' is missing or not a {kind.__name__}; "
                        "see the task formats in `layercut eval --help`")
    return value


def _gold(record: dict, count: int, where: str) -> int:
    gold = _field(record, "gold", int, where)
    if not 0 <= gold < count:
        raise DataError(f"{where}: gold index {gold} is out of range for {count} choices; fix that line")
    return gold


def _strings(record: dict, key: str, where: str) -> tuple[str, ...]:
    values = _field(record, key, list, where)
    if len(values) < 1 or not all(isinstance(v, str) for v in values):
        raise DataError(f"{where}: field '{key}' must be a non-empty list of strings")
    return tuple(values)


def query_item(record: dict, where: str, prompt: Callable[[str], str] = verbatim) -> ChoiceItem:
    """`{"query", "choices", "gold"}`: one context (the prompted query), one continuation per choice."""
    choices = _strings(record, "choices", where)
    context = prompt(_field(record, "query", str, where))
    return ChoiceItem((context,) * len(choices), choices, _gold(record, len(choices), where))


def partial_item(record: dict, where: str) -> ChoiceItem:
    """`{"context_options", "continuation", "gold"}`: WinoGrande's partial scoring."""
    contexts = _strings(record, "context_options", where)
    continuation = _field(record, "continuation", str, where)
    return ChoiceItem(contexts, (continuation,) * len(contexts), _gold(record, len(contexts), where))


def cloze_item(record: dict, where: str) -> ChoiceItem:
    """`{"context", "continuation"}`: one continuation, right when the model would generate it greedily."""
    return ChoiceItem((_field(record, "context", str, where),), (_field(record, "continuation", str, where),), 0)


def read_jsonl_records(path: Path) -> list[tuple[str, dict]]:
    """The JSON objects of a JSONL file with their `file:line` locations; blank lines are skipped."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object per line")
            records.append((where, record))
    return records


READERS: dict[str, Callable[[dict, str], ChoiceItem]] = {
    "query": query_item, "partial": partial_item, "cloze": cloze_item}


def generic_format(first: dict, where: str) -> str:
    """The generic format (query, partial or cloze) named by the keys of a file's first record."""
    if "choices" in first:
        return "query"
    if "context_options" in first:
        return "partial"
    if "context" in first and "continuation" in first:
        return "cloze"
    raise DataError(f"{where}: unknown task format (keys: {', '.join(sorted(first))}); use query/choices/gold, "
                    "context_options/continuation/gold or context/continuation")


def read_hellaswag_text(path: Path) -> list[ChoiceItem]:
    """HellaSwag's 6-line text format: `label: context`, the gold index, then four endings."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6; each HellaSwag item is "
                        "a context line, a gold line and four ending lines")
    items = []
    for start in range(0, len(lines), 6):
        gold_line = lines[start + 1].strip()
        if not gold_line.isdigit() or int(gold_line) > 3:
            raise DataError(f"{path}:{start + 2}: gold label '{gold_line}' must be 0, 1, 2 or 3")
        endings = tuple(lines[start + 2:start + 6])
        items.append(ChoiceItem((lines[start],) * 4, endings, int(gold_line)))
    return items


def read_task_file(path: Path, fmt: str, prompt: Callable[[str], str] = verbatim) -> tuple[list[ChoiceItem], str]:
    """Items of a task file in format `fmt` (query, partial, cloze, hellaswag or generic = detect),
    and the format they were read as."""
    if not path.is_file():
        raise DataError(f"task file '{path}' does not exist; check --tasks-dir or the path")
    if fmt == "hellaswag":
        items = read_hellaswag_text(path)
    else:
        records = read_jsonl_records(path)
        if not records:
            raise DataError(f"task file '{path}' is empty; give a file with one JSON object per line")
        if fmt == "generic":
            fmt = generic_format(records[0][1], records[0][0])
        items = [query_item(record, where, prompt) if fmt == "query" else READERS[fmt](record, where)
                 for where, record in records]
    if not items:
        raise DataError(f"task file '{path}' is empty; give a file with at least one item")
    return items, fmt


def read_hf_task(spec: str) -> tuple[list[ChoiceItem], str]:
    """A Hugging Face dataset whose rows follow the generic format: `hf:NAME[:CONFIG][:SPLIT]`."""
    from layercut.data import load_hf_dataset  # torch and datasets only when a hub task is asked for

    rows = load_hf_dataset(spec, default_split="validation")
    records = [(f"{spec} row {number}", dict(row)) for number, row in enumerate(rows)]
    if not records:
        raise DataError(f"dataset '{spec}' is empty")
    fmt = generic_format(records[0][1], records[0][0])
    return [READERS[fmt](record, where) for where, record in records], fmt


def add_fewshot(items: list[ChoiceItem], pool: list[ChoiceItem], num_fewshot: int,
                seed: int = 1234) -> list[ChoiceItem]:
    """Prefix each item's contexts with `num_fewshot` solved examples drawn from `pool` (never itself).

    An example is its gold context, the target delimiter and its gold continuation; examples are
    joined by a blank line, as in lm-evaluation-harness.
    """
    if num_fewshot <= 0:
        return items
    if num_fewshot >= len(pool):
        raise ConfigError(f"--num-fewshot {num_fewshot} needs more than {num_fewshot} items in the task; lower it")
    rng = random.Random(seed)
    shown = []
    for item in items:
        chosen = [pool[i] for i in rng.sample(range(len(pool)), num_fewshot + 1) if pool[i] is not item]
        prefix = "".join(example.contexts[example.gold] + TARGET_DELIMITER + example.continuations[example.gold]
                         + FEWSHOT_DELIMITER for example in chosen[:num_fewshot])
        shown.append(replace(item, contexts=tuple(prefix + context for context in item.contexts)))
    return shown


def known_task_names() -> str:
    return ", ".join(sorted(REGISTRY))


def load_task(name: str, tasks_dir: str | Path | None = None, limit: int | None = None,
              num_fewshot: int = 0) -> Task:
    """Load a task by registered name, JSONL path or `hf:` dataset; keep the first `limit` items."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (got {limit})")
    canonical = ALIASES.get(name, name)
    metric, source = "acc", name
    if name.startswith("hf:"):
        items, fmt = read_hf_task(name)
    elif canonical in REGISTRY:
        spec = REGISTRY[canonical]
        if tasks_dir is None:
            raise ConfigError(f"task '{name}' reads {spec.filename} from a folder; pass --tasks-dir DIR")
        path = Path(tasks_dir).expanduser() / spec.filename
        items, fmt = read_task_file(path, spec.fmt, spec.prompt)
        name, metric, source = canonical, spec.metric, str(path)
    elif name.endswith((".jsonl", ".json")) or Path(name).expanduser().is_file():
        path = Path(name).expanduser()
        items, fmt = read_task_file(path, "generic")
        name, source = path.stem, str(path)
    else:
        raise ConfigError(f"unknown task '{name}'; use one of {known_task_names()}, a .jsonl file, or hf:NAME")
    chosen = add_fewshot(items[:limit] if limit else items, items, num_fewshot)
    return Task(name=name, kind=CLOZE if fmt == "cloze" else CHOICE, items=tuple(chosen), metric=metric,
                source=source, num_fewshot=num_fewshot)
