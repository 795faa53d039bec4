"""ReplaceMe through a post-MLP norm: each piece of math against a direct formula, and the fold
against the block it edits (tiny Gemma 2 / Gemma 3 models)."""

from __future__ import annotations

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.calibration.capture import first_tensor, forward_blocks
from layercut.methods.postnorm_fit import (direction_weights, effective_scale, fit_norm_scale, fit_through_norm,
                                           fold_through_norm, post_norm, rms_norm, scaled_targets,
                                           through_norm_loss)
from layercut.methods.replaceme import solve_lstsq

GEMMAS = ["gemma2", "gemma3"]


def _block_rows(loaded, windows, block_index, cut=0):
    """(M, h, L) of block `block_index` on the windows: MLP output before the norm, the attention
    half's output, and the output of block block_index + cut."""
    parts = []
    norm = post_norm(loaded, block_index)
    for capture in forward_blocks(loaded, windows, 2, mlp_blocks={block_index}, progress=False):
        mlp_out = capture.mlp[block_index].reshape(-1, 64)
        block_out = capture.hidden[block_index + 1].reshape(-1, 64)
        attn_out = block_out - first_tensor(norm(mlp_out))
        parts.append((mlp_out, attn_out, capture.hidden[block_index + 1 + cut].reshape(-1, 64)))
    return tuple(torch.cat([p[i] for p in parts]).double() for i in range(3))


@pytest.mark.parametrize("family", GEMMAS)
def test_rms_norm_matches_the_family_norm_module(family):
    loaded = tiny_loaded(family)
    norm = post_norm(loaded, 1)
    with torch.no_grad():
        norm.weight.normal_(0.0, 0.3)
    values = torch.randn(7, 64) * 5
    eps = loaded.model.config.rms_norm_eps
    direct = values / torch.sqrt(values.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + norm.weight)
    torch.testing.assert_close(rms_norm(values, effective_scale(loaded, 1).float(), eps), direct)
    torch.testing.assert_close(norm(values), direct.detach())


def test_scaled_targets_formula_and_identity_when_nothing_is_cut():
    torch.manual_seed(0)
    mlp_out = torch.randn(300, 16, dtype=torch.float64) * torch.rand(300, 1, dtype=torch.float64) * 4
    scale = 0.5 + torch.rand(16, dtype=torch.float64)
    target = torch.randn(300, 16, dtype=torch.float64)
    rms = torch.sqrt((mlp_out ** 2).mean(1, keepdim=True))
    torch.testing.assert_close(scaled_targets(mlp_out, target, scale), target / scale * rms)
    # r = the block's own normalised branch (no eps): the least-squares map is the identity.
    branch = rms_norm(mlp_out, scale, 0.0)
    zed = scaled_targets(mlp_out, branch, scale)
    transform = solve_lstsq(mlp_out.T @ mlp_out, mlp_out.T @ zed)
    torch.testing.assert_close(transform, torch.eye(16, dtype=torch.float64), atol=1e-9, rtol=0)


def test_direction_weighted_start_fits_each_token_direction_equally():
    torch.manual_seed(4)
    mlp_out = torch.randn(120, 8, dtype=torch.float64)
    zed = torch.randn(120, 8, dtype=torch.float64) * torch.logspace(0, 3, 120, dtype=torch.float64).unsqueeze(1)
    weight = direction_weights(zed)
    torch.testing.assert_close(weight, 1.0 / (zed ** 2).sum(1))
    weighted = mlp_out * weight.unsqueeze(1)
    transform = solve_lstsq(weighted.T @ mlp_out, weighted.T @ zed)
    root = weight.sqrt().unsqueeze(1)  # the same fit on rows scaled to unit-norm targets
    torch.testing.assert_close(transform, torch.linalg.lstsq(root * mlp_out, root * zed).solution)


