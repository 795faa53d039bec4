"""Compare a model with its baseline and write the result: a console/markdown table, JSON, a PNG.

Retention = model score / baseline score, per task and as the mean of the per-task retentions
(ALGORITHMS.md §6). Stability is LLM-Streamline's (see `stability.py`) on multiple-choice tasks.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from layercut import __version__
from layercut.evaluation.stability import choice_probabilities, stability
from layercut.evaluation.suite import ModelEvaluation
from layercut.evaluation.tasks import CHOICE
from layercut.evaluation.zeroshot import TaskResult
from layercut.export import save_figure_atomic


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is zero."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def task_stability(model: TaskResult, baseline: TaskResult) -> float | None:
    """Stability of `model` against `baseline` on one multiple-choice task (None for cloze tasks)."""
    if model.kind != CHOICE or model.items != baseline.items:
        return None
    dense_scores = [choice_probabilities(lls) for lls in baseline.choice_logprobs]
    return stability(dense_scores, baseline.correct, model.correct)


def compare(model: ModelEvaluation, baseline: ModelEvaluation | None) -> dict[str, Any]:
    """Per-task rows (score, baseline score, retention, stability) and their means."""
    rows = []
    for name, result in model.tasks.items():
        reference = baseline.tasks.get(name) if baseline else None
        rows.append({"task": name, "metric": result.metric, "model": result.score,
                     "baseline": reference.score if reference else None,
                     "retention": ratio(result.score, reference.score if reference else None),
                     "stability": task_stability(result, reference) if reference else None})
    mean: dict[str, Any] = {}
    if rows:
        mean["model"] = sum(row["model"] for row in rows) / len(rows)
        if baseline:
            mean["baseline"] = sum(row["baseline"] for row in rows) / len(rows)
            retained = [row["retention"] for row in rows if row["retention"] is not None]
            mean["retention"] = sum(retained) / len(retained) if retained else None
            stable = [row["stability"] for row in rows if row["stability"] is not None]
            mean["stability"] = sum(stable) / len(stable) if stable else None
    return {"tasks": rows, "mean": mean}


def build_report(model: ModelEvaluation, baseline: ModelEvaluation | None, settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON document of an evaluation run."""
    return {"layercut_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "model": model.to_dict(), "baseline": baseline.to_dict() if baseline else None,
            "comparison": compare(model, baseline)}


def format_percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def _times(value: float | None) -> str:
    return "" if value is None else f"x{value:.2f}"


def _ratio_percent(value: float | None) -> str:
    return "" if value is None else f"{format_percent(value)}%"


def _count(value: float | None) -> str:
    return "" if value is None else f"{value / 1e6:.1f}M"


