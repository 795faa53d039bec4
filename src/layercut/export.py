"""Write a pruned model as a standard Hugging Face checkpoint plus a model card, atomically.

The output directory holds safetensors weights, config.json, the tokenizer files, `layercut.json`
(the machine-readable history of every layercut step applied since the base model) and
`README.md` (the model card). It is written to a temporary sibling directory and renamed into
place, so an interrupted run never leaves a half-written checkpoint, and an existing output is
only replaced with `overwrite=True`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from layercut import __version__
from layercut.errors import OutputExistsError, OutputLocationError
from layercut.finite import require_finite
from layercut.loading import PROVENANCE_FILE, LoadedModel, quiet_transformers_bars


def ensure_output_free(path: str | Path, overwrite: bool) -> Path:
    """Refuse early (before any work) when `path` exists and `overwrite` is off."""
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output '{out}' already exists; pass --overwrite to replace it or choose another path")
    return out


STAGING_MARK = ".tmp-"


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (where a new output would be created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_location(path: str | Path, needed_bytes: int = 0, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that cannot be created or has no room: the nearest existing
    folder must accept a new file (read-only mounts and permissions included) and its file system
    must have `needed_bytes` free, with 10% to spare."""
    out = Path(path).expanduser()
    parent = nearest_existing(out.parent)
    if not parent.is_dir():
        raise OutputLocationError(f"{flag} '{out}': '{parent}' is a file, not a folder; choose another path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".layercut-probe-", dir=parent)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputLocationError(f"{flag} '{out}' cannot be written ({exc.strerror or exc} in '{parent}'); "
                                  "choose a writable location") from None
    free = shutil.disk_usage(parent).free
    if needed_bytes and free < needed_bytes * 1.1:
        raise OutputLocationError(f"{flag} '{out}' needs about {needed_bytes / 2**20:,.0f} MiB but only "
                                  f"{free / 2**20:,.0f} MiB are free there; free some space or choose another path")
    return out


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, directory: bool) -> None:
    """Give a file or directory made by `tempfile` (0600 / 0700) the mode a plain open or mkdir
    would have given it under the user's umask, as `save_pretrained` does."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def follow_umask_tree(root: Path) -> None:
    """`follow_umask` for a directory and everything in it (some writers, safetensors' among them,
    create private temporary files and rename them)."""
    follow_umask(root, directory=True)
    for path in root.rglob("*"):
        follow_umask(path, directory=path.is_dir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(parent: Path, name: str) -> list[Path]:
    """Delete staging directories of `name` left in `parent` by layercut runs that were killed
    (their process is gone); return what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    for candidate in parent.glob(f".{name}{STAGING_MARK}*"):
        pid_text = candidate.name[len(f".{name}{STAGING_MARK}"):].split("-", 1)[0]
        if candidate.is_dir() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def make_staging_dir(target: Path) -> Path:
    """A fresh hidden sibling of `target` to write into; it carries this process id so that a later
    run can tell a killed run's leftovers from a live run's work and clean them up."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent, target.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}{os.getpid()}-", dir=target.parent))
    follow_umask(staging, directory=True)
    return staging


def atomic_replace_dir(staging: Path, out: Path) -> None:
    """Move a finished staging directory to `out`, replacing an old one only at the last moment."""
    if out.exists():
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, backup)
        os.replace(staging, out)
        if backup.is_dir():
            shutil.rmtree(backup)
        else:
            backup.unlink()
    else:
        os.replace(staging, out)


def write_text_atomic(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Write a small text file (JSON, markdown) through a temporary file and a rename."""
    target = ensure_output_free(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    follow_umask(Path(tmp), directory=False)
    os.replace(tmp, target)
    return target


def save_figure_atomic(figure: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG through a temporary file and a rename, then close it."""
    import matplotlib.pyplot as plt

    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(handle)
    figure.savefig(tmp, dpi=dpi)
    plt.close(figure)
    follow_umask(Path(tmp), directory=False)
    os.replace(tmp, target)
    return target


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel()
    return total


def base_model_of(loaded: LoadedModel) -> str:
    """The model the first recorded step started from (or this model's own source)."""
    return loaded.history[0].get("input_model", loaded.source) if loaded.history else loaded.source


def evaluation_lines(evaluations: list[dict[str, Any]]) -> list[str]:
    """The model card's "Evaluation" section: one block per `layercut eval` run on this checkpoint."""
    lines = ["## Evaluation", ""]
    for record in evaluations:
        against = f" (baseline: {record['baseline']})" if record.get("baseline") else ""
        lines.append(f"- {record['date']}{against}")
        ppl = record.get("perplexity")
        if ppl:
            base = f" (baseline {ppl['baseline']:.3f})" if ppl.get("baseline") is not None else ""
            lines.append(f"  - perplexity on {ppl['source']} ({ppl['windows']} x {ppl['seq_len']} tokens): "
                         f"{ppl['value']:.3f}{base}")
        for name, task in (record.get("tasks") or {}).items():
            base = f" (baseline {100 * task['baseline']:.1f})" if task.get("baseline") is not None else ""
            lines.append(f"  - {name} {task['metric']}: {100 * task['score']:.1f}{base}")
        if record.get("tasks"):
            lines.append(f"  - tasks: {record.get('num_fewshot') or 0}-shot, "
                         f"{'first ' + str(record['limit']) + ' items' if record.get('limit') else 'all items'}")
    return [*lines, ""]


def render_model_card(base_model: str, steps: list[dict[str, Any]], config: Any, num_params: int,
                      evaluations: list[dict[str, Any]] | None = None) -> str:
    """The README.md of an output: what was done to which model, with which data, and the scores."""
    lines = [
        "---",
        "library_name: transformers",
        "tags: [layercut, pruning]",
        "---",
        f"# Pruned from {base_model}",
        "",
        f"Made with layercut {__version__}. This is a standard `transformers` checkpoint: load it with",
        "`AutoModelForCausalLM.from_pretrained(this_dir)`; layercut is not needed to use it.",
        "",
        f"- architecture: `{config.model_type}`, {config.num_hidden_layers} decoder layers, "
        f"hidden size {config.hidden_size}",
        f"- parameters: {num_params:,}",
        "",
        "## Steps",
    ]
    for number, step in enumerate(steps, start=1):
        lines.append(f"### {number}. {step.get('command', 'step')}: {step.get('method', '')}")
        for key in ("input_model", "date", "summary"):
            if key in step:
                lines.append(f"- {key.replace('_', ' ')}: {step[key]}")
        for key in ("params", "calibration", "result"):
            if step.get(key):
                lines.append(f"- {key}:")
                lines.extend(f"  - `{k}`: {json.dumps(v) if not isinstance(v, str) else v}"
                             for k, v in step[key].items())
        if step.get("recipe"):
            lines += ["- recipe:", "", "```yaml", step["recipe"].rstrip(), "```"]
        lines.append("")
    if evaluations:
        lines += evaluation_lines(evaluations)
    lines += ["The full record of every step is in `layercut.json`.", ""]
    return "\n".join(lines)


def save_checkpoint(loaded: LoadedModel, out: str | Path, step: dict[str, Any], overwrite: bool = False,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Save `loaded.model` + tokenizer + provenance + model card to `out`, atomically.

    `step` describes what was just done (command, method, params, calibration, result); it is
    appended to the history the input model carried, so a chain of layercut runs is recorded whole.
    """
    target = ensure_output_free(out, overwrite)
    require_finite(loaded.model)
    step = {"input_model": loaded.source, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **step}
    steps = [*loaded.history, step]
    base_model = steps[0].get("input_model", loaded.source)
    staging = make_staging_dir(target)
    try:
        with quiet_transformers_bars():
            loaded.model.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
        record = {"layercut_version": __version__, "base_model": base_model, "steps": steps}
        (staging / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str))
        card = render_model_card(base_model, steps, loaded.model.config, count_parameters(loaded.model))
        (staging / "README.md").write_text(card)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        follow_umask_tree(staging)
        atomic_replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    loaded.history = steps
    return target
