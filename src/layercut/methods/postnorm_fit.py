"""ReplaceMe through a post-MLP norm (docs/ALGORITHMS-postnorm.md).

Families such as Gemma 2/3 end the MLP branch with an RMSNorm, so block j outputs
h + N(m) with N(m) = g * m / rms(m). A map T can still be folded into the down-projection, but
it now acts *before* the norm: the pruned block outputs h + g' * (m T) / rms(m T), where g' is the
norm's own per-channel scale, which can be refitted and exported as the norm's weight. Both stay
plain parameters of the checkpoint. This module holds the math: the least-squares start on
rescaled targets, the closed-form scale, and the joint fit of (T, g') through the norm.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from layercut.adapters import get_path
from layercut.linear import fold_right_matrix
from layercut.loading import LoadedModel

OBJECTIVES = ("cosine", "mse")

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def rms_norm(values: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """g * x / sqrt(mean(x^2) + eps) over the last dimension (the RMSNorm with effective scale g)."""
    return values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + eps) * scale


def scaled_targets(mlp_out: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Pre-norm targets z_t = (r_t / g) * rms(m_t) for the least-squares start.

    The norm maps z_t onto the direction of r_t (it divides out any per-token size and multiplies
    by g), and sizing z_t like m_t makes T = I the exact solution when r_t is the block's own
    normalised branch (nothing cut), so the least squares weighs tokens as the block already does.
    """
    rms = mlp_out.double().pow(2).mean(-1, keepdim=True).sqrt()
    return target.double() / scale.double() * rms


def direction_weights(zed: torch.Tensor) -> torch.Tensor:
    """Per-token least-squares weights 1 / ||z_t||^2: the norm discards each token's size, so the
    start should fit every token's direction equally rather than let the few massive-activation
    tokens (Gemma's BOS rows, tens of times the typical norm) dominate the squared error."""
    return 1.0 / zed.double().pow(2).sum(-1).clamp_min(1e-30)


def fit_norm_scale(normalized: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Per-channel scale g minimising sum_t w_t ||g * n_t - r_t||^2, in closed form:
    g_c = sum_t w_t n_tc r_tc / sum_t w_t n_tc^2, with n_t the unit-scale norm output x / rms(x)."""
    n64, r64 = normalized.double(), target.double()
    w64 = torch.ones(n64.shape[0], dtype=torch.float64) if weight is None else weight.double()
    w64 = w64.to(n64.device).unsqueeze(1)
    return (w64 * n64 * r64).sum(0) / (w64 * n64 * n64).sum(0).clamp_min(1e-30)


def through_norm_loss(transform: torch.Tensor, scale: torch.Tensor, rows: Rows, eps: float,
                      objective: str = "cosine") -> torch.Tensor:
    """Mean over token rows (M, Y, L) of the pruned block's error, h + N(M T) against L.

    "cosine": 1 - cos(h + N(M T), L). "mse": ||h + N(M T) - L||^2 / ||L||^2, relative per token so
    that the few tokens with massive activations do not dominate.
    """
    mlp_out, attn_out, span_out = rows
    predicted = attn_out + rms_norm(mlp_out @ transform, scale, eps)
    if objective == "cosine":
        return (1.0 - torch.nn.functional.cosine_similarity(predicted, span_out, dim=-1)).mean()
    if objective == "mse":
        return ((predicted - span_out).pow(2).sum(-1) / span_out.pow(2).sum(-1).clamp_min(1e-12)).mean()
    raise ValueError(f"unknown objective {objective}; use one of {', '.join(OBJECTIVES)}")


def fit_through_norm(rows: Rows, transform: torch.Tensor, scale: torch.Tensor, *, eps: float,
                     objective: str = "cosine", train_transform: bool = True, train_scale: bool = True,
                     lr: float = 1e-4, epochs: int = 10, batch_tokens: int = 1024, seed: int = 0,
                     progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Adam on `through_norm_loss` over the token rows, from (`transform`, `scale`); returns both (float64).

    The scale moves with the same learning rate relative to its size, so it gets `lr` times its
    mean magnitude (T from the least-squares start is near the identity, g is not)."""
    mlp_out, attn_out, span_out = (part.float() for part in rows)
    params = {"transform": transform.detach().float().clone().requires_grad_(train_transform),
              "scale": scale.detach().float().clone().requires_grad_(train_scale)}
    groups = []
    if train_transform:
        groups.append({"params": [params["transform"]], "lr": lr})
    if train_scale:
        groups.append({"params": [params["scale"]], "lr": lr * float(scale.abs().mean())})
    if not groups:
        return transform.double(), scale.double()
    optimizer = torch.optim.Adam(groups)
    generator = torch.Generator().manual_seed(seed)
    count = mlp_out.shape[0]
    bar = tqdm(range(epochs), desc=f"{objective} fit through norm", unit="epoch", disable=not progress)
    for _ in bar:
        order = torch.randperm(count, generator=generator)
        for start in range(0, count, batch_tokens):
            pick = order[start:start + batch_tokens]
            optimizer.zero_grad()
            loss = through_norm_loss(params["transform"], params["scale"],
                                     (mlp_out[pick], attn_out[pick], span_out[pick]), eps, objective)
            loss.backward()
            optimizer.step()
        bar.set_postfix(loss=f"{float(loss.detach()):.5f}")
    return params["transform"].detach().double(), params["scale"].detach().double()


def post_norm(loaded: LoadedModel, block_index: int) -> torch.nn.Module:
    """Block `block_index`'s post-MLP norm (the adapter's `mlp_post_norm`)."""
    adapter = loaded.adapter
    if adapter.mlp_post_norm is None:
        raise ValueError(f"{adapter.name} has no post-MLP norm")
    return get_path(adapter.blocks(loaded.model)[block_index], adapter.mlp_post_norm)


def effective_scale(loaded: LoadedModel, block_index: int) -> torch.Tensor:
    """The post-MLP norm's per-channel multiplier g (its weight plus the family's `norm_weight_offset`)."""
    return post_norm(loaded, block_index).weight.detach().double() + loaded.adapter.norm_weight_offset


def fold_through_norm(loaded: LoadedModel, block_index: int, transform: torch.Tensor, scale: torch.Tensor) -> None:
    """Make block `block_index` output h + N'(M T): T folded into the down-projection, and the
    post-MLP norm's weight set so that its multiplier is `scale`. No new parameters."""
    block = loaded.adapter.blocks(loaded.model)[block_index]
    fold_right_matrix(loaded.adapter.down_proj(block), transform)
    weight = post_norm(loaded, block_index).weight
    with torch.no_grad():
        weight.copy_((scale.double() - loaded.adapter.norm_weight_offset).to(weight.dtype))
