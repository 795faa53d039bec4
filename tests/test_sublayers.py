"""Sublayer scores and attention-only / MLP-only cuts; the linear-approximation error score."""

from __future__ import annotations

import pytest
import torch

from conftest import random_windows, tiny_loaded
from layercut.calibration.capture import forward_blocks
from layercut.calibration.linear_error import scan_linear_errors
from layercut.calibration.scores import angular_distance
from layercut.cli import main
from layercut.export import save_checkpoint
from layercut.methods.sublayers import removed_sublayers, scan_sublayers, zero_sublayers
from layercut.prune import PruneRequest, prune


def _changed_parameters(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(before[name], param)}


@pytest.mark.parametrize("family,part,suffix", [("llama", "attn", "self_attn.o_proj"), ("gpt2", "attn", "attn.c_proj"),
                                                ("llama", "mlp", "mlp.down_proj"), ("phi3", "mlp", "mlp.down_proj")])
def test_sublayer_cut_changes_only_those_sublayers(family, part, suffix):
    loaded = tiny_loaded(family)
    before = {name: param.detach().clone() for name, param in loaded.model.named_parameters()}
    request = PruneRequest(method="angular", cut=3, granularity=part, batch_size=4, progress=False)
    outcome = prune(loaded, random_windows(), request)
    chosen = outcome.span_starts
    assert len(chosen) == 3 and loaded.num_layers == 6 and removed_sublayers(loaded, part) == chosen
    blocks_path = loaded.adapter.blocks_path
    expected = {f"{blocks_path}.{k}.{suffix}.{kind}" for k in chosen for kind in ("weight", "bias")}
    changed = _changed_parameters(before, loaded.model)
    assert changed and changed <= expected
    for name in changed:
        assert not dict(loaded.model.named_parameters())[name].any()


def test_chosen_sublayers_have_the_lowest_scores():
    loaded = tiny_loaded("llama")
    stats = scan_sublayers(loaded, random_windows(), 4, progress=False)
    outcome = prune(loaded, random_windows(), PruneRequest(method="angular", cut=2, granularity="mlp",
                                                            batch_size=4, progress=False))
    interior = stats.angular("mlp")[1:5]  # the first and the last block are protected by default
    assert outcome.span_starts == sorted((torch.argsort(interior)[:2] + 1).tolist())
    assert [guard["block"] for guard in outcome.details["protected"]] == [0, 5]


def test_sublayer_scores_match_direct_formula():
    loaded = tiny_loaded("qwen2")
    windows = random_windows()
    stats = scan_sublayers(loaded, windows, 2, progress=False)
    capture = next(forward_blocks(loaded, windows, 4, mlp_blocks=set(range(6)), progress=False))
    block_in, block_out = capture.hidden[2], capture.hidden[3]
    attn_out = block_out - capture.mlp[2]
    assert stats.angular("attn")[2] == pytest.approx(float(angular_distance(block_in, attn_out).mean()), abs=1e-6)
    assert stats.angular("mlp")[2] == pytest.approx(float(angular_distance(attn_out, block_out).mean()), abs=1e-6)


def test_zeroed_attention_passes_the_residual_through():
    loaded = tiny_loaded("llama")
    zero_sublayers(loaded, [1], "attn")
    capture = next(forward_blocks(loaded, random_windows(), 4, mlp_blocks={1}, progress=False))
    assert torch.allclose(capture.hidden[2] - capture.mlp[1], capture.hidden[1], atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attention_cut_checkpoint_reloads_with_same_logits(tmp_path, family):
    from transformers import AutoModelForCausalLM

    loaded = tiny_loaded(family)
    prune(loaded, random_windows(), PruneRequest(method="angular", cut=2, granularity="attn", batch_size=4,
                                                 progress=False))
    out = save_checkpoint(loaded, tmp_path / "out", {"command": "prune", "method": "angular"})
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = random_windows(2, 12, seed=3)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, loaded.model(ids).logits, atol=1e-5)


def test_linear_error_equals_lstsq_on_stacked_activations():
    loaded = tiny_loaded("llama")
    windows = random_windows(8, 24)
    cut, start = 2, 2
    _, errors = scan_linear_errors(loaded, windows, cut, batch_size=4, progress=False)
    fold = start - 1
    rows_m, rows_r = [], []
    for capture in forward_blocks(loaded, windows, 4, mlp_blocks={fold}, progress=False):
        mlp_out = capture.mlp[fold].reshape(-1, 64).double()
        attn_out = capture.hidden[fold + 1].reshape(-1, 64).double() - mlp_out
        rows_m.append(mlp_out)
        rows_r.append(capture.hidden[fold + 1 + cut].reshape(-1, 64).double() - attn_out)
    mlp_rows, target = torch.cat(rows_m), torch.cat(rows_r)
    solution = torch.linalg.lstsq(mlp_rows, target).solution
    direct = float((mlp_rows @ solution - target).pow(2).sum() / target.pow(2).sum())
    assert errors[0] is None and len(errors) == 6 - cut + 1
    assert errors[start] == pytest.approx(direct, rel=1e-6, abs=1e-9)


def test_scan_cli_granularity_and_linear_error(tmp_path, tiny_dir, text_file, capsys):
    import json

    out = tmp_path / "scan.json"
    code = main(["scan", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "4", "--seq-len", "16",
                 "--granularity", "attn", "--linear-error", "--cut", "2", "--json", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    assert len(record["sublayers"]["attn"]["angular"]) == 6 and len(record["linear_error"]["by_start"]) == 5
    assert "linear-approximation error" in capsys.readouterr().out
    assert main(["scan", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "4", "--seq-len", "16",
                 "--linear-error"]) == 2


def test_prune_cli_mlp_granularity(tmp_path, tiny_dir, text_file):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "4", "--seq-len", "16",
                 "--method", "angular", "--granularity", "mlp", "--cut", "2", "--out", str(out)])
    assert code == 0
    from layercut.loading import load_model

    reloaded = load_model(str(out), device="cpu")
    assert reloaded.num_layers == 6 and len(removed_sublayers(reloaded, "mlp")) == 2
    assert main(["prune", "--model", str(tiny_dir), "--calib", str(text_file), "--samples", "4", "--seq-len", "16",
                 "--method", "chop", "--granularity", "mlp", "--cut", "2", "--out", str(tmp_path / "x")]) == 2
