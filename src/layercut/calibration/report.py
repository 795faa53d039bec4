"""Presenting a scan: a JSON record, a text table of the best spans, and a PNG heatmap."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from layercut.calibration.scores import SPAN_SCORES, ScanStats, redundancy
from layercut.export import save_figure_atomic


def scan_to_dict(stats: ScanStats) -> dict[str, Any]:
    """All scores as nested lists: span matrices indexed [start][n] (null where invalid)."""
    def clean(matrix: torch.Tensor) -> list[list[float | None]]:
        return [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]

    return {
        "num_layers": stats.num_layers,
        "tokens": int(stats.tokens),
        "samples": int(stats.samples),
        "block_influence": stats.block_influence().tolist(),
        "span_angular": clean(stats.span_angular()),
        "span_angular_last": clean(stats.span_angular_last()),
        "span_cosine": clean(stats.span_cosine()),
        "index": "span_*[k][n] compares X_k with X_{k+n}: the span of blocks k .. k+n-1",
    }


def best_spans(stats: ScanStats, span_len: int, score: str = "angular", top: int = 5) -> list[tuple[int, float]]:
    """The `top` most redundant spans of `span_len` blocks as (start, raw score)."""
    oriented = redundancy(stats, score)[:, span_len]
    raw, _ = SPAN_SCORES[score]
    values = raw(stats)[:, span_len]
    order = [k for k in torch.argsort(torch.nan_to_num(oriented, nan=float("inf"))).tolist()
             if not math.isnan(float(oriented[k]))]
    return [(k, float(values[k])) for k in order[:top]]


def render_scan_table(stats: ScanStats, span_lens: list[int], top: int = 5) -> str:
    """Per-block Block Influence, then the best spans per length by angular distance and cosine."""
    lines = ["block  BI", "-----  ------"]
    lines += [f"{k:5d}  {bi:.4f}" for k, bi in enumerate(stats.block_influence().tolist())]
    for span_len in span_lens:
        if span_len < 1 or span_len > stats.num_layers:
            continue
        lines.append("")
        lines.append(f"best spans of {span_len} block(s): start (blocks)  angular  cosine")
        cosine = stats.span_cosine()
        for start, angular in best_spans(stats, span_len, "angular", top):
            lines.append(f"  {start:3d} ({start}..{start + span_len - 1})  {angular:.4f}   "
                         f"{float(cosine[start, span_len]):.4f}")
    return "\n".join(lines)


def plot_scan(stats: ScanStats, path: str | Path) -> Path:
    """Heatmaps (start x n) of angular distance and cosine similarity, plus a BI bar chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(17, 5))
    for axis, (title, matrix) in zip(axes[:2], (("angular distance (lower = more redundant)", stats.span_angular()),
                                                 ("span cosine similarity (higher = more redundant)",
                                                  stats.span_cosine()))):
        image = axis.imshow(matrix[:stats.num_layers, 1:].numpy().T, origin="lower", aspect="auto",
                            extent=(-0.5, stats.num_layers - 0.5, 0.5, stats.num_layers + 0.5), cmap="viridis")
        axis.set_xlabel("first block of span (k)")
        axis.set_ylabel("span length (n)")
        axis.set_title(title)
        figure.colorbar(image, ax=axis)
    axes[2].bar(range(stats.num_layers), stats.block_influence().numpy())
    axes[2].set_xlabel("block")
    axes[2].set_ylabel("Block Influence (1 - cos)")
    axes[2].set_title("per-block influence (ShortGPT)")
    figure.suptitle(f"layercut scan: {int(stats.tokens)} calibration tokens")
    figure.tight_layout()
    return save_figure_atomic(figure, path)
