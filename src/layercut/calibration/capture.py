"""Calibration passes: run the decoder blocks over calibration windows and reduce what the
methods need on the fly (no full activation store).

Hooks on the blocks give X_k (block inputs/outputs) and on the MLPs give M_j. The LM head never
runs, and a pass can stop right after the last block it needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from layercut.calibration.scores import ScanStats
from layercut.distributed import all_reduce_sum, rank_and_world, shard_windows
from layercut.loading import LoadedModel


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the last needed block has run."""


@dataclass
class BlockCapture:
    """One batch: `hidden[k]` = X_k for k = 0 .. last captured; `mlp[j]` = M_j; `mask` [B, T]."""

    hidden: list[torch.Tensor]
    mlp: dict[int, torch.Tensor]
    mask: torch.Tensor


def first_tensor(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[index,return-value]


@contextmanager
def _hooks(loaded: LoadedModel, hidden: list, mlp: dict, mlp_blocks: Collection[int], stop_after: int | None):
    blocks = loaded.adapter.blocks(loaded.model)
    handles = []
    # With an accelerate device_map the blocks may sit on several devices: keep every capture on one.
    device = loaded.device

    def grab_input(_module, args, kwargs):
        hidden.append((args[0] if args else kwargs["hidden_states"]).to(device))

    handles.append(blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True))
    for index, block in enumerate(blocks):
        def grab_output(_module, _args, output, index=index):
            hidden.append(first_tensor(output).to(device))
            if stop_after is not None and index >= stop_after:
                raise _StopForward
        handles.append(block.register_forward_hook(grab_output))
        if index in mlp_blocks:
            def grab_mlp(_module, _args, output, index=index):
                mlp[index] = first_tensor(output).to(device)
            handles.append(loaded.adapter.mlp_module(block).register_forward_hook(grab_mlp))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_blocks(loaded: LoadedModel, windows: torch.Tensor, batch_size: int, *,
                   mlp_blocks: Collection[int] = (), stop_after: int | None = None,
                   desc: str = "calibration", progress: bool = True) -> Iterator[BlockCapture]:
    """Yield the block inputs/outputs (and chosen MLP outputs) of each batch of `windows`.

    Runs the model's decoder only (no LM head); with `stop_after=j` the pass ends after block j.
    An onloaded model (`loaded.onload`) runs block by block from disk instead.
    """
    if loaded.onload is not None:
        yield from loaded.onload.forward_blocks(loaded, windows, batch_size, mlp_blocks=mlp_blocks,
                                                stop_after=stop_after, desc=desc, progress=progress)
        return
    base = loaded.model.base_model
    device = loaded.device
    rank, _ = rank_and_world()
    with torch.inference_mode():
        for start in tqdm(range(0, windows.shape[0], batch_size), desc=desc, unit="batch",
                          disable=not progress or rank != 0):
            batch = windows[start:start + batch_size].to(device)
            mask = torch.ones_like(batch)
            hidden: list[torch.Tensor] = []
            mlp: dict[int, torch.Tensor] = {}
            with _hooks(loaded, hidden, mlp, mlp_blocks, stop_after):
                try:
                    base(input_ids=batch, attention_mask=mask, use_cache=False)
                except _StopForward:
                    pass
            yield BlockCapture(hidden=hidden, mlp=mlp, mask=mask)


@dataclass
class LinearFitStats:
    """Float64 sums for ReplaceMe's least squares at one fold block j and cut length n:
    G = sum M^T M, C = sum M^T (L - Y), sum ||L - Y||^2 (for the fit's residual) and sum ||L||^2
    (to express the residual relative to the span's output)."""

    gram: torch.Tensor
    cross: torch.Tensor
    target_sq: torch.Tensor
    tokens: torch.Tensor
    output_sq: torch.Tensor

    @classmethod
    def empty(cls, dim: int) -> "LinearFitStats":
        zeros = torch.zeros((dim, dim), dtype=torch.float64)
        scalar = lambda: torch.zeros((), dtype=torch.float64)  # noqa: E731
        return cls(zeros, zeros.clone(), scalar(), scalar(), scalar())

    def update(self, mlp_out: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
               span_out: torch.Tensor | None = None) -> None:
        """Add token rows: `mlp_out` = M [N, d], `target` = L - Y [N, d], optional per-row weights [N],
        and the span output L itself for the relative error."""
        m64, t64 = mlp_out.double(), target.double()
        weighted = m64 if weight is None else m64 * weight.double().unsqueeze(1)
        self.gram += (weighted.T @ m64).cpu()
        self.cross += (weighted.T @ t64).cpu()
        row_sq = (t64 * t64).sum(1)
        self.target_sq += float(row_sq.sum() if weight is None else (row_sq * weight.double()).sum())
        self.tokens += float(m64.shape[0])
        if span_out is not None:
            out_sq = span_out.double().pow(2).sum(1)
            self.output_sq += float(out_sq.sum() if weight is None else (out_sq * weight.double()).sum())

    def all_reduce(self) -> None:
        all_reduce_sum([self.gram, self.cross, self.target_sq, self.tokens, self.output_sq])


