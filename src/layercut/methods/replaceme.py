"""ReplaceMe (ALGORITHMS.md section 2): replace a span of blocks by one d x d linear map T
applied to the MLP output of the block before the span, then fold T into that block's
down-projection so the pruned model has no extra parameters.

`replaceme-lstsq` solves for T in closed form from sums one calibration pass keeps;
`replaceme-cosine` refines that solution with Adam on the cosine objective over kept token rows."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from layercut.adapters import ArchAdapter, family_name
from layercut.calibration.capture import LinearFitStats, calibrate, collect_fit, fit_memory_bytes
from layercut.calibration.selection import spans_to_blocks
from layercut.errors import UnsupportedArchitectureError
from layercut.linear import fold_right_matrix
from layercut.loading import LoadedModel
from layercut.methods.base import PruneOutcome, PruneRequest, register
from layercut.methods.settings import CosineSettings, ReplaceMeSettings
from layercut.methods.spans import place_spans, span_summary
from layercut.onload import materialize
from layercut.surgery import remove_blocks


FOLD_NEEDS_A_BLOCK = "ReplaceMe folds its map into the block before a span"


def solve_lstsq(gram: torch.Tensor, cross: torch.Tensor, alpha: float = 0.0) -> torch.Tensor:
    """T = (G + alpha I)^-1 C in float64, with G = sum M^T M and C = sum M^T (L - Y).

    Cholesky when G + alpha I is positive definite; otherwise the minimum-norm least-squares
    solution (SVD-based), which is what a singular G (fewer tokens than d) calls for.
    """
    g64 = gram.double() + alpha * torch.eye(gram.shape[0], dtype=torch.float64, device=gram.device)
    factor, info = torch.linalg.cholesky_ex(g64)
    if int(info) == 0:
        return torch.cholesky_solve(cross.double(), factor)
    return torch.linalg.lstsq(g64, cross.double(), driver="gelsd" if g64.device.type == "cpu" else None).solution


def fit_residual(gram: torch.Tensor, cross: torch.Tensor, target_sq: torch.Tensor | float,
                 transform: torch.Tensor) -> float:
    """||M T - R||^2 from the sums alone: sum R^2 - 2 tr(T^T C) + tr(T^T G T)."""
    t64 = transform.double()
    return float(target_sq - 2.0 * (t64 * cross.double()).sum() + (t64 * (gram.double() @ t64)).sum())


def cosine_loss(transform: torch.Tensor, mlp_out: torch.Tensor, attn_out: torch.Tensor, span_out: torch.Tensor,
                objective: str = "full") -> torch.Tensor:
    """Mean over rows of 1 - cos(M T + Y, L) ("full", ALGORITHMS.md) or 1 - cos(M T, L - Y)
    ("residual", as the reference code does)."""
    mapped = mlp_out @ transform
    if objective == "full":
        predicted, target = mapped + attn_out, span_out
    elif objective == "residual":
        predicted, target = mapped, span_out - attn_out
    else:
        raise ValueError(f"unknown cosine objective {objective}")
    return (1.0 - torch.nn.functional.cosine_similarity(predicted, target, dim=-1)).mean()


def fit_cosine(rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor], init: torch.Tensor, *, lr: float = 1e-4,
               epochs: int = 10, batch_tokens: int = 1024, objective: str = "full", seed: int = 0,
               progress: bool = True) -> torch.Tensor:
    """Minimise the cosine loss over token rows (M, Y, L) with Adam, starting from `init`."""
    mlp_out, attn_out, span_out = rows
    transform = init.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([transform], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    count = mlp_out.shape[0]
    bar = tqdm(range(epochs), desc="cosine fit", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_tokens):
            pick = order[start:start + batch_tokens]
            optimizer.zero_grad()
            loss = cosine_loss(transform, mlp_out[pick], attn_out[pick], span_out[pick], objective)
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.5f}")
    return transform.detach().double()


def fold_limit(adapter: ArchAdapter) -> str | None:
    """Why a ReplaceMe map cannot be folded in this family (from its adapter entry), or None."""
    if adapter.can_fold_linear:
        return None
    return (f"it normalises the MLP output ({adapter.mlp_post_norm}), so a ReplaceMe map cannot be folded into a "
            "linear layer; use --method angular (drop only) or streamline-layer for this model")


def fold_into_block(loaded: LoadedModel, block_index: int, transform: torch.Tensor) -> None:
    """Make block `block_index` output Y + M T by folding T into its MLP down-projection."""
    adapter = loaded.adapter
    limit = fold_limit(adapter)
    if limit:
        raise UnsupportedArchitectureError(f"{family_name(loaded.model.config.model_type)}: {limit}")
    block = adapter.blocks(loaded.model)[block_index]
    fold_right_matrix(adapter.down_proj(block), transform)


def replaceme(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest, settings: ReplaceMeSettings
              ) -> PruneOutcome:
    """Choose the span(s), fit one map per span (least squares, then the cosine refinement if asked),
    fold each map into the block before its span and remove the span."""
    span_len = request.cut // request.num_cuts
    min_start = max(1, 1 if request.min_start is None else request.min_start)
    cosine = isinstance(settings, CosineSettings)
    dim = loaded.model.config.hidden_size
    candidates = [request.start] if request.start is not None else \
        list(range(min_start, loaded.num_layers - span_len + 1))
    fold_blocks = [k - 1 for k in candidates if k >= 1]
    one_pass = not cosine and fit_memory_bytes(dim, len(fold_blocks)) <= settings.fit_memory_budget * 2**30
    calibration = calibrate(loaded, windows, request.batch_size, cut=span_len,
                            fold_blocks=fold_blocks if one_pass else (), fit_weighting=settings.fit_weighting,
                            progress=request.progress)
    massive = calibration.scan.massive_creators() if not settings.allow_massive_cut else []
    guards = request.guards(loaded.num_layers, massive, first_needed=FOLD_NEEDS_A_BLOCK)
    starts, protection = place_spans(loaded, calibration, request, guards, gap=1)
    transforms, details = {}, {"single_pass": one_pass, **protection, "cuts": []}
    for start in starts:
        fold_block = start - 1
        rows = None
        if one_pass:
            stats: LinearFitStats = calibration.fits[fold_block]
        else:
            keep_rows = settings.cosine_tokens if cosine else 0
            stats, rows = collect_fit(loaded, windows, fold_block, span_len, request.batch_size,
                                      keep_rows=keep_rows, seed=request.seed,
                                      fit_weighting=settings.fit_weighting, progress=request.progress)
        transform = solve_lstsq(stats.gram, stats.cross, settings.alpha)
        cut_info = {"start": start, "fold_block": fold_block, "tokens": int(stats.tokens),
                    "output_sq": float(stats.output_sq),
                    "lstsq_residual": fit_residual(stats.gram, stats.cross, stats.target_sq, transform),
                    "identity_residual": fit_residual(stats.gram, stats.cross, stats.target_sq,
                                                      torch.eye(dim, dtype=torch.float64))}
        if cosine:
            init = transform if settings.cosine_init == "lstsq" else torch.eye(dim, dtype=torch.float64)
            transform = fit_cosine(rows, init, lr=settings.cosine_lr, epochs=settings.cosine_epochs,
                                   batch_tokens=settings.cosine_batch_tokens, objective=settings.cosine_objective,
                                   seed=request.seed, progress=request.progress)
            cut_info["cosine_rows"] = int(rows[0].shape[0])
            cut_info["cosine_residual"] = fit_residual(stats.gram, stats.cross, stats.target_sq, transform)
        transforms[fold_block] = transform
        details["cuts"].append(cut_info)
    materialize(loaded, list(transforms))
    for fold_block, transform in transforms.items():
        fold_into_block(loaded, fold_block, transform)
    removed = remove_blocks(loaded, spans_to_blocks(starts, span_len))
    return PruneOutcome(request.method, removed, starts, span_len,
                        scores=span_summary(calibration, request.select, starts, span_len), details=details)


@register("replaceme-lstsq", ReplaceMeSettings, family_limit=fold_limit)
def replaceme_lstsq(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                    settings: ReplaceMeSettings) -> PruneOutcome:
    """ReplaceMe with the closed-form (ridge) least-squares map."""
    return replaceme(loaded, windows, request, settings)


@register("replaceme-cosine", CosineSettings, family_limit=fold_limit)
def replaceme_cosine(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                     settings: CosineSettings) -> PruneOutcome:
    """ReplaceMe with the map refined by the cosine objective (Adam, from the LS solution by default)."""
    return replaceme(loaded, windows, request, settings)
