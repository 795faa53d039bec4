"""`layercut shrink`: target arithmetic, the residual prediction, the stages, the report and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

import layercut.healing.trainer as trainer
import layercut.shrink as shrink_module
from layercut import cli
from layercut.calibration.capture import LinearFitStats
from layercut.errors import ConfigError, DataError
from layercut.export import count_parameters
from layercut.healing.hidden import block_origins
from layercut.loading import load_model
from layercut.shrink import (ModelSizes, ShrinkConfig, Target, apply_candidate, copy_loaded,
                             cut_for_target, model_sizes, predicted_decode_speedup,
                             relative_residuals, score_candidates, shrink, split_calibration, windows_perplexity)
from layercut.shrink_report import REPORT_MD, REPORT_PNG, rank_agreement
from layercut.speed import compute_profile, ideal_speedups
from layercut.surgery import remove_blocks
from tests.conftest import random_windows, tiny_loaded


def test_cut_for_each_target_is_the_fewest_blocks_that_reach_it():
    sizes = ModelSizes(num_layers=10, parameters=1000, block_parameters=60, decode_flops=2000.0, head_flops=200.0)
    cut = cut_for_target(Target("params", 0.8), sizes)
    assert (1000 - cut * 60) / 1000 <= 0.8 < (1000 - (cut - 1) * 60) / 1000 and cut == 4
    assert cut_for_target(Target("layers", 7), sizes) == 3
    cut = cut_for_target(Target("speedup", 1.5), sizes)  # each block 180 FLOPs: 2000 / (2000 - 180 n) >= 1.5
    assert 2000 / (2000 - 180 * cut) >= 1.5 > 2000 / (2000 - 180 * (cut - 1)) and cut == 4
    with pytest.raises(ConfigError, match="at most 8 blocks"):
        cut_for_target(Target("params", 0.1), sizes)
    with pytest.raises(ConfigError, match="below the model's 10 layers"):
        cut_for_target(Target("layers", 10), sizes)
    for kind, value in (("params", 1.5), ("params", 0.0), ("layers", 2.5), ("speedup", 0.9)):
        with pytest.raises(ConfigError):
            Target(kind, value)


def test_predicted_speedup_matches_the_bench_flop_model_of_the_cut_model():
    loaded = tiny_loaded("llama", num_layers=8)
    sizes = model_sizes(loaded)
    dense = compute_profile(loaded, 512, 128)
    remove_blocks(loaded, range(2, 5))
    ideal = ideal_speedups(dense, compute_profile(loaded, 512, 128))["decode_flops"]
    assert predicted_decode_speedup(sizes, 3) == pytest.approx(ideal, rel=1e-9)


def test_relative_residuals_match_a_direct_least_squares():
    generator = torch.Generator().manual_seed(0)
    mlp_out, attn_out = torch.randn(200, 6, generator=generator), torch.randn(200, 6, generator=generator)
    span_out = attn_out + mlp_out @ torch.randn(6, 6, generator=generator) + 0.1 * torch.randn(200, 6, generator=generator)
    target = span_out - attn_out  # what the fold must produce, rounded to float32 as the stats see it
    stats = LinearFitStats.empty(6)
    stats.update(mlp_out, target, None, span_out)
    energy = float(span_out.double().pow(2).sum())
    direct_drop = float((mlp_out.double() - target.double()).pow(2).sum()) / energy
    transform = torch.linalg.lstsq(mlp_out.double(), target.double()).solution
    direct_ls = float((mlp_out.double() @ transform - target.double()).pow(2).sum()) / energy
    residuals = relative_residuals(stats)
    assert residuals["drop"] == pytest.approx(direct_drop, rel=1e-9)
    assert residuals["replaceme-lstsq"] == pytest.approx(direct_ls, rel=1e-6)


def test_rank_agreement_is_spearman():
    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert rank_agreement([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(1 - 6 * 2 / 60)


@pytest.fixture
def calib_text(tmp_path):
    from layercut.data import builtin_text

    path = tmp_path / "calib.txt"
    path.write_text(builtin_text("builtin:pydoc-calib")[:60_000])
    return str(path)


def test_predicted_quality_ranks_candidates_as_held_out_perplexity_does(calib_text):
    """On a tiny model trained for 150 steps (a random one predicts nothing, so no cut can hurt it), the
    residual ranks the ten candidates (5 positions x drop / ReplaceMe) as held-out perplexity does."""
    from layercut.healing.trainer import build_config, heal

    loaded = tiny_loaded("llama", num_layers=8)
    heal(loaded, build_config(data=calib_text, mode="full", steps=150, lr=3e-3, warmup=5, batch_size=8, seq_len=32,
                              progress=False))
    loaded.model.eval()
    calib, heldout = split_calibration(loaded.tokenizer, calib_text, 16, 8, 32, seed=1)
    assert not set(map(tuple, calib.tolist())) & set(map(tuple, heldout.tolist()))
    candidates, fits = score_candidates(loaded, calib, 2, progress=False, methods=("drop", "replaceme-lstsq"))
    assert len(candidates) == 2 * 5 and all(c.params == count_parameters(loaded.model) - 2 * count_parameters(
        loaded.adapter.blocks(loaded.model)[0]) for c in candidates)
    measured = []
    for candidate in candidates:
        trial = copy_loaded(loaded)
        apply_candidate(trial, candidate, fits, calib, progress=False)
        assert trial.num_layers == 6
        measured.append(windows_perplexity(trial, heldout))
    agreement = rank_agreement([c.predicted for c in candidates], measured)
    assert agreement > 0.6, agreement  # 0.76 when written
    by_start = {(c.method, c.start): c.predicted for c in candidates}
    assert all(by_start[("replaceme-lstsq", k)] <= by_start[("drop", k)] + 1e-12 for k in range(1, 6))


def quick_config(target: Target, calib: str | list[str], budget: float, **overrides) -> ShrinkConfig:
    settings = dict(target=target, calib=calib, samples=8, heldout=4, seq_len=32, batch_size=4, check_top=2,
                    budget_minutes=budget, heal_seq_len=32, heal_batch_size=2, progress=False)
    return ShrinkConfig(**{**settings, **overrides})


@pytest.mark.parametrize("target,layers", [(Target("params", 0.8), None), (Target("layers", 5), 5),
                                           (Target("speedup", 1.3), None)])
def test_each_target_gives_a_model_of_the_right_size(target, layers, calib_text, tmp_path):
    loaded = tiny_loaded("llama", num_layers=8)
    sizes = model_sizes(loaded)
    result = shrink(loaded, quick_config(target, calib_text, budget=0.01), tmp_path / "out")
    final = load_model(str(result.model_dir), device="cpu")
    assert "skipped" in result.state.heal  # no time left to heal in 0.6 s
    cut = 8 - final.num_layers
    if target.kind == "params":
        assert count_parameters(final.model) / sizes.parameters <= 0.8
        assert (count_parameters(final.model) + sizes.block_parameters) / sizes.parameters > 0.8
    elif target.kind == "layers":
        assert final.num_layers == layers
    else:
        assert predicted_decode_speedup(sizes, cut) >= 1.3 > predicted_decode_speedup(sizes, cut - 1)
    assert count_parameters(loaded.model) == sizes.parameters  # the dense model is left as it was
    origins = block_origins(final.history, final.num_layers)  # what heal --hidden-kd-weight reads
    assert origins is not None and len(set(origins)) == final.num_layers and max(origins) < 8
    assert any(c["method"] == "streamline-layer" for c in result.state.checked)


def test_heal_report_and_resume_after_ctrl_c(calib_text, tmp_path, monkeypatch):
    out = tmp_path / "out"
    config = quick_config(Target("layers", 6), [calib_text], budget=5, heal_tokens=6 * 2 * 32, kd_weight=0.5,
                          ppl=calib_text, ppl_max_tokens=256, ppl_seq_len=32)  # a list, as the CLI passes it
    real_step = trainer.train_step

    def interrupt_at_third(run, step):
        if step == 2:
            raise KeyboardInterrupt
        return real_step(run, step)

    monkeypatch.setattr(trainer, "train_step", interrupt_at_third)
    first = shrink(tiny_loaded("llama", num_layers=8), config, out)
    assert first.interrupted and first.state.heal["steps"] == 2
    saved = json.loads((out / shrink_module.STATE_FILE).read_text())
    assert saved["chosen"] and saved["checked"] and saved["candidates"]

    monkeypatch.setattr(trainer, "train_step", real_step)
    monkeypatch.setattr(shrink_module, "score_candidates", lambda *a, **k: pytest.fail("scoring ran again"))
    monkeypatch.setattr(shrink_module, "apply_candidate", lambda *a, **k: pytest.fail("a candidate was rebuilt"))
    second = shrink(tiny_loaded("llama", num_layers=8), config, out, resume=True)
    assert not second.interrupted and second.state.heal["steps"] == 6
    assert second.state.checked == saved["checked"] and second.state.chosen == saved["chosen"]
    log = [json.loads(line) for line in (out / "heal" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, len(log) + 1))
    final = load_model(str(out / "model"), device="cpu")
    assert final.num_layers == 6
    assert math.isclose(second.state.final["heldout_ppl"], windows_perplexity(
        final, split_calibration(final.tokenizer, calib_text, 8, 4, 32)[1], 4), rel_tol=1e-6)
    report = (out / REPORT_MD).read_text()
    assert "Candidates checked" in report and "(chosen)" in report and "(8 windows of 32 tokens)" in report
    assert f"tokens of `{calib_text}`" in report
    assert second.state.final["text"]["ppl"] > 1 and second.state.dense["text"]["windows"] == 8
    from PIL import Image

    with Image.open(out / REPORT_PNG) as image:
        assert image.size[0] > 500

    third = shrink(tiny_loaded("llama", num_layers=8), config, out, resume=True)  # everything done: nothing reruns
    assert third.state.final == second.state.final
    monkeypatch.undo()
    fresh = shrink(tiny_loaded("llama", num_layers=8), quick_config(Target("layers", 7), calib_text, budget=0.01), out)
    assert not (out / "heal").exists() and fresh.state.cut == 1  # a fresh run (--overwrite) leaves nothing stale


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_streamline_candidate_is_the_one_prune_would_make(family):
    """Shrink's Streamline candidate sits where `prune --method streamline-layer` puts its span (highest
    cosine, one block longer than the net cut) and, built with the same settings and seed, has the same
    weights; it is unpredicted, listed after the predicted candidates, and always checked."""
    from layercut.methods.base import PruneRequest
    from layercut.prune import prune
    from layercut.shrink import STREAMLINE, STREAMLINE_EPOCHS, to_check

    loaded = tiny_loaded(family, num_layers=8)
    calib = random_windows(6, 16)
    candidates, fits = score_candidates(loaded, calib, 2, progress=False)
    trained = [c for c in candidates if c.method == STREAMLINE]
    assert len(trained) == 1 and trained[0].predicted is None and candidates[-1] is trained[0]
    assert trained[0] in to_check(candidates, 1)
    built = copy_loaded(loaded)
    removed = apply_candidate(built, trained[0], fits, calib, progress=False, seed=3)
    reference = copy_loaded(loaded)
    outcome = prune(reference, calib, PruneRequest(
        "streamline-layer", cut=3, select="cosine", seed=3, progress=False,
        options={"epochs": STREAMLINE_EPOCHS, "patience": 3, "train_batch_tokens": 16}))
    assert outcome.span_starts == [trained[0].start] and removed == outcome.removed and built.num_layers == 6
    mine, theirs = built.model.state_dict(), reference.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_unknown_methods_are_refused():
    with pytest.raises(ConfigError, match="--methods drop,lasso: choose from drop, replaceme-lstsq, streamline-layer"):
        ShrinkConfig(target=Target("layers", 5), methods=("drop", "lasso"))


def test_time_limit_replans_the_schedule(calib_text):
    assert trainer.time_limited_steps(1000, 3, 3.0, 10.0) == 10
    assert trainer.time_limited_steps(5, 3, 3.0, 100.0) == 5
    assert trainer.time_limited_steps(1000, 3, 30.0, 10.0) == 3  # over time already: stop now
    assert trainer.time_limited_steps(1000, 3, 3.0, None) == 1000


def test_cli_bad_targets_are_one_line_errors(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("layercut.commands.shrink",))
    base = ["shrink", "--model", str(tiny_dir), "--budget-minutes", "1", "--out", str(tmp_path / "o")]
    for bad, words in ((["--target-params", "1.5"], "between 0 and 1"), (["--target-speedup", "0.9"], "above 1"),
                       (["--target-layers", "6"], "below the model's 6 layers"),
                       (["--target-params", "0.8", "--target-layers", "3"], "exactly one")):
        assert cli.main([*base, *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("layercut: error:") and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_post_norm_families_get_no_replaceme_candidates():
    """Shrink's one-pass residual predicts a plain down_proj fold, which Gemma 2/3 cannot take."""
    from layercut.shrink import candidate_methods, score_candidates

    loaded = tiny_loaded("gemma3", num_layers=6)
    assert candidate_methods(loaded) == ("drop", "streamline-layer")
    candidates, _ = score_candidates(loaded, random_windows(4, 16), 2, progress=False)
    assert candidates and {candidate.method for candidate in candidates} == {"drop", "streamline-layer"}
    assert "replaceme-lstsq" in candidate_methods(tiny_loaded("llama"))


def test_split_calibration_of_a_mix_keeps_each_source_s_share_disjoint(text_file, tmp_path):
    from conftest import make_tokenizer

    tokenizer = make_tokenizer()
    other = tmp_path / "other.txt"
    other.write_text(" ".join(f"word{i % 97} thing{i % 13}" for i in range(4000)))
    calib, heldout = split_calibration(tokenizer, [str(text_file), str(other)], 5, 3, 32, seed=2)
    assert calib.shape == (5, 32) and heldout.shape == (3, 32)
    assert not set(map(tuple, calib.tolist())) & set(map(tuple, heldout.tolist()))
    alone = split_calibration(tokenizer, str(other), 2, 1, 32, seed=2)
    assert torch.equal(calib[3:], alone[0]) and torch.equal(heldout[2:], alone[1])
    with pytest.raises(DataError, match="--heldout 1 must each be at least the 2 calibration sources"):
        split_calibration(tokenizer, [str(text_file), str(other)], 5, 1, 32)
