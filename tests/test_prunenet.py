"""PruneNet math against direct formulas, policy learning, policy files and the `slim` command."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from conftest import random_windows, tiny_loaded
from layercut.commands import slim as slim_command
from layercut.errors import ConfigError, LayercutError
from layercut.export import save_checkpoint
from layercut.methods.prunenet import (PolicyConfig, PrunePolicy, bernoulli_log_prob, discounts, kl_to_half,
                               learn_policy, load_policy, magnitude_keep, neuron_weights, policy_keep,
                               ks_statistic, save_policy, singular_values, slim_model, spectral_reward)
from layercut.slicing import ffn_width, keep_count


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
    weights = neuron_weights(tiny_loaded("llama", num_layers=3))
    reference = singular_values(weights)
    kept = singular_values(weights[:, :90])
    np.testing.assert_allclose(reference.numpy(), np.sort(np.linalg.svd(weights.double().numpy(),
                                                                        compute_uv=False), axis=-1), rtol=1e-8)
    batched = ks_statistic(reference, kept)
    for layer in range(3):
        expected = ks_2samp(reference[layer].numpy(), kept[layer].numpy()).statistic
        assert float(batched[layer]) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(spectral_reward(batched), 1.0 / batched)


def test_small_formulas() -> None:
    assert torch.allclose(discounts(3, 0.99), torch.tensor([1.0, 0.99, 0.99 ** 2], dtype=torch.float64))
    probs = torch.tensor([0.9, 0.2, 0.5])
    mask = torch.tensor([1.0, 0.0, 1.0])
    assert float(bernoulli_log_prob(probs, mask)) == pytest.approx(np.log(0.9) + np.log(0.8) + np.log(0.5), rel=1e-5)
    assert float(kl_to_half(torch.tensor([0.5, 0.5]))) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_to_half(torch.tensor([0.9]))) == pytest.approx(0.9 * np.log(1.8) + 0.1 * np.log(0.2), rel=1e-5)


def test_policy_logits_are_the_documented_formula() -> None:
    policy = PrunePolicy(8, 12, torch.Generator().manual_seed(0))
    weights = torch.randn(2, 12, 8)
    direct = ((weights @ policy.proj.T + policy.bias) @ policy.vec)
    torch.testing.assert_close(policy(weights), direct, rtol=1e-5, atol=1e-5)


def test_learning_is_deterministic_and_changes_the_policy() -> None:
    weights = neuron_weights(tiny_loaded("llama", num_layers=3))
    config = PolicyConfig(ratio=0.25, episodes=4, seed=7)
    first = learn_policy(weights, config, progress=False)
    second = learn_policy(weights, config, progress=False)
    for name, tensor in first.policy.state_dict().items():
        assert torch.equal(tensor, second.policy.state_dict()[name])
    assert first.mean_rewards == second.mean_rewards and len(first.mean_rewards) == 4
    untrained = PrunePolicy(64, 128, torch.Generator().manual_seed(7))
    assert not torch.equal(untrained.vec, first.policy.vec)
    keep = policy_keep(first.policy, weights, 0.25)
    assert [int(index.numel()) for index in keep] == [keep_count(128, 0.25)] * 3


def test_magnitude_keeps_largest_norm_rows() -> None:
    weights = torch.randn(2, 10, 4)
    weights[0, 3] *= 100
    keep = magnitude_keep(weights, 0.5)
    for layer, index in enumerate(keep):
        norms = weights[layer].norm(dim=-1)
        assert set(index.tolist()) == set(torch.topk(norms, 5).indices.tolist())
    assert 3 in keep[0].tolist()


def test_policy_file_roundtrip_and_errors(tmp_path) -> None:
    weights = neuron_weights(tiny_loaded("llama", num_layers=2))
    run = learn_policy(weights, PolicyConfig(ratio=0.2, episodes=2), progress=False)
    path = save_policy(run, tmp_path / "policy.pt", {"ratio": 0.2})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"format", "state_dict", "metadata"}
    policy, metadata = load_policy(path)
    assert metadata["ratio"] == 0.2 and len(metadata["mean_rewards"]) == 2
    assert [i.tolist() for i in policy_keep(policy, weights, 0.4)] == \
        [i.tolist() for i in policy_keep(run.policy, weights, 0.4)]
    with pytest.raises(ConfigError, match="already exists"):
        save_policy(run, path, {})
    with pytest.raises(ConfigError, match="not found"):
        load_policy(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a policy")
    with pytest.raises(ConfigError, match="not a readable policy"):
        load_policy(tmp_path / "junk.pt")
    other = neuron_weights(tiny_loaded("gpt2", num_layers=2))[:, :100]
    with pytest.raises(ConfigError, match="learned for FFN width 128"):
        policy_keep(policy, other, 0.2)


def test_slim_model_every_family(family: str) -> None:
    loaded = tiny_loaded(family, num_layers=2)
    step = slim_model(loaded, "prunenet", PolicyConfig(ratio=0.3, episodes=2), progress=False)
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


@pytest.mark.integration
def test_smollm2_prunenet_few_episodes(smollm2) -> None:
    import copy

    loaded = copy.deepcopy(smollm2)
    step = slim_model(loaded, "prunenet", PolicyConfig(ratio=0.2, episodes=3), progress=False)
    assert step["result"]["ffn_width_after"] == 1229 == loaded.model.config.intermediate_size
    windows = random_windows(1, 32)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(input_ids=windows).logits).all()
