"""Run several depth-pruning methods on one model, one calibration set and one evaluation suite.

Each method starts from a fresh copy of the dense model (so none sees another's edits), is timed,
then evaluated like the dense model (perplexity and tasks via `evaluation.suite`). The report is a
table of method x metric with retention against the dense model measured in the same run, as
markdown, JSON and a PNG chart.
"""

from __future__ import annotations

import copy
import datetime as _dt
import gc
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from layercut import __version__
from layercut.errors import LayercutError
from layercut.evaluation.logprobs import DEFAULT_LOGITS_MIB
from layercut.evaluation.report import compare as compare_tasks
from layercut.evaluation.report import format_number, format_percent, ratio, render_table
from layercut.evaluation.suite import ModelEvaluation, PerplexitySettings, evaluate_model
from layercut.evaluation.tasks import Task
from layercut.export import save_figure_atomic
from layercut.loading import LoadedModel
from layercut.prune import PruneRequest, prune


def fresh_copy(dense: LoadedModel) -> LoadedModel:
    """An independent copy of the dense model's weights sharing its tokenizer and adapter."""
    return LoadedModel(model=copy.deepcopy(dense.model), tokenizer=dense.tokenizer, adapter=dense.adapter,
                       source=dense.source, history=list(dense.history))


def method_label(method: str, granularity: str = "block") -> str:
    """How a method is named in the report: `angular`, or `angular:attn` for a sublayer cut."""
    return method if granularity == "block" else f"{method}:{granularity}"


def method_entry(request: PruneRequest, evaluation: ModelEvaluation | None, dense: ModelEvaluation,
                 outcome: Any = None, prune_seconds: float = 0.0, eval_seconds: float = 0.0,
                 error: str | None = None) -> dict[str, Any]:
    """One method's row of the report: what it removed, how long it took, its scores and retention."""
    entry: dict[str, Any] = {"method": method_label(request.method, request.granularity), "error": error,
                             "prune_seconds": round(prune_seconds, 2), "eval_seconds": round(eval_seconds, 2),
                             "request": request.to_dict()}
    if evaluation is None:
        return entry
    dense_ppl = dense.perplexity.perplexity if dense.perplexity else None
    ppl = evaluation.perplexity.perplexity if evaluation.perplexity else None
    entry.update({"removed": outcome.removed if outcome else [], "span_starts": outcome.span_starts if outcome else [],
                  "evaluation": evaluation.to_dict(), "comparison": compare_tasks(evaluation, dense),
                  "perplexity_ratio": ratio(ppl, dense_ppl),
                  "parameter_ratio": ratio(evaluation.parameters, dense.parameters),
                  "details": outcome.details if outcome else {}})
    return entry


def run_method(dense: LoadedModel, windows: torch.Tensor, request: PruneRequest, dense_eval: ModelEvaluation,
               tasks: Sequence[Task], ppl: PerplexitySettings | None, eval_batch_size: int,
               progress: bool = True, logits_mib: int = DEFAULT_LOGITS_MIB) -> dict[str, Any]:
    """Prune a fresh copy of `dense` with one method, evaluate it, and free it. A user-facing error
    (e.g. a method that does not support this architecture) is recorded in the row, not raised."""
    loaded = fresh_copy(dense)
    try:
        began = time.perf_counter()
        outcome = prune(loaded, windows, request)
        prune_seconds = time.perf_counter() - began
    except LayercutError as exc:
        return method_entry(request, None, dense_eval, error=str(exc))
    began = time.perf_counter()
    evaluation = evaluate_model(loaded, tasks, ppl, eval_batch_size, progress, logits_mib)
    evaluation.model = method_label(request.method, request.granularity)
    entry = method_entry(request, evaluation, dense_eval, outcome, prune_seconds, time.perf_counter() - began)
    del loaded
    gc.collect()
    return entry


def compare_methods(dense: LoadedModel, windows: torch.Tensor, requests: Sequence[PruneRequest],
                    tasks: Sequence[Task] = (), ppl: PerplexitySettings | None = None, eval_batch_size: int = 16,
                    settings: dict[str, Any] | None = None, progress: bool = True,
                    logits_mib: int = DEFAULT_LOGITS_MIB) -> dict[str, Any]:
    """Evaluate the dense model, then every method from its own fresh copy; returns the JSON report."""
    began = time.perf_counter()
    dense_eval = evaluate_model(dense, tasks, ppl, eval_batch_size, progress, logits_mib)
    dense_seconds = time.perf_counter() - began
    methods = [run_method(dense, windows, request, dense_eval, tasks, ppl, eval_batch_size, progress, logits_mib)
               for request in requests]
    return {"layercut_version": __version__,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings or {}, "dense": dense_eval.to_dict(), "dense_eval_seconds": round(dense_seconds, 2),
            "methods": methods}