def test_fit_norm_scale_equals_per_channel_least_squares():
    torch.manual_seed(1)
    normalized = torch.randn(200, 8, dtype=torch.float64)
    target = normalized * torch.linspace(0.5, 3.0, 8, dtype=torch.float64) + 0.3 * torch.randn(200, 8,
                                                                                              dtype=torch.float64)
    weight = torch.rand(200, dtype=torch.float64)
    scale = fit_norm_scale(normalized, target, weight)
    root = weight.sqrt().unsqueeze(1)
    for channel in range(8):
        column = (root * normalized[:, channel:channel + 1])
        expected = torch.linalg.lstsq(column, root[:, 0] * target[:, channel]).solution
        assert float(scale[channel]) == pytest.approx(float(expected[0]), rel=1e-10)
    assert torch.allclose(fit_norm_scale(normalized, target), fit_norm_scale(normalized, target, torch.ones(200)))


def test_through_norm_loss_direct_formulas():
    torch.manual_seed(2)
    rows = tuple(torch.randn(50, 16) for _ in range(3))
    transform, scale = torch.randn(16, 16), torch.rand(16) + 0.5
    mlp_out, attn_out, span_out = rows
    mapped = mlp_out @ transform
    predicted = attn_out + scale * mapped / torch.sqrt((mapped ** 2).mean(1, keepdim=True) + 1e-6)
    cos = (predicted * span_out).sum(1) / (predicted.norm(dim=1) * span_out.norm(dim=1))
    assert float(through_norm_loss(transform, scale, rows, 1e-6, "cosine")) == pytest.approx(
        float((1 - cos).mean()), rel=1e-5)
    relative = ((predicted - span_out) ** 2).sum(1) / (span_out ** 2).sum(1)
    assert float(through_norm_loss(transform, scale, rows, 1e-6, "mse")) == pytest.approx(
        float(relative.mean()), rel=1e-5)
    with pytest.raises(ValueError):
        through_norm_loss(transform, scale, rows, 1e-6, "l1")


@pytest.mark.parametrize("family", GEMMAS)
def test_identity_and_own_scale_reproduce_the_uncut_block(family):
    loaded = tiny_loaded(family)
    rows = _block_rows(loaded, random_windows(2, 10), 2)
    eps = loaded.model.config.rms_norm_eps
    loss = through_norm_loss(torch.eye(64, dtype=torch.float64), effective_scale(loaded, 2), rows, eps, "mse")
    assert float(loss) < 1e-10


@pytest.mark.parametrize("objective", ["cosine", "mse"])
def test_joint_fit_lowers_its_loss_and_can_freeze_the_scale(objective):
    loaded = tiny_loaded("gemma3")
    rows = _block_rows(loaded, random_windows(8, 16), 1, cut=2)
    eps = loaded.model.config.rms_norm_eps
    start = (torch.eye(64, dtype=torch.float64), effective_scale(loaded, 1))
    before = float(through_norm_loss(*start, rows, eps, objective))
    transform, scale = fit_through_norm(rows, *start, eps=eps, objective=objective, lr=1e-2, epochs=20,
                                        batch_tokens=32, progress=False)
    assert float(through_norm_loss(transform, scale, rows, eps, objective)) < 0.9 * before
    assert not torch.equal(scale, start[1])
    frozen_t, frozen_g = fit_through_norm(rows, *start, eps=eps, objective=objective, train_scale=False, lr=1e-2,
                                          epochs=2, batch_tokens=32, progress=False)
    assert torch.equal(frozen_g, start[1]) and not torch.equal(frozen_t, start[0])


@pytest.mark.parametrize("family", GEMMAS)
def test_fold_makes_the_block_output_h_plus_normed_mt(family):
    loaded = tiny_loaded(family, num_layers=4)
    windows = random_windows(2, 10)
    mlp_out, attn_out, _ = _block_rows(loaded, windows, 1)
    torch.manual_seed(3)
    transform = torch.eye(64, dtype=torch.float64) + torch.randn(64, 64, dtype=torch.float64) / 8
    scale = 0.5 + torch.rand(64, dtype=torch.float64)
    fold_through_norm(loaded, 1, transform, scale)
    after = [c for c in forward_blocks(loaded, windows, 2, stop_after=1, progress=False)]
    block_out = torch.cat([c.hidden[2].reshape(-1, 64) for c in after]).double()
    expected = attn_out + rms_norm(mlp_out @ transform, scale, loaded.model.config.rms_norm_eps)
    assert torch.allclose(block_out, expected, atol=1e-4)
    torch.testing.assert_close(effective_scale(loaded, 1), scale.float().double())
