"""bi-span: the span with the lowest summed Block Influence, checked against sums formed by hand."""

from __future__ import annotations

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.calibration.capture import calibrate
from layercut.errors import ConfigError
from layercut.methods.bi_span import span_influence
from layercut.prune import PruneRequest, prune


def test_span_influence_is_the_sum_over_each_span():
    influence = torch.rand(9, dtype=torch.float64)
    expected = torch.tensor([float(influence[k:k + 3].sum()) for k in range(7)], dtype=torch.float64)
    assert torch.allclose(span_influence(influence, 3), expected)


@pytest.mark.parametrize("keep_last, allow_last", [(0, False), (0, True), (1, True), (3, False)])
def test_removes_the_lowest_influence_span_before_the_kept_tail(keep_last, allow_last):
    windows = random_windows(4, 16)
    influence = calibrate(tiny_loaded("llama", num_layers=8), windows, 4, progress=False).scan.block_influence()
    cut = 2
    tail = max(keep_last, 0 if allow_last else 1)
    starts = range(1, 8 - tail - cut + 1)  # block 0 is protected by default
    expected = min(starts, key=lambda k: (sum(float(influence[i]) for i in range(k, k + cut)), k))
    loaded = tiny_loaded("llama", num_layers=8)
    outcome = prune(loaded, windows, PruneRequest(method="bi-span", cut=cut, batch_size=4, progress=False,
                                                  allow_last=allow_last, options={"bi_keep_last": keep_last}))
    assert outcome.removed == [expected, expected + 1] and loaded.num_layers == 6
    assert outcome.span_starts == [expected] and len(outcome.scores["span_influence"]) == 7
    assert (7 in [guard["block"] for guard in outcome.details["protected"]]) == (tail > 0)


def test_refuses_when_no_span_fits():
    with pytest.raises(ConfigError, match="--bi-keep-last"):
        prune(tiny_loaded("llama"), random_windows(2, 8),
              PruneRequest(method="bi-span", cut=2, min_start=3, progress=False, options={"bi_keep_last": 2}))