def real_token_rows(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [N, d] rows of the real (non-pad) tokens; a view when nothing is padded."""
    rows = tensor.reshape(-1, tensor.shape[-1])
    keep = mask.bool().reshape(-1)
    return rows if bool(keep.all()) else rows[keep.to(rows.device)]


def fit_rows(capture: BlockCapture, fold_block: int, cut: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows (M, Y, L) for cutting blocks fold_block+1 .. fold_block+cut, pads removed.

    M = M_j, Y = X_{j+1} - M_j (the attention half's output), L = X_{j+1+cut} (the span's output).
    """
    mlp_out = real_token_rows(capture.mlp[fold_block], capture.mask)
    attn_out = real_token_rows(capture.hidden[fold_block + 1], capture.mask) - mlp_out
    span_out = real_token_rows(capture.hidden[fold_block + 1 + cut], capture.mask)
    return mlp_out, attn_out, span_out




def fit_weights(span_out: torch.Tensor, weighting: str) -> torch.Tensor | None:
    """Per-token weights of the least-squares fit.

    "none" is plain least squares. "unit-target" weights each token by 1 / ||L_t||^2, i.e. fits
    every token's output direction equally: without it, the few tokens with massive activations
    (attention-sink positions, hundreds of times the typical norm) dominate the squared error.
    """
    if weighting == "none":
        return None
    if weighting == "unit-target":
        return 1.0 / span_out.double().pow(2).sum(1).clamp_min(1e-12)
    raise ValueError(f"unknown fit weighting {weighting}")


@dataclass
class Calibration:
    """What one calibration pass produced: span scores and, when asked, LS sums per fold block."""

    scan: ScanStats
    fits: dict[int, LinearFitStats] = field(default_factory=dict)
    cut: int | None = None


def fit_memory_bytes(dim: int, candidates: int) -> int:
    """Bytes the LS sums of `candidates` fold blocks take (two float64 d x d matrices each)."""
    return candidates * 2 * dim * dim * 8


def calibrate(loaded: LoadedModel, windows: torch.Tensor, batch_size: int = 8, *, cut: int | None = None,
              fold_blocks: Collection[int] = (), fit_weighting: str = "none", progress: bool = True) -> Calibration:
    """One pass: scan statistics for every span and, for each fold block j in `fold_blocks`, the LS
    sums of replacing blocks j+1 .. j+cut. Each torch.distributed rank reads its shard of the
    windows and the sums are all-reduced, so every rank ends with the same result."""
    num_layers = loaded.num_layers
    scan = ScanStats.empty(num_layers)
    dim = loaded.model.config.hidden_size
    fits = {j: LinearFitStats.empty(dim) for j in fold_blocks}
    for capture in forward_blocks(loaded, shard_windows(windows), batch_size, mlp_blocks=set(fits),
                                  desc="scan", progress=progress):
        scan.update(capture.hidden, capture.mask)
        for j, stats in fits.items():
            mlp_out, attn_out, span_out = fit_rows(capture, j, cut)  # type: ignore[arg-type]
            stats.update(mlp_out, span_out - attn_out, fit_weights(span_out, fit_weighting), span_out)
    scan.all_reduce()
    for stats in fits.values():
        stats.all_reduce()
    return Calibration(scan=scan, fits=fits, cut=cut)


def collect_fit(loaded: LoadedModel, windows: torch.Tensor, fold_block: int, cut: int, batch_size: int = 8, *,
                keep_rows: int = 0, seed: int = 0, fit_weighting: str = "none", progress: bool = True
                ) -> tuple[LinearFitStats, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """A second pass for one cut that stops after the span's last block: the LS sums, plus (when
    `keep_rows` > 0) a seeded subsample of about `keep_rows` token rows (M, Y, L) for the cosine fit."""
    stats = LinearFitStats.empty(loaded.model.config.hidden_size)
    shard = shard_windows(windows)
    total_tokens = shard.numel()
    generator = torch.Generator().manual_seed(seed)
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for capture in forward_blocks(loaded, shard, batch_size, mlp_blocks={fold_block},
                                  stop_after=fold_block + cut, desc="fit", progress=progress):
        mlp_out, attn_out, span_out = fit_rows(capture, fold_block, cut)
        stats.update(mlp_out, span_out - attn_out, fit_weights(span_out, fit_weighting), span_out)
        if keep_rows > 0:
            take = torch.rand(mlp_out.shape[0], generator=generator) < keep_rows / total_tokens
            take = take.to(mlp_out.device)
            kept.append((mlp_out[take].float().cpu(), attn_out[take].float().cpu(), span_out[take].float().cpu()))
    stats.all_reduce()
    rows = None
    if kept:
        rows = tuple(torch.cat([part[i] for part in kept]) for i in range(3))  # type: ignore[assignment]
    return stats, rows
