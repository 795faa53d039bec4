"""Scan scores against direct per-token formulas on random tensors and on a tiny model."""

import math

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.calibration.capture import calibrate
from layercut.calibration.scores import ScanStats, angular_distance, cosine_rows, last_token_index
from layercut.calibration.selection import choose_spans, lowest_scores


def test_cosine_and_angular_match_formulas():
    a, b = torch.randn(50, 8), torch.randn(50, 8)
    cos = torch.tensor([float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(50)], dtype=torch.float64)
    assert torch.allclose(cosine_rows(a, b), cos, atol=1e-6)
    assert torch.allclose(angular_distance(a, b), torch.arccos(cos) / math.pi, atol=1e-6)
    assert float(angular_distance(a, a).max()) < 1e-3 and float(angular_distance(a, -a).min()) > 0.999


def test_scan_stats_match_direct_computation():
    torch.manual_seed(0)
    hidden = [torch.randn(3, 7, 16) for _ in range(6)]
    mask = torch.ones(3, 7)
    mask[1, 5:] = 0
    stats = ScanStats.empty(5)
    stats.update(hidden, mask)
    keep = mask.bool()
    last = last_token_index(mask)
    assert last.tolist() == [6, 4, 6]
    for k in range(5):
        for n in range(1, 6 - k):
            cos = cosine_rows(hidden[k][keep], hidden[k + n][keep])
            assert stats.span_cosine()[k, n] == pytest.approx(float(cos.mean()), abs=1e-5)
            assert stats.span_angular()[k, n] == pytest.approx(float((torch.arccos(cos) / math.pi).mean()), abs=1e-5)
            rows = torch.arange(3)
            ang_last = angular_distance(hidden[k][rows, last], hidden[k + n][rows, last])
            assert stats.span_angular_last()[k, n] == pytest.approx(float(ang_last.mean()), abs=1e-5)
    assert math.isnan(float(stats.span_angular()[3, 3]))
    bi = 1 - torch.stack([cosine_rows(hidden[k][keep], hidden[k + 1][keep]).mean() for k in range(5)])
    assert torch.allclose(stats.block_influence(), bi, atol=1e-5)


def test_calibrate_matches_output_hidden_states():
    loaded = tiny_loaded("llama", num_layers=4)
    windows = random_windows(4, 12)
    stats = calibrate(loaded, windows, batch_size=3, progress=False).scan
    with torch.no_grad():
        states = loaded.model(windows, output_hidden_states=True).hidden_states
    # hidden_states[-1] has the final norm applied in transformers; compare spans ending before it.
    for k in range(3):
        for n in range(1, 4 - k):
            cos = cosine_rows(states[k].reshape(-1, 64), states[k + n].reshape(-1, 64)).mean()
            assert stats.span_cosine()[k, n] == pytest.approx(float(cos), abs=1e-5)
    assert stats.tokens == 48 and stats.samples == 4


def test_choose_spans_respects_gap_and_min_start():
    scores = torch.full((9, 9), float("nan"))
    for k in range(8):
        for n in range(1, 9 - k):
            scores[k, n] = float(abs(k - 4))
    assert choose_spans(scores, 2, 1, min_start=0) == [4]
    assert choose_spans(scores, 2, 2, min_start=1, gap=1) == [1, 4]
    assert choose_spans(scores, 2, 2, min_start=1, gap=0) == [3, 5] or choose_spans(scores, 2, 2, 1, 0) == [2, 4]
    from layercut.errors import ConfigError
    with pytest.raises(ConfigError, match="non-overlapping"):
        choose_spans(scores, 4, 3, min_start=0)


def test_lowest_scores_never_picks_kept():
    assert lowest_scores(torch.tensor([0.1, 0.5, 0.05, 0.3]), 2) == [0, 2]
    assert lowest_scores(torch.tensor([0.1, 0.5, 0.05, 0.3]), 2, keep=(0,)) == [2, 3]


def test_massive_activation_creator_is_found_and_protected():
    torch.manual_seed(0)
    hidden = [torch.randn(2, 128, 8) for _ in range(5)]
    for k in (3, 4):                       # block 2 creates a huge first-token activation
        hidden[k][:, 0] *= 1000.0
    stats = ScanStats.empty(4)
    stats.update(hidden, torch.ones(2, 128))
    ratio = stats.massive_ratio()
    expected = max(float(h.norm(dim=-1).max()) for h in [hidden[3]]) / float(hidden[3].norm(dim=-1).mean())
    assert float(ratio[3]) == pytest.approx(expected, rel=1e-6)
    assert stats.massive_creators() == [2]
    scores = torch.zeros(5, 5)
    assert choose_spans(scores, 2, 1, min_start=0, protected=(2,)) == [0]
    from layercut.errors import ConfigError
    with pytest.raises(ConfigError, match="without cutting blocks \\[2\\]"):
        choose_spans(scores, 3, 1, min_start=0, protected=(2,))
