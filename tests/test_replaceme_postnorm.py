"""ReplaceMe wired for families that normalise the MLP output (tiny Gemma 2 / Gemma 3): the
attention half the calibration pass sees, the one-pass sums against direct weighted least squares,
the post-norm defaults, and the pruned model reloaded in plain transformers."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_saved_reload_matches, random_windows, tiny_loaded
from layercut.calibration.capture import calibrate, collect_fit, fit_rows, forward_blocks
from layercut.errors import UnsupportedArchitectureError
from layercut.methods.postnorm_fit import direction_weights, post_norm, scaled_targets
from layercut.methods.replaceme import CosineSettings, block_post_norm, post_norm_settings, solve_lstsq
from layercut.prune import PruneRequest, prune

GEMMAS = ["gemma2", "gemma3"]


def _request(method: str, **options) -> PruneRequest:
    return PruneRequest(method=method, cut=2, start=2, options=options, progress=False, seed=1)


@pytest.mark.parametrize("family", GEMMAS)
def test_attention_half_excludes_the_normalised_mlp_branch(family):
    """Y = X_{j+1} - post_norm(M): the block's own norm module applied to M, not M itself."""
    loaded = tiny_loaded(family)
    norm = block_post_norm(loaded, 1)
    for capture in forward_blocks(loaded, random_windows(2, 12), 2, mlp_blocks={1}, progress=False):
        mlp_out, attn_out, _ = fit_rows(capture, 1, 2, norm)
        module = post_norm(loaded, 1)
        expected = capture.hidden[2].reshape(-1, 64) - module(capture.mlp[1].reshape(-1, 64))
        torch.testing.assert_close(attn_out, expected, rtol=1e-5, atol=1e-4)
        assert not torch.allclose(attn_out, capture.hidden[2].reshape(-1, 64) - mlp_out, atol=1e-2)


@pytest.mark.parametrize("family", GEMMAS)
def test_one_pass_sums_are_direction_weighted_lstsq_on_scaled_targets(family):
    loaded = tiny_loaded(family)
    windows = random_windows(8, 24)
    norm = block_post_norm(loaded, 1)
    calibration = calibrate(loaded, windows, 3, cut=2, fold_blocks=[1], post_norms={1: norm}, progress=False)
    stats, _ = collect_fit(loaded, windows, 1, 2, 3, post_norm=norm, progress=False)
    parts = [fit_rows(c, 1, 2, norm) for c in forward_blocks(loaded, windows, 2, mlp_blocks={1}, progress=False)]
    mlp_out, attn_out, span_out = (torch.cat([p[i] for p in parts]).double() for i in range(3))
    zed = scaled_targets(mlp_out, span_out - attn_out, norm.scale)
    root = direction_weights(zed).sqrt().unsqueeze(1)
    expected = torch.linalg.lstsq(mlp_out * root, zed * root).solution
    for sums in (calibration.fits[1], stats):
        transform = solve_lstsq(sums.gram, sums.cross)
        torch.testing.assert_close(transform, expected, atol=1e-6 * float(expected.abs().max()), rtol=1e-5)


def test_post_norm_defaults_replace_only_options_left_at_their_default():
    settings = post_norm_settings(CosineSettings(cosine_epochs=3))
    assert settings.cosine_epochs == 3
    assert (settings.cosine_lr, settings.cosine_batch_tokens, settings.cosine_init) == (1e-3, 256, "identity")


@pytest.mark.parametrize("family", GEMMAS)
@pytest.mark.parametrize("method", ["replaceme-lstsq", "replaceme-cosine"])
def test_pruned_post_norm_model_reloads_with_same_logits(tmp_path, family, method):

    loaded = tiny_loaded(family)
    windows = random_windows(10, 16)
    outcome = prune(loaded, windows, _request(method, cosine_epochs=3) if method.endswith("cosine")
                    else _request(method))
    assert outcome.details["folds"] == [{"block": 1, "map_folded_into": "mlp.down_proj",
                                         "norm_scale_refitted": "post_feedforward_layernorm"}]
    assert_saved_reload_matches(loaded, tmp_path / "out", windows, 4, method)


def _final_cosine_error(loaded, dense_final: torch.Tensor, windows: torch.Tensor) -> float:
    """Mean 1 - cos between the pruned model's last hidden state and the dense model's."""
    with torch.no_grad():
        final = loaded.model.base_model(input_ids=windows).last_hidden_state
    return float((1 - torch.nn.functional.cosine_similarity(final, dense_final, dim=-1)).mean())


@pytest.mark.parametrize("family", GEMMAS)
@pytest.mark.parametrize("method", ["replaceme-lstsq", "replaceme-cosine"])
def test_fit_beats_the_plain_drop_of_the_same_span_on_held_out_windows(family, method):
    calib, held_out = random_windows(16, 32, seed=0), random_windows(6, 32, seed=9)
    dense = tiny_loaded(family)
    with torch.no_grad():
        dense_final = dense.model.base_model(input_ids=held_out).last_hidden_state
    dropped = tiny_loaded(family)
    prune(dropped, calib, PruneRequest(method="angular", cut=2, start=2, progress=False))
    fitted = tiny_loaded(family)
    outcome = prune(fitted, calib, _request(method))
    cut = outcome.details["cuts"][0]
    assert cut["lstsq_residual"] < cut["identity_residual"]
    if method.endswith("cosine"):
        assert cut["cosine_loss"] < cut["identity_cosine_loss"]
    assert _final_cosine_error(fitted, dense_final, held_out) < _final_cosine_error(dropped, dense_final, held_out)


@pytest.mark.parametrize("option", [{"fit_weighting": "unit-target"}, {"cosine_objective": "residual"}])
def test_options_that_do_not_apply_through_the_norm_are_refused(option):
    loaded = tiny_loaded("gemma3")
    with pytest.raises(UnsupportedArchitectureError, match="does not work on gemma3 models: .* does not apply"):
        prune(loaded, random_windows(), _request("replaceme-cosine", **option))
