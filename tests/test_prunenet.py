"""PruneNet math against direct formulas, policy learning, policy files and the `slim` command."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from conftest import random_windows, tiny_loaded
from layercut.commands import slim as slim_command
from layercut.errors import ConfigError, LayercutError
from layercut.export import save_checkpoint
from layercut.methods.prunenet import (FEATURES, CoverageReward, FeaturePolicy, PolicyConfig, ReferencePolicy,
                                        channel_coverage, discounts, ffn_weights, ks_statistic, learn_policy, load_policy,
                                        magnitude_keep, neuron_features, outlier_neurons, plackett_luce_top_k, policy_keep,
                                        protected_scores, save_policy, singular_values, slim_model, spectral_reward, top_rows)
from layercut.slicing import ffn_width, keep_count, slice_ffn


def run_cli(*argv: str) -> int:
    """Run `layercut slim ...` through its own parser (other subcommands are not needed here)."""
    parser = argparse.ArgumentParser(prog="layercut")
    slim_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["slim", *argv])
    try:
        return args.run(args)
    except LayercutError as exc:
        raise SystemExit(str(exc)) from exc


def save_tiny(tmp_path, family: str = "llama", num_layers: int = 3):
    loaded = tiny_loaded(family, num_layers=num_layers)
    return save_checkpoint(loaded, tmp_path / "base", {"command": "test", "method": "none"})


def test_ks_statistic_matches_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    for n1, n2 in ((64, 64), (64, 40), (17, 90)):
        s1 = torch.rand(n1, generator=gen, dtype=torch.float64)
        s2 = torch.rand(n2, generator=gen, dtype=torch.float64) * 1.3
        assert float(ks_statistic(s1, s2)) == pytest.approx(ks_2samp(s1.numpy(), s2.numpy()).statistic, abs=1e-12)
    ties1 = torch.tensor([1.0, 2.0, 2.0, 3.0, 5.0])
    ties2 = torch.tensor([2.0, 2.0, 4.0])
    assert float(ks_statistic(ties1, ties2)) == pytest.approx(ks_2samp(ties1.numpy(), ties2.numpy()).statistic)


def test_reward_on_real_spectra_matches_scipy_and_batches() -> None:
    weights = ffn_weights(tiny_loaded("llama", num_layers=3)).gate
    reference = singular_values(weights)
    kept = singular_values(weights[:, :90])
    np.testing.assert_allclose(reference.numpy(), np.sort(np.linalg.svd(weights.double().numpy(),
                                                                        compute_uv=False), axis=-1), rtol=1e-8)
    batched = ks_statistic(reference, kept)
    for layer in range(3):
        expected = ks_2samp(reference[layer].numpy(), kept[layer].numpy()).statistic
        assert float(batched[layer]) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(spectral_reward(batched), 1.0 / batched)


def test_discounts() -> None:
    assert torch.allclose(discounts(3, 0.99), torch.tensor([1.0, 0.99, 0.99 ** 2], dtype=torch.float64))


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_ffn_weights_are_the_adapter_matrices(family: str) -> None:
    from layercut.linear import weight_out_in

    loaded = tiny_loaded(family, num_layers=2)
    ffn = ffn_weights(loaded)
    block = loaded.adapter.blocks(loaded.model)[1]
    inputs = torch.cat([weight_out_in(m).detach() for m in loaded.adapter.mlp_inputs(block)])
    assert ffn.shape == (2, 128, 64)
    torch.testing.assert_close(ffn.gate[1], inputs[:128])
    torch.testing.assert_close(ffn.up[1], inputs[128:] if family != "gpt2" else inputs)
    torch.testing.assert_close(ffn.down[1], weight_out_in(loaded.adapter.down_proj(block)).detach().T)


def test_neuron_features_are_standardised_log_norms_and_maxima() -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=2))
    features = neuron_features(ffn)
    assert features.shape == (2, 128, len(FEATURES))
    raw = ffn.down[1].abs().amax(dim=-1).log()
    torch.testing.assert_close(features[1, :, FEATURES.index("down_max")], (raw - raw.mean()) / raw.std())
    raw = ffn.up[0].norm(dim=-1).log()
    torch.testing.assert_close(features[0, :, FEATURES.index("up_norm")], (raw - raw.mean()) / raw.std())


def test_channel_coverage_matches_direct_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    magnitudes = torch.rand(2, 6, 3, generator=gen)
    masks = (torch.rand(4, 2, 6, generator=gen) > 0.5).float()
    got = channel_coverage(magnitudes, masks)
    for sample in range(4):
        for layer in range(2):
            shares = [float((masks[sample, layer] * magnitudes[layer, :, c]).sum() / magnitudes[layer, :, c].sum())
                      for c in range(3)]
            assert float(got[sample, layer]) == pytest.approx(min(shares), rel=1e-6)


def test_plackett_luce_log_prob_is_sequential_sampling_probability() -> None:
    scores = torch.tensor([[0.3, -1.0, 2.0, 0.5, 0.0]], requires_grad=True)
    kept, log_prob = plackett_luce_top_k(scores, 3, samples=6, generator=torch.Generator().manual_seed(1))
    assert kept.shape == (6, 1, 3) and log_prob.shape == (6, 1)
    weights = scores.detach()[0].exp()
    for sample in range(6):
        remaining, expected = list(range(5)), 0.0
        for index in kept[sample, 0].tolist():
            expected += math.log(float(weights[index] / weights[remaining].sum()))
            remaining.remove(index)
        assert float(log_prob.detach()[sample, 0]) == pytest.approx(expected, rel=1e-5)
    log_prob.sum().backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all()


def test_plackett_luce_samples_follow_the_scores() -> None:
    scores = torch.tensor([[4.0, 0.0, 0.0, 0.0]])
    kept, _ = plackett_luce_top_k(scores, 1, samples=2000, generator=torch.Generator().manual_seed(0))
    share = float((kept == 0).float().mean())
    assert share == pytest.approx(math.exp(4) / (math.exp(4) + 3), abs=0.03)


def test_outlier_neurons_and_protection() -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=2))
    ffn.gate[1, 7] *= 10
    ffn.down[1, 7] *= 10
    flagged = outlier_neurons(ffn, 20.0)
    assert flagged[1, 7] and int(flagged.sum()) == 1
    assert not outlier_neurons(ffn, 0.0).any()
    scores = -torch.arange(128.0).expand(2, 128)
    assert 7 in top_rows(protected_scores(scores, flagged), 3)[1].tolist()


def test_reference_policy_logits_are_the_documented_formula() -> None:
    policy = ReferencePolicy(8, 12, torch.Generator().manual_seed(0))
    weights = torch.randn(2, 12, 8)
    direct = ((weights @ policy.proj.T + policy.bias) @ policy.vec)
    torch.testing.assert_close(policy(weights), direct, rtol=1e-5, atol=1e-5)
    assert float(policy.vec.detach().min()) >= 0.0 and float(policy.vec.detach().max()) <= 1.0


@pytest.mark.parametrize("variant", ["layercut", "reference"])
def test_learning_is_deterministic_and_keeps_k(variant: str) -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=3))
    config = PolicyConfig(ratio=0.25, variant=variant, episodes=4, restarts=2, seed=7)
    first = learn_policy(ffn, config, progress=False)
    second = learn_policy(ffn, config, progress=False)
    for name, tensor in first.policy.state_dict().items():
        assert torch.equal(tensor, second.policy.state_dict()[name])
    assert first.mean_rewards == second.mean_rewards and len(first.mean_rewards) == 4
    keep = policy_keep(first.policy, ffn, 0.25, seed=3)
    assert [int(index.numel()) for index in keep] == [keep_count(128, 0.25)] * 3
    assert [i.tolist() for i in keep] == [i.tolist() for i in policy_keep(first.policy, ffn, 0.25, seed=3)]


def test_default_policy_learns_a_better_reward_than_random() -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=3))
    run = learn_policy(ffn, PolicyConfig(ratio=0.3, episodes=30, restarts=1, protect=0.0), progress=False)
    assert run.mean_rewards[-1] > run.mean_rewards[0]
    reward = CoverageReward(ffn, 4.0, "coverage")
    chosen = torch.stack(policy_keep(run.policy, ffn, 0.3))
    random_keep = torch.stack(top_rows(torch.rand(3, 128, generator=torch.Generator().manual_seed(0)), chosen.shape[1]))
    assert float(reward(chosen).mean()) == pytest.approx(run.final_reward)
    assert run.final_reward > float(reward(random_keep).mean())


def test_bad_config_is_one_line_error() -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=2))
    for config, message in ((PolicyConfig(ratio=1.0), "strictly between 0 and 1"),
                            (PolicyConfig(ratio=0.2, variant="paper"), "unknown PruneNet variant"),
                            (PolicyConfig(ratio=0.2, features=("gate_sum",)), "features must be"),
                            (PolicyConfig(ratio=0.2, episodes=0), "at least 1")):
        with pytest.raises(ConfigError, match=message):
            learn_policy(ffn, config, progress=False)


def test_magnitude_keeps_largest_norm_rows() -> None:
    weights = torch.randn(2, 10, 4)
    weights[0, 3] *= 100
    keep = magnitude_keep(weights, 0.5)
    for layer, index in enumerate(keep):
        norms = weights[layer].norm(dim=-1)
        assert set(index.tolist()) == set(torch.topk(norms, 5).indices.tolist())
    assert 3 in keep[0].tolist()


@pytest.mark.parametrize("variant", ["layercut", "reference"])
def test_policy_file_roundtrip_and_errors(tmp_path, variant: str) -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=2))
    run = learn_policy(ffn, PolicyConfig(ratio=0.2, variant=variant, episodes=2, restarts=1), progress=False)
    path = save_policy(run, tmp_path / "policy.pt", {"ratio": 0.2})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "variant", "state_dict", "metadata"} and raw["variant"] == variant
    policy, metadata = load_policy(path)
    assert isinstance(policy, FeaturePolicy if variant == "layercut" else ReferencePolicy)
    assert metadata["ratio"] == 0.2 and len(metadata["mean_rewards"]) == 2
    assert [i.tolist() for i in policy_keep(policy, ffn, 0.4)] == [i.tolist() for i in policy_keep(run.policy, ffn, 0.4)]
    with pytest.raises(ConfigError, match="already exists"):
        save_policy(run, path, {})
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a policy")
    with pytest.raises(ConfigError, match="not a readable policy"):
        load_policy(tmp_path / "junk.pt")
    torch.save({"format": "layercut-prunenet-policy/1", "state_dict": {}}, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match="learn one again"):
        load_policy(tmp_path / "old.pt")
    other = ffn_weights(tiny_loaded("gpt2", num_layers=2))
    other.gate, other.up, other.down = other.gate[:, :100], other.up[:, :100], other.down[:, :100]
    with pytest.raises(ConfigError, match="learned for FFN width 128"):
        policy_keep(policy, other, 0.2)


def test_slim_model_every_family(family: str) -> None:
    loaded = tiny_loaded(family, num_layers=2)
    step = slim_model(loaded, "prunenet", PolicyConfig(ratio=0.3, episodes=2, restarts=1), progress=False)
    width = keep_count(128, 0.3)
    assert step["result"]["ffn_width_after"] == width
    assert getattr(loaded.model.config, loaded.adapter.ffn_width_key) == width
    assert all(ffn_width(loaded.adapter, b) == width for b in loaded.adapter.blocks(loaded.model))
    assert step["result"]["params_after"] < step["result"]["params_before"]
    with torch.no_grad():
        assert torch.isfinite(loaded.model(input_ids=random_windows(1, 8)).logits).all()


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2"])
def test_saved_slim_model_reloads_in_plain_transformers_with_same_logits(tmp_path, family: str) -> None:
    from transformers import AutoModelForCausalLM

    loaded = tiny_loaded(family, num_layers=2)
    step = slim_model(loaded, "magnitude", PolicyConfig(ratio=0.4), progress=False)
    out = save_checkpoint(loaded, tmp_path / "slim", step)
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(reloaded.config, loaded.adapter.ffn_width_key) == keep_count(128, 0.4)
    windows = random_windows(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=windows).logits, loaded.model(input_ids=windows).logits)


def test_cli_records_both_steps_and_reuses_policy(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    base = save_tiny(tmp_path, "phi3")
    out, policy = tmp_path / "slim", tmp_path / "policy.pt"
    assert run_cli("--model", str(base), "--ratio", "0.25", "--episodes", "3", "--out", str(out),
                   "--policy-out", str(policy), "--seed", "3", "--no-progress") == 0
    assert AutoModelForCausalLM.from_pretrained(out).config.intermediate_size == keep_count(128, 0.25)
    steps = json.loads((out / "layercut.json").read_text())["steps"]
    assert [s["command"] for s in steps] == ["test", "slim"]
    card = (out / "README.md").read_text()
    assert "1. test" in card and "2. slim: prunenet" in card and "one width for all layers" in card

    reused = tmp_path / "reused"
    with pytest.raises(SystemExit, match="learned for FFN width 128"):
        run_cli("--model", str(out), "--ratio", "0.5", "--policy", str(policy), "--out", str(reused))
    assert run_cli("--model", str(base), "--ratio", "0.5", "--policy", str(policy), "--out", str(reused)) == 0
    reuse_step = json.loads((reused / "layercut.json").read_text())["steps"][-1]
    assert reuse_step["params"]["policy_learned_at_ratio"] == 0.25
    assert "episodes" not in reuse_step["params"] and "policy_seconds" not in reuse_step["result"]
    model = AutoModelForCausalLM.from_pretrained(reused).eval()
    assert model.config.intermediate_size == 64
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=random_windows(1, 8)).logits).all()


def test_same_seed_gives_identical_weights(tmp_path) -> None:
    from safetensors.torch import load_file

    base = save_tiny(tmp_path, "gpt2", num_layers=2)
    for name in ("a", "b"):
        run_cli("--model", str(base), "--ratio", "0.2", "--episodes", "2", "--seed", "5",
                "--out", str(tmp_path / name), "--no-progress")
    first = load_file(tmp_path / "a" / "model.safetensors")
    second = load_file(tmp_path / "b" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("argv, message", [
    (("--ratio", "0"), "ratio must be strictly between 0 and 1"),
    (("--ratio", "1.2"), "ratio must be strictly between 0 and 1"),
    (("--ratio", "0.2", "--policy", "/nonexistent/policy.pt"), "not found"),
    (("--ratio", "0.2", "--method", "magnitude", "--policy-out", "p.pt"), "only apply to --method prunenet"),
    (("--ratio", "0.2", "--episodes", "0"), "--episodes 0: Input should be greater than or equal to 1"),
])
def test_cli_rejects_bad_flags_before_loading(tmp_path, argv, message) -> None:
    with pytest.raises(SystemExit, match=message):
        run_cli("--model", str(tmp_path / "no-model"), *argv, "--out", str(tmp_path / "out"))


def test_cli_reference_variant_and_bad_variant(tmp_path) -> None:
    base = save_tiny(tmp_path, "llama", num_layers=2)
    out = tmp_path / "ref"
    assert run_cli("--model", str(base), "--ratio", "0.3", "--variant", "reference", "--episodes", "2",
                   "--out", str(out), "--no-progress") == 0
    step = json.loads((out / "layercut.json").read_text())["steps"][-1]
    assert step["params"]["variant"] == "reference" and step["params"]["lr"] == 1e-3
    assert "sampled from the reference policy" in step["summary"]
    with pytest.raises(SystemExit):
        run_cli("--model", str(base), "--ratio", "0.3", "--variant", "paper", "--out", str(tmp_path / "x"))


@pytest.mark.integration
def test_smollm2_default_policy_beats_random_keep_and_keeps_massive_activation_neurons(smollm2) -> None:
    import copy

    from conftest import shared_data
    from layercut.data import bos_id, split_windows, tokenize_text
    from layercut.evaluation.perplexity import window_nll

    text = shared_data("text", "wikitext2_raw_test.txt").read_text(encoding="utf-8")[:16000]
    windows = split_windows(tokenize_text(smollm2.tokenizer, text), 256, bos_id(smollm2.tokenizer))
    ffn = ffn_weights(smollm2)
    run = learn_policy(ffn, PolicyConfig(ratio=0.2, seed=0), progress=False)
    perplexities = {}
    for name, keep in (("policy", policy_keep(run.policy, ffn, 0.2)),
                       ("random", top_rows(torch.rand(30, 1536, generator=torch.Generator().manual_seed(0)), 1229))):
        loaded = copy.deepcopy(smollm2)
        slice_ffn(loaded, keep)
        nll, count = window_nll(loaded.model, windows, progress=False)
        perplexities[name] = math.exp(nll / count)
    assert {1229, 1487} <= set(policy_keep(run.policy, ffn, 0.3)[11].tolist())
    assert perplexities["policy"] < 0.6 * perplexities["random"]


def test_recipe_slim_step_checks_the_variant(tmp_path) -> None:
    from layercut.errors import RecipeError
    from layercut.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nwork_dir: w\nsteps:\n  - slim: {ratio: 0.2, variant: reference}\n")
    assert load_recipe(recipe)[1][0].variant == "reference"
    recipe.write_text("model: m\nwork_dir: w\nsteps:\n  - slim: {ratio: 0.2, variant: paper}\n")
    with pytest.raises(RecipeError, match="variant: Input should be 'layercut' or 'reference' \\(got 'paper'\\)"):
        load_recipe(recipe)


def test_spectrum_reward_adds_one_minus_ks_of_the_down_spectrum() -> None:
    ffn = ffn_weights(tiny_loaded("llama", num_layers=2))
    kept = torch.stack(top_rows(torch.rand(2, 128, generator=torch.Generator().manual_seed(0)), 90))
    coverage = CoverageReward(ffn, 4.0, "coverage")(kept)
    ks = ks_statistic(singular_values(ffn.down), singular_values(torch.stack([ffn.down[i, kept[i]] for i in range(2)])))
    torch.testing.assert_close(CoverageReward(ffn, 4.0, "spectrum")(kept), 1.0 - ks)
    torch.testing.assert_close(CoverageReward(ffn, 4.0, "coverage+spectrum")(kept), coverage + 1.0 - ks)
