"""The report of a shrink run, drawn from its state record (the dict `shrink_state.json` holds):
`report.md` (target, candidates, choice, healing, evaluation, time) and `report.png` (the candidates'
size vs held-out perplexity, and the healing curve)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from layercut.data import as_sources
from layercut.export import save_figure_atomic, write_text_atomic
from layercut.shrink_candidates import METHODS, candidate_name

REPORT_MD = "report.md"
REPORT_PNG = "report.png"


def rank_agreement(first: list[float], second: list[float]) -> float:
    """Spearman's rank correlation (no ties expected): how well one ordering predicts another."""
    count = len(first)
    if count < 2:
        return 1.0
    ranks = [torch.tensor(values, dtype=torch.float64).argsort().argsort().double() for values in (first, second)]
    return float(1.0 - 6.0 * ((ranks[0] - ranks[1]) ** 2).sum() / (count * (count * count - 1)))


def read_log(path: str | None) -> list[dict[str, Any]]:
    """The healing log records (one per optimizer step), or none."""
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _name(candidate: dict[str, Any]) -> str:
    return candidate_name(candidate["method"], candidate["start"], candidate["cut"])


def _predicted(candidate: dict[str, Any]) -> str:
    return "trained" if candidate["predicted"] is None else f"{candidate['predicted']:.4f}"


def render_markdown(state: dict[str, Any]) -> str:
    settings, dense, chosen, final = state["settings"], state["dense"], state["chosen"] or {}, state["final"] or {}
    target, calib = settings["target"], as_sources(settings["calib"])
    lines = [f"# layercut shrink of {settings['model']}", "",
             f"- target: {target['kind']} = {target['value']:g}; {state['cut']} of {dense.get('layers')} blocks cut",
             f"- calibration: {settings['samples']} windows x {settings['seq_len']} tokens of `{', '.join(calib)}`; "
             f"held-out check: {settings['heldout']} other windows of the same text",
             "- predicted quality: relative residual ||M T + Y - L||^2 / ||L||^2 of the span output "
             "(T = I for a plain drop, the least-squares map for ReplaceMe); the Streamline candidate (one "
             "trained layer for the span of highest cosine, one block longer) is trained, not predicted", "",
             "## Candidates checked on held-out text", "",
             "| candidate | predicted residual | held-out ppl | x dense |", "|---|---:|---:|---:|"]
    for candidate in sorted(state["checked"], key=lambda c: (c["predicted"] is None, c["predicted"] or 0.0)):
        mark = " (chosen)" if chosen and _name(candidate) == _name(chosen) else ""
        lines.append(f"| {_name(candidate)}{mark} | {_predicted(candidate)} | {candidate['heldout_ppl']:.2f} "
                     f"| {candidate['heldout_ppl'] / dense['heldout_ppl']:.2f} |")
    predicted = [c for c in state["checked"] if c["predicted"] is not None]
    if len(predicted) > 1:
        agreement = rank_agreement([c["predicted"] for c in predicted], [c["heldout_ppl"] for c in predicted])
        lines += ["", f"Rank agreement (Spearman) of predicted residual and held-out perplexity: {agreement:.2f}"]
    lines += ["", f"Dense held-out perplexity: {dense['heldout_ppl']:.2f}. Best five of all "
              f"{len(state['candidates'])} scored candidates: "
              + ", ".join(f"{_name(c)} ({_predicted(c)})" for c in state['candidates'][:5]), ""]
    heal = state["heal"] or {}
    lines += ["## Healing", ""]
    if "skipped" in heal:
        lines.append(f"Skipped: {heal['skipped']}.")
    elif heal:
        lines.append(f"{heal['mode']}, {heal['steps']} steps, {heal['tokens']:,} tokens in {heal['train_seconds']:.0f} s "
                     f"({heal['tokens_per_second']:.0f} tokens/s); teacher: {heal.get('teacher') or 'none'}; "
                     f"text: {', '.join(settings['heal_data'] or calib)}")
    lines += ["", "## Result", ""]
    if final:
        lines.append(f"- model: `model/`, {final['layers']} layers, {final['params']:,} parameters "
                     f"({final['params'] / dense['params']:.3f} of dense)")
        lines.append(f"- held-out perplexity: dense {dense['heldout_ppl']:.2f}, chosen cut "
                     f"{chosen.get('heldout_ppl', float('nan')):.2f}, final {final['heldout_ppl']:.2f} "
                     "(when healing read the calibration text, it saw these windows too)")
        if final.get("text"):
            text, dense_text = final["text"], dense["text"]
            lines.append(f"- perplexity on `{settings['ppl']}` ({text['windows']} windows of {text['seq_len']} "
                         f"tokens): dense {dense_text['ppl']:.2f}, final {text['ppl']:.2f} "
                         f"({text['ppl'] / dense_text['ppl']:.2f}x)")
    lines += ["- wall seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in state['seconds'].items())
              + f" (total {sum(state['seconds'].values()):.0f}, budget {settings['budget_minutes'] * 60:.0f})", ""]
    return "\n".join(lines)


def plot_report(state: dict[str, Any], path: Path) -> Path:
    """Left: parameters kept vs held-out perplexity of the dense model, every checked candidate and the
    final model. Right: the healing curve (training cross-entropy and KL per token seen)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    frontier, curve = figure.subplots(1, 2)
    dense = state["dense"]
    frontier.scatter([1.0], [dense["heldout_ppl"]], marker="*", s=120, color="black", label="dense")
    for method, marker in zip(METHODS, ("x", "o", "s"), strict=True):
        points = [c for c in state["checked"] if c["method"] == method]
        if points:
            frontier.scatter([c["params"] / dense["params"] for c in points], [c["heldout_ppl"] for c in points],
                             marker=marker, label=f"{method} (checked)")
    if state["final"]:
        frontier.scatter([state["final"]["params"] / dense["params"]], [state["final"]["heldout_ppl"]], marker="D",
                         color="green", label="final (healed)")
    frontier.set_yscale("log")
    frontier.set_xlabel("parameters kept (fraction of dense)")
    frontier.set_ylabel("held-out perplexity")
    frontier.set_title("candidates: size vs quality")
    frontier.grid(alpha=0.3)
    frontier.legend(fontsize=8)
    log = read_log((state["heal"] or {}).get("log"))
    if log:
        curve.plot([r["tokens"] for r in log], [r["ce"] for r in log], linewidth=1, label="cross-entropy")
        if "kl" in log[0]:
            curve.plot([r["tokens"] for r in log], [r["kl"] for r in log], linewidth=1, label="KL to dense")
        curve.legend(fontsize=8)
    else:
        curve.text(0.5, 0.5, "no healing", ha="center", va="center", transform=curve.transAxes)
    curve.set_xlabel("training tokens")
    curve.set_ylabel("nats / token")
    curve.set_title("healing")
    curve.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure_atomic(figure, path)


def write_report(out: Path, state: dict[str, Any]) -> tuple[Path, Path]:
    return (write_text_atomic(out / REPORT_MD, render_markdown(state)), plot_report(state, out / REPORT_PNG))
