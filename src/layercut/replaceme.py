"""ReplaceMe (ALGORITHMS.md section 2): replace a span of blocks by one d x d linear map T
applied to the MLP output of the block before the span, then fold T into that block's
down-projection so the pruned model has no extra parameters."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from layercut.errors import UnsupportedArchitectureError
from layercut.linear import fold_right_matrix
from layercut.loading import LoadedModel


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


def fold_into_block(loaded: LoadedModel, block_index: int, transform: torch.Tensor) -> None:
    """Make block `block_index` output Y + M T by folding T into its MLP down-projection."""
    adapter = loaded.adapter
    if not adapter.can_fold_linear:
        raise UnsupportedArchitectureError(
            f"{adapter.name} normalises the MLP output ({adapter.mlp_post_norm}), so a ReplaceMe map cannot be "
            "folded into a linear layer; use --method angular (drop only) or streamline-layer for this model")
    block = adapter.blocks(loaded.model)[block_index]
    fold_right_matrix(adapter.down_proj(block), transform)
