"""ReplaceMe: the least-squares map, the cosine fit, folding, and block removal, on tiny models
of every family, checked against direct computations on stacked activations."""

import copy

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.calibration.capture import calibrate, collect_fit, fit_rows, forward_blocks
from layercut.errors import ConfigError
from layercut.methods.replaceme import cosine_loss, fit_cosine, fit_residual, fold_into_block, solve_lstsq
from layercut.prune import PruneRequest, prune
from layercut.surgery import remove_blocks


def stacked_rows(loaded, windows, fold_block, cut):
    parts = [fit_rows(c, fold_block, cut) for c in forward_blocks(loaded, windows, 2, mlp_blocks={fold_block},
                                                                  progress=False)]
    return tuple(torch.cat([p[i] for p in parts]).double() for i in range(3))


def test_lstsq_equals_torch_lstsq_on_stacked_activations(family):
    loaded = tiny_loaded(family, num_layers=6)
    windows = random_windows(8, 24)  # 192 tokens > hidden size 64: well posed
    stats, _ = collect_fit(loaded, windows, fold_block=1, cut=3, batch_size=3, progress=False)
    mlp_out, attn_out, span_out = stacked_rows(loaded, windows, 1, 3)
    expected = torch.linalg.lstsq(mlp_out, span_out - attn_out).solution
    transform = solve_lstsq(stats.gram, stats.cross)
    assert torch.allclose(transform, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)
    direct_residual = float(((mlp_out @ transform - (span_out - attn_out)) ** 2).sum())
    assert fit_residual(stats.gram, stats.cross, stats.target_sq, transform) == pytest.approx(direct_residual, rel=1e-6)


def test_one_pass_fits_equal_second_pass():
    loaded = tiny_loaded("qwen2", num_layers=6)
    windows = random_windows(6, 16)
    calibration = calibrate(loaded, windows, 4, cut=2, fold_blocks=[0, 1, 2, 3], progress=False)
    for fold_block in (0, 3):
        second, _ = collect_fit(loaded, windows, fold_block, 2, batch_size=5, progress=False)
        assert torch.allclose(calibration.fits[fold_block].gram, second.gram, rtol=1e-9, atol=1e-9)
        assert torch.allclose(calibration.fits[fold_block].cross, second.cross, rtol=1e-9, atol=1e-9)


def test_ridge_and_singular_gram():
    torch.manual_seed(0)
    mlp_out = torch.randn(10, 16, dtype=torch.float64)   # fewer rows than columns: G is singular
    target = torch.randn(10, 16, dtype=torch.float64)
    gram, cross = mlp_out.T @ mlp_out, mlp_out.T @ target
    transform = solve_lstsq(gram, cross)
    assert torch.isfinite(transform).all()
    assert torch.allclose(mlp_out @ transform, mlp_out @ torch.linalg.pinv(mlp_out) @ target, atol=1e-8)
    ridge = solve_lstsq(gram, cross, alpha=0.5)
    assert torch.allclose(ridge, torch.linalg.solve(gram + 0.5 * torch.eye(16, dtype=torch.float64), cross))


def test_folded_block_outputs_y_plus_mt(family):
    loaded = tiny_loaded(family, num_layers=4)
    windows = random_windows(2, 10)
    torch.manual_seed(1)
    transform = torch.randn(64, 64, dtype=torch.float64) / 8
    mlp_out, attn_out, _ = stacked_rows(loaded, windows, 1, 1)
    fold_into_block(loaded, 1, transform)
    after = [c for c in forward_blocks(loaded, windows, 2, stop_after=1, progress=False)]
    block_out = torch.cat([c.hidden[2].reshape(-1, 64) for c in after]).double()
    assert torch.allclose(block_out, attn_out + mlp_out @ transform, atol=1e-4)


def test_identity_cut_equals_plain_drop(family):
    loaded = tiny_loaded(family, num_layers=6)
    dropped = copy.deepcopy(loaded)
    windows = random_windows(2, 12)
    fold_into_block(loaded, 1, torch.eye(64, dtype=torch.float64))
    remove_blocks(loaded, [2, 3])
    remove_blocks(dropped, [2, 3])
    with torch.no_grad():
        assert torch.allclose(loaded.model(windows).logits, dropped.model(windows).logits, atol=1e-5)
    assert loaded.model.config.num_hidden_layers == 4