def format_number(value: float | None, digits: int = 2) -> str:
    if value is None:
        return ""
    return f"{value:.3g}" if abs(value) >= 1e6 else f"{value:,.{digits}f}"


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table; with a baseline: dense | pruned | retention | stability."""
    model, baseline = report["model"], report["baseline"]
    comparison = report["comparison"]
    has_base = baseline is not None
    has_stability = has_base and any(r["stability"] is not None for r in comparison["tasks"])
    header = ["", "dense", "pruned", "pruned / dense"] if has_base else ["", "value"]
    header += ["stability"] if has_stability else []

    def row(label: str, base_value: str, value: str, change: str = "", stable: str = "") -> list[str]:
        cells = [label, base_value, value, change] if has_base else [label, value]
        return cells + [stable] if has_stability else cells

    rows = [row(f"{r['task']} ({r['metric']})", format_percent(r["baseline"]), format_percent(r["model"]),
                _ratio_percent(r["retention"]), format_number(r["stability"], 3))
            for r in comparison["tasks"]]
    mean = comparison["mean"]
    if len(comparison["tasks"]) > 1:
        rows.append(row("mean", format_percent(mean.get("baseline")), format_percent(mean.get("model")),
                        _ratio_percent(mean.get("retention")),
                        format_number(mean.get("stability"), 3)))
    for name, result in model["tasks"].items():
        if "perplexity" in result["metrics"]:
            base_ppl = baseline["tasks"][name]["metrics"]["perplexity"] if has_base else None
            rows.append(row(f"{name} perplexity", format_number(base_ppl), format_number(result["metrics"]["perplexity"]),
                            _ratio_percent(ratio(result["metrics"]["perplexity"], base_ppl))))
    if model["perplexity"]:
        ppl = model["perplexity"]
        base_ppl = baseline["perplexity"]["perplexity"] if has_base and baseline["perplexity"] else None
        rows.append(row(f"perplexity ({Path(ppl['source']).name})", format_number(base_ppl), format_number(ppl["perplexity"]),
                        _ratio_percent(ratio(ppl["perplexity"], base_ppl))))
    rows.append(row("parameters", _count(baseline["parameters"]) if has_base else "", _count(model["parameters"]),
                    _ratio_percent(ratio(model['parameters'], baseline['parameters'])) if has_base else ""))
    rows.append(row("layers", str(baseline["layers"]) if has_base else "", str(model["layers"])))
    for key, label in (("perplexity_tokens_per_second", "tok/s, perplexity pass*"),
                       ("task_tokens_per_second", "tok/s, task scoring*")):
        if model["speed"][key] is not None:
            base_speed = baseline["speed"][key] if has_base else None
            rows.append(row(label, format_number(base_speed, 0), format_number(model["speed"][key], 0)))
    return header, rows


SPEED_NOTE = ("* indicative: each model's speed comes from its own evaluation pass, run at another time; "
              "`layercut bench` measures speed-ups interleaved")


def render_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table padded to align in a terminal."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(cells)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def settings_lines(report: dict[str, Any]) -> list[str]:
    """What was measured and how, one fact per line."""
    settings, model, baseline = report["settings"], report["model"], report["baseline"]
    lines = [f"pruned model: {model['model']}" if baseline else f"model: {model['model']}"]
    if baseline:
        lines.append(f"dense model: {baseline['model']}")
    if model["perplexity"]:
        ppl = model["perplexity"]
        lines.append(f"perplexity: {ppl['source']}, {ppl['windows']} windows x {ppl['seq_len']} tokens "
                     f"({ppl['predicted_tokens']:,} predicted, BOS {'on' if ppl['bos'] else 'off'})")
    if model["tasks"]:
        limit = settings.get("limit")
        lines.append(f"tasks: {settings.get('num_fewshot', 0)}-shot, "
                     f"{'first ' + str(limit) + ' items' if limit else 'all items'}; scores in %")
    lines.append(f"device: {settings.get('device')}, dtype: {settings.get('dtype')}")
    return lines


def render_console(report: dict[str, Any]) -> str:
    header, rows = table_rows(report)
    return "\n".join([*settings_lines(report), "", render_table(header, rows), SPEED_NOTE])


def render_markdown(report: dict[str, Any], plot_name: str | None = None) -> str:
    """The --report document: settings, the table, and the chart when one was drawn."""
    header, rows = table_rows(report)
    lines = ["# layercut evaluation", "", *(f"- {line}" for line in settings_lines(report)),
             f"- date: {report['date']}, layercut {report['layercut_version']}", "",
             render_table(header, rows), "", SPEED_NOTE, ""]
    if plot_name:
        lines += [f"![scores]({plot_name})", ""]
    return "\n".join(lines)


def render_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def plot_report(report: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of per-task scores (dense next to pruned) and of perplexity, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, baseline = report["model"], report["baseline"]
    tasks = report["comparison"]["tasks"]
    panels = (1 if tasks else 0) + (1 if model["perplexity"] else 0)
    figure, axes = plt.subplots(1, max(panels, 1), figsize=(4 + 1.2 * len(tasks) + 3 * (panels > 1), 4),
                                squeeze=False, gridspec_kw={"width_ratios": [max(len(tasks), 1), 1][:max(panels, 1)]})
    width = 0.4 if baseline else 0.8
    names = ["dense", "pruned"] if baseline else ["model"]
    panel = 0
    if tasks:
        ax = axes[0][panel]
        positions = range(len(tasks))
        if baseline:
            ax.bar([p - width / 2 for p in positions], [100 * t["baseline"] for t in tasks], width, label=names[0])
        ax.bar([p + (width / 2 if baseline else 0) for p in positions], [100 * t["model"] for t in tasks], width,
               label=names[-1])
        ax.set_xticks(list(positions), [t["task"] for t in tasks], rotation=30, ha="right")
        ax.set_ylabel("score (%)")
        ax.legend()
        panel += 1
    if model["perplexity"]:
        ax = axes[0][panel]
        values = ([baseline["perplexity"]["perplexity"]] if baseline and baseline["perplexity"] else []) + \
            [model["perplexity"]["perplexity"]]
        ax.bar(names[-len(values):], values, color=["C0", "C1"][-len(values):])
        ax.set_ylabel("perplexity")
    figure.tight_layout()
    return save_figure_atomic(figure, path)


def card_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The compact record of one evaluation kept in a checkpoint's layercut.json and model card."""
    model, baseline = report["model"], report["baseline"]
    summary: dict[str, Any] = {"date": report["date"], "baseline": report["settings"].get("baseline")}
    if model["perplexity"]:
        ppl = model["perplexity"]
        summary["perplexity"] = {"source": ppl["source"], "value": round(ppl["perplexity"], 4),
                                 "windows": ppl["windows"], "seq_len": ppl["seq_len"],
                                 "baseline": round(baseline["perplexity"]["perplexity"], 4)
                                 if baseline and baseline["perplexity"] else None}
    if report["comparison"]["tasks"]:
        summary["tasks"] = {row["task"]: {"metric": row["metric"], "score": round(row["model"], 4),
                                          "baseline": None if row["baseline"] is None else round(row["baseline"], 4)}
                            for row in report["comparison"]["tasks"]}
        summary["limit"] = report["settings"].get("limit")
        summary["num_fewshot"] = report["settings"].get("num_fewshot")
    return summary


def record_in_checkpoint(spec: str, report: dict[str, Any]) -> Path | None:
    """Add an evaluation to a layercut checkpoint directory (its layercut.json and model card);
    plain checkpoints that layercut did not write are left untouched. Returns the directory."""
    from transformers import AutoConfig

    from layercut.export import render_model_card, write_text_atomic
    from layercut.loading import PROVENANCE_FILE

    directory = Path(spec).expanduser()
    provenance = directory / PROVENANCE_FILE
    if not provenance.is_file() or not os.access(directory, os.W_OK):
        return None
    record = json.loads(provenance.read_text())
    record.setdefault("evaluations", []).append(card_summary(report))
    config = AutoConfig.from_pretrained(directory)
    card = render_model_card(record.get("base_model", str(directory)), record.get("steps", []), config,
                             report["model"]["parameters"], record["evaluations"])
    write_text_atomic(provenance, json.dumps(record, indent=2, default=str))
    write_text_atomic(directory / "README.md", card)
    return directory
