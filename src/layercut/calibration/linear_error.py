"""Linear-approximation error: how well the best linear map replaces a span (ReplaceMe's loss).

For the span of n blocks starting at block k, the fold block is j = k - 1 and the target is the
span's change R = L - Y (L = X_{k+n}, Y the attention output of block j). The score is the
relative residual of the least-squares map, min_T ||M_j T - R||^2 / ||R||^2, computed from the
sums G, C and ||R||^2 a calibration pass keeps: 0 means a linear map replaces the span exactly.
"""

from __future__ import annotations

import torch

from layercut.calibration.capture import Calibration, calibrate
from layercut.loading import LoadedModel
from layercut.methods.replaceme import fit_residual, solve_lstsq


def relative_lstsq_error(gram: torch.Tensor, cross: torch.Tensor, target_sq: torch.Tensor | float,
                         alpha: float = 0.0) -> float:
    """min_T ||M T - R||^2 / ||R||^2 from the sums G = M^T M, C = M^T R and ||R||^2."""
    transform = solve_lstsq(gram, cross, alpha)
    return max(fit_residual(gram, cross, target_sq, transform), 0.0) / max(float(target_sq), 1e-30)


def span_linear_errors(calibration: Calibration, num_layers: int, alpha: float = 0.0) -> list[float | None]:
    """Relative LS error per span start k (length `calibration.cut`); None where no fold block was kept
    (the span starting at block 0 has no block before it)."""
    cut = calibration.cut or 0
    errors: list[float | None] = [None] * (num_layers - cut + 1)
    for fold_block, stats in calibration.fits.items():
        errors[fold_block + 1] = relative_lstsq_error(stats.gram, stats.cross, stats.target_sq, alpha)
    return errors


def scan_linear_errors(loaded: LoadedModel, windows: torch.Tensor, cut: int, batch_size: int = 8,
                       progress: bool = True) -> tuple[Calibration, list[float | None]]:
    """One pass: scan statistics plus the linear error of every span of `cut` blocks that has a fold block."""
    fold_blocks = list(range(0, loaded.num_layers - cut))
    calibration = calibrate(loaded, windows, batch_size, cut=cut, fold_blocks=fold_blocks, progress=progress)
    return calibration, span_linear_errors(calibration, loaded.num_layers)


def render_linear_errors(errors: list[float | None], cut: int, top: int = 5) -> str:
    """The spans of `cut` blocks a linear map replaces best."""
    ranked = sorted((e, k) for k, e in enumerate(errors) if e is not None)[:top]
    lines = [f"best spans of {cut} block(s) by linear-approximation error (relative LS residual):"]
    lines += [f"  {k:3d} ({k}..{k + cut - 1})  {e:.4f}" for e, k in ranked]
    return "\n".join(lines)