def test_zero_cut_is_identity(tmp_path):
    loaded = tiny_loaded("llama", num_layers=4)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    outcome = prune(loaded, random_windows(2, 8), PruneRequest(method="replaceme-lstsq", cut=0, progress=False))
    assert outcome.removed == [] and loaded.num_layers == 4
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prune_lstsq_folds_and_removes_span():
    loaded = tiny_loaded("mistral", num_layers=6)
    reference = copy.deepcopy(loaded)
    windows = random_windows(8, 24)
    outcome = prune(loaded, windows, PruneRequest(method="replaceme-lstsq", cut=2, start=3, progress=False))
    assert outcome.removed == [3, 4] and loaded.num_layers == 4
    stats, _ = collect_fit(reference, windows, 2, 2, progress=False)
    expected = copy.deepcopy(reference)
    fold_into_block(expected, 2, solve_lstsq(stats.gram, stats.cross))
    remove_blocks(expected, [3, 4])
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), expected.model.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [b.self_attn.layer_idx for b in loaded.adapter.blocks(loaded.model)] == [0, 1, 2, 3]


def test_several_cuts_are_separated():
    loaded = tiny_loaded("llama", num_layers=10)
    outcome = prune(loaded, random_windows(4, 16),
                    PruneRequest(method="replaceme-lstsq", cut=4, num_cuts=2, progress=False))
    first, second = outcome.span_starts
    assert second - first >= 3 and first >= 1 and loaded.num_layers == 6
    assert len(outcome.details["cuts"]) == 2


def test_cosine_fit_lowers_cosine_loss():
    loaded = tiny_loaded("llama", num_layers=6)
    windows = random_windows(8, 24)
    stats, rows = collect_fit(loaded, windows, 1, 3, keep_rows=10_000, progress=False)
    assert rows is not None and rows[0].shape[0] == 192
    identity = torch.eye(64, dtype=torch.float64)
    fitted = fit_cosine(rows, identity, lr=1e-3, epochs=30, batch_tokens=64, progress=False)
    start = cosine_loss(identity.float(), *rows)
    assert float(cosine_loss(fitted.float(), *rows)) < float(start)
    residual = cosine_loss(identity.float(), *rows, objective="residual")
    assert torch.isfinite(residual)


def test_cosine_method_runs_deterministically():
    runs = []
    for _ in range(2):
        loaded = tiny_loaded("llama", num_layers=6)
        request = PruneRequest(method="replaceme-cosine", cut=2, options={"cosine_epochs": 2}, progress=False, seed=3)
        prune(loaded, random_windows(4, 16), request)
        runs.append(loaded.adapter.down_proj(loaded.adapter.blocks(loaded.model)[0]).weight.clone())
    assert torch.equal(runs[0], runs[1])


def test_bad_requests():
    loaded = tiny_loaded("llama", num_layers=4)
    with pytest.raises(ConfigError, match="out of range"):
        prune(loaded, random_windows(), PruneRequest(method="angular", cut=4))
    with pytest.raises(ConfigError, match="unknown method"):
        prune(loaded, random_windows(), PruneRequest(method="nope", cut=1))
    with pytest.raises(ConfigError, match="does not fit"):
        prune(loaded, random_windows(), PruneRequest(method="replaceme-lstsq", cut=2, start=3, progress=False))


def test_same_seed_same_pruned_weights():
    weights = []
    for _ in range(2):
        loaded = tiny_loaded("llama", num_layers=6)
        prune(loaded, random_windows(6, 16), PruneRequest(method="replaceme-lstsq", cut=2, progress=False))
        weights.append(loaded.model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_weighted_lstsq_equals_weighted_direct_solution():
    loaded = tiny_loaded("llama", num_layers=5)
    windows = random_windows(8, 24)
    stats, _ = collect_fit(loaded, windows, 0, 2, fit_weighting="unit-target", progress=False)
    mlp_out, attn_out, span_out = stacked_rows(loaded, windows, 0, 2)
    root = (1.0 / span_out.norm(dim=1)).unsqueeze(1)
    expected = torch.linalg.lstsq(mlp_out * root, (span_out - attn_out) * root).solution
    transform = solve_lstsq(stats.gram, stats.cross)
    assert torch.allclose(transform, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)


def test_request_record_holds_only_the_settings_the_method_uses():
    """The model card lists ReplaceMe's fit settings for ReplaceMe only, the cosine ones for cosine only."""
    cosine = PruneRequest(method="replaceme-cosine", cut=2).to_dict()
    lstsq = PruneRequest(method="replaceme-lstsq", cut=2).to_dict()
    drop = PruneRequest(method="streamline-ffn", cut=2).to_dict()
    assert cosine["cosine_epochs"] == 10 and cosine["alpha"] == 0.0 and "progress" not in cosine
    assert "cosine_epochs" not in lstsq and lstsq["fit_weighting"] == "none"
    assert not any(key.startswith(("cosine_", "fit_")) or key == "alpha" for key in drop)
    assert drop["method"] == "streamline-ffn" and drop["cut"] == 2
