"""The training log of healing (one JSON record per optimizer step) and its loss-curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(json.dumps(record) + "\n")


def plot_loss_curve(records: list[dict], path: Path, title: str) -> Path:
    """A PNG of the training cross-entropy per step (the next-token part of the loss, so it compares
    with the held-out loss even when distilling), with held-out ln perplexity where it was measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in records], [r["ce"] for r in records], label="training cross-entropy", linewidth=1)
    evals = [r for r in records if "eval_ppl" in r]
    if evals:
        axes.plot([r["step"] for r in evals], [math.log(r["eval_ppl"]) for r in evals], "o-",
                  label="held-out loss (ln ppl)")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats / token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