def _ppl(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: dense first, then one row per method (scores in %, retention and stability vs dense)."""
    dense = report["dense"]
    task_names = list(dense["tasks"])
    header = ["method", "removed blocks", "layers", "params", "ppl", "ppl x dense",
              *[f"{name} (%)" for name in task_names]]
    if task_names:
        header += ["mean (%)", "retention (%)", "stability"]
    header.append("prune time (s)")

    def scores(evaluation: dict[str, Any]) -> list[str]:
        return [format_percent(evaluation["tasks"][name]["score"]) if name in evaluation["tasks"] else "" for name in task_names]

    dense_ppl = dense["perplexity"]["perplexity"] if dense["perplexity"] else None
    dense_mean = sum(t["score"] for t in dense["tasks"].values()) / len(task_names) if task_names else None
    dense_summary = [format_percent(dense_mean), "100.0", "1.000"] if task_names else []
    rows = [["dense", "", str(dense["layers"]), f"{dense['parameters'] / 1e6:.1f}M", _ppl(dense_ppl), "x1.00",
             *scores(dense), *dense_summary, ""]]
    for entry in report["methods"]:
        if entry["error"]:
            rows.append([entry["method"], f"failed: {entry['error']}", *[""] * (len(header) - 2)])
            continue
        evaluation = entry["evaluation"]
        ppl = evaluation["perplexity"]["perplexity"] if evaluation["perplexity"] else None
        mean = entry["comparison"]["mean"]
        rows.append([entry["method"], removed_label(entry), str(evaluation["layers"]),
                     f"{evaluation['parameters'] / 1e6:.1f}M", _ppl(ppl),
                     "" if entry["perplexity_ratio"] is None else f"x{entry['perplexity_ratio']:.2f}",
                     *scores(evaluation),
                     *([format_percent(mean.get("model")), format_percent(mean.get("retention")),
                        format_number(mean.get("stability"), 3)] if task_names else []),
                     f"{entry['prune_seconds']:.1f}"])
    return header, rows


def removed_label(entry: dict[str, Any]) -> str:
    """The blocks a method took out; a replaced span reads "11-18 -> 1 trained", a sublayer cut
    "attn of 6-7, 9"."""
    details = entry["details"]
    replaced = details.get("streamline", {}).get("replaced_blocks")
    if replaced:
        return f"{_blocks(replaced)} -> 1 trained"
    if details.get("removed_sublayers"):
        return f"{details['granularity']} of {_blocks(details['removed_sublayers'])}"
    return _blocks(entry["removed"])


def _blocks(indices: list[int]) -> str:
    """Block indices as compact ranges: [3, 4, 5, 9] -> "3-5, 9"."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def render_markdown(report: dict[str, Any], plot_name: str | None = None) -> str:
    """The --report document: settings, the method x metric table, notes, and the chart."""
    settings = report["settings"]
    header, rows = table(report)
    lines = ["# layercut compare", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items() if value not in (None, "", [])]
    lines += [f"- dense evaluation took {report['dense_eval_seconds']:.1f}s; date {report['date']}, "
              f"layercut {report['layercut_version']}", "",
              render_table(header, rows), "",
              "Removed blocks are indices of the dense model. streamline-* replace the span by one trained "
              "layer, so they keep one layer more than the blocks they cut. Retention = mean over tasks of "
              "pruned score / dense score. Stability = mean over multiple-choice tasks of LLM-Streamline's "
              "stability: how often the pruned model is right or wrong on the same questions as the dense "
              "model, weighted by the dense model's confidence (1.000 = the same answers).", ""]
    if plot_name:
        lines += [f"![compare]({plot_name})", ""]
    return "\n".join(lines)


def plot_compare(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: task retention (%) and perplexity ratio vs dense, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in report["methods"] if not e["error"]]
    names = [e["method"] for e in entries]
    panels = []
    if report["dense"]["tasks"]:
        panels.append(("task retention (%)", [100 * (e["comparison"]["mean"].get("retention") or 0) for e in entries]))
    if report["dense"]["perplexity"]:
        panels.append(("perplexity / dense", [e["perplexity_ratio"] or 0 for e in entries]))
    figure, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 + 2.5 * len(panels) + 0.4 * len(names), 4),
                                squeeze=False)
    for ax, (label, values) in zip(axes[0], panels):
        ax.bar(names, values, color=[f"C{i % 10}" for i in range(len(names))])
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    figure.tight_layout()
    return save_figure_atomic(figure, path)
