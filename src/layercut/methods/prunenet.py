"""PruneNet: calibration-free FFN width pruning by policy learning (ALGORITHMS.md section 5).

For every block take the first FFN weight W ([d_ff, d]: gate_proj, c_fc, or the gate half of a
fused gate_up_proj). One policy, shared by all blocks, scores the rows of W:

    logits = (W P^T + b) v        P: [d_ff, d], b: [d_ff], v: [d_ff]

which is computed as W (P^T v) + b.v (the same function, without the [d_ff, d_ff] product).
An episode draws relaxed-Bernoulli (concrete) keep probabilities q from the logits, samples
(1 - r) * d_ff rows without replacement with weights q, and rewards each block with 1 / KS, the
two-sample Kolmogorov-Smirnov statistic between the singular values of W and of its kept rows.
Block l's reward is discounted by gamma^l. The loss is REINFORCE on the Bernoulli log-likelihood
of the kept-row mask under q (with a per-block baseline: the mean reward of earlier episodes),
plus a KL term pulling sigmoid(logits) toward Bernoulli(0.5). No data is read at any point.

Export is deterministic: each block keeps the top-k rows by sigmoid(logits), the policy's
noise-free keep probability, so one learned policy prunes the model at any ratio.
The magnitude baseline keeps the k rows of W with the largest L2 norm.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from layercut import __version__
from layercut.errors import ConfigError
from layercut.export import count_parameters
from layercut.loading import LoadedModel
from layercut.methods.settings import PolicyConfig
from layercut.slicing import ffn_width, keep_count, neuron_weight, slice_ffn

POLICY_FORMAT = "layercut-prunenet-policy/1"


def singular_values(weights: torch.Tensor) -> torch.Tensor:
    """Singular values of each matrix in a batch [..., m, n], ascending, as float64 [..., min(m, n)].

    Computed as square roots of the eigenvalues of the smaller Gram matrix in float64: on CPU this
    is about 9x faster than `torch.linalg.svdvals` on SmolLM2-sized matrices, and accurate to ~1e-8
    relative for the spectra of trained weights. On GPU the whole batch is one call.
    """
    w64 = weights.detach().to(torch.float64)
    rows, cols = w64.shape[-2:]
    gram = w64 @ w64.transpose(-1, -2) if rows < cols else w64.transpose(-1, -2) @ w64
    with single_cpu_thread(gram.device):
        eigenvalues = torch.linalg.eigvalsh(gram)
    return eigenvalues.clamp_min(0.0).sqrt()


@contextlib.contextmanager
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run LAPACK on one CPU thread: the eigen-solver synchronises threads so often that on a busy
    2-core machine two threads took 8-25 s where one takes 0.9 s (30 SmolLM2 layers)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def ks_statistic(s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """Two-sample Kolmogorov-Smirnov statistic sup_x |F1(x) - F2(x)| over the last dimension.

    Batched over leading dimensions; equals `scipy.stats.ks_2samp(s1, s2).statistic` per row.
    """
    a = torch.sort(s1, dim=-1).values
    b = torch.sort(s2, dim=-1).values
    grid = torch.cat([a, b], dim=-1).contiguous()
    cdf_a = torch.searchsorted(a.contiguous(), grid, right=True).to(torch.float64) / a.shape[-1]
    cdf_b = torch.searchsorted(b.contiguous(), grid, right=True).to(torch.float64) / b.shape[-1]
    return (cdf_a - cdf_b).abs().amax(dim=-1)


def spectral_reward(ks: torch.Tensor, floor: float = 1e-4) -> torch.Tensor:
    """Reward 1 / KS, with KS floored so identical spectra give a large finite reward."""
    return 1.0 / ks.clamp_min(floor)


def discounts(num_layers: int, gamma: float) -> torch.Tensor:
    """gamma^l for blocks l = 0 .. num_layers - 1."""
    return gamma ** torch.arange(num_layers, dtype=torch.float64)


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A reparameterised concrete (relaxed Bernoulli) sample in (0, 1) with the given logits."""
    noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    noise = noise.clamp(1e-6, 1.0 - 1e-6)
    return torch.sigmoid((logits + noise.log() - (-noise).log1p()) / temperature)


def bernoulli_log_prob(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of a 0/1 mask under independent Bernoulli(probs), summed over the last dim."""
    p = probs.clamp(1e-6, 1.0 - 1e-6)
    return (mask * p.log() + (1.0 - mask) * (-p).log1p()).sum(dim=-1)


def kl_to_half(probs: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) || Bernoulli(0.5)) summed over the last dim."""
    p = probs.clamp(1e-6, 1.0 - 1e-6)
    return (p * (2.0 * p).log() + (1.0 - p) * (2.0 * (1.0 - p)).log()).sum(dim=-1)


def sample_rows(weights: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k row indices per batch entry drawn without replacement, proportional to `weights` [..., n]."""
    return torch.multinomial(weights.detach().clamp_min(1e-12), k, replacement=False, generator=generator)


def top_rows(scores: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Indices of the k highest scores in each row of [L, n], sorted ascending."""
    return [torch.sort(index).values for index in torch.topk(scores, k, dim=-1).indices]


class PrunePolicy(nn.Module):
    """The shared policy: logits = (W P^T + b) v for W [..., d_ff, d]."""

    def __init__(self, hidden_size: int, ffn_width: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden_size)
        self.proj = nn.Parameter((torch.rand(ffn_width, hidden_size, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(ffn_width, generator=generator) * 2 - 1) * bound)
        self.vec = nn.Parameter(torch.randn(ffn_width, generator=generator) / math.sqrt(ffn_width))

    @property
    def hidden_size(self) -> int:
        return int(self.proj.shape[1])

    @property
    def ffn_width(self) -> int:
        return int(self.proj.shape[0])

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return weights @ (self.proj.T @ self.vec) + self.bias @ self.vec




@dataclass
class PolicyRun:
    """A learned policy and how learning went."""

    policy: PrunePolicy
    mean_rewards: list[float] = field(default_factory=list)
    seconds: float = 0.0


def neuron_weights(loaded: LoadedModel) -> torch.Tensor:
    """The first FFN weight of every block stacked as float32 [L, d_ff, d] (all blocks one width)."""
    adapter = loaded.adapter
    blocks = adapter.blocks(loaded.model)
    widths = {ffn_width(adapter, block) for block in blocks}
    if len(widths) != 1:
        raise ConfigError(f"blocks have different FFN widths {sorted(widths)}; slim needs one width for all blocks")
    return torch.stack([neuron_weight(adapter, block).detach().float() for block in blocks])


def learn_policy(weights: torch.Tensor, config: PolicyConfig, progress: bool = True) -> PolicyRun:
    """Learn the shared policy by REINFORCE on the spectral reward (see the module docstring)."""
    if config.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {config.episodes})")
    num_layers, width, hidden = weights.shape
    k = keep_count(width, config.ratio)
    start = time.perf_counter()
    generator = torch.Generator(device=weights.device).manual_seed(config.seed)
    init_generator = torch.Generator().manual_seed(config.seed)
    policy = PrunePolicy(hidden, width, init_generator).to(weights.device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    reference = singular_values(weights)
    discount = discounts(num_layers, config.gamma).to(weights.device)
    layers = torch.arange(num_layers, device=weights.device)[:, None]
    reward_sum = torch.zeros(num_layers, dtype=torch.float64, device=weights.device)
    run = PolicyRun(policy=policy)
    bar = tqdm(range(config.episodes), desc="prunenet", unit="episode", disable=not progress)
    for episode in bar:
        logits = policy(weights)
        relaxed = relaxed_bernoulli(logits, config.temperature, generator)
        kept = sample_rows(relaxed, k, generator)
        mask = torch.zeros_like(relaxed).scatter_(1, kept, 1.0)
        reward = spectral_reward(ks_statistic(reference, singular_values(weights[layers, kept])))
        baseline = reward_sum / episode if episode else reward
        advantage = (discount * (reward - baseline)).to(logits.dtype)
        loss = -(advantage * bernoulli_log_prob(relaxed, mask)).sum() \
            + config.kl_weight * kl_to_half(torch.sigmoid(logits)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        reward_sum += reward
        run.mean_rewards.append(float(reward.mean()))
        bar.set_postfix(mean_reward=f"{run.mean_rewards[-1]:.2f}")
    run.seconds = time.perf_counter() - start
    return run


def policy_keep(policy: PrunePolicy, weights: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """Deterministic export choice: per block, the top-k rows by the policy's keep probability."""
    check_policy_fits(policy, weights)
    with torch.no_grad():
        probs = torch.sigmoid(policy.to(weights.device)(weights))
    return top_rows(probs, keep_count(weights.shape[1], ratio))


def magnitude_keep(weights: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """Baseline: per block, the k rows of W with the largest L2 norm."""
    return top_rows(weights.norm(dim=-1), keep_count(weights.shape[1], ratio))


def check_policy_fits(policy: PrunePolicy, weights: torch.Tensor) -> None:
    width, hidden = weights.shape[-2:]
    if (policy.ffn_width, policy.hidden_size) != (width, hidden):
        raise ConfigError(
            f"the policy was learned for FFN width {policy.ffn_width} and hidden size {policy.hidden_size}, but this "
            f"model has {width} and {hidden}; learn a policy for this model (drop --policy)")


def save_policy(run: PolicyRun, path: str | Path, metadata: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the policy as a plain state dict plus metadata (loadable with weights_only=True), atomically."""
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(f"policy file '{target}' already exists; pass --overwrite or choose another --policy-out")
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": POLICY_FORMAT,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in run.policy.state_dict().items()},
        "metadata": {"layercut_version": __version__, "mean_rewards": run.mean_rewards,
                     "seconds": run.seconds, **metadata},
    }
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_policy(path: str | Path) -> tuple[PrunePolicy, dict[str, Any]]:
    """Read a policy file written by `save_policy`; returns the policy and its metadata."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise ConfigError(f"policy file '{source}' not found; pass a file written by --policy-out")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types on a file that is not a checkpoint
        raise ConfigError(f"'{source}' is not a readable policy file ({type(exc).__name__}); "
                          "pass a file written by --policy-out") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise ConfigError(f"'{source}' is not a layercut PruneNet policy; pass a file written by --policy-out")
    state = payload["state_dict"]
    policy = PrunePolicy(int(state["proj"].shape[1]), int(state["proj"].shape[0]))
    policy.load_state_dict(state)
    return policy, dict(payload.get("metadata", {}))


def slim_model(loaded: LoadedModel, method: str, config: PolicyConfig, policy_path: str | None = None,
               policy_out: str | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Slim `loaded` in place with `method`; returns the step record for the model card."""
    weights = neuron_weights(loaded)
    width_before = int(weights.shape[1])
    params_before = count_parameters(loaded.model)
    params: dict[str, Any] = {"ratio": config.ratio}
    result: dict[str, Any] = {}
    if method == "magnitude":
        keep = magnitude_keep(weights, config.ratio)
    elif policy_path:
        policy, metadata = load_policy(policy_path)
        keep = policy_keep(policy, weights, config.ratio)
        params.update(policy=str(policy_path), policy_learned_at_ratio=metadata.get("ratio"),
                      policy_learned_on=metadata.get("source_model"))
    else:
        run = learn_policy(weights, config, progress)
        keep = policy_keep(run.policy, weights, config.ratio)
        params.update(episodes=config.episodes, lr=config.lr, gamma=config.gamma, kl_weight=config.kl_weight,
                      temperature=config.temperature, seed=config.seed)
        result.update(policy_seconds=round(run.seconds, 2), mean_reward_first=round(run.mean_rewards[0], 3),
                      mean_reward_last=round(run.mean_rewards[-1], 3))
        if policy_out:
            save_policy(run, policy_out, {"ratio": config.ratio, "episodes": config.episodes, "seed": config.seed,
                                          "source_model": loaded.source}, overwrite)
            params["policy_out"] = str(policy_out)
    del weights
    width_after = slice_ffn(loaded, keep)
    result.update(ffn_width_before=width_before, ffn_width_after=width_after,
                  params_before=params_before, params_after=count_parameters(loaded.model))
    return {
        "command": "slim", "method": method, "params": params,
        "calibration": {"data": "none (calibration-free)"},
        "result": result,
        "summary": (f"FFN width {width_before} -> {width_after} in every layer; one width for all layers because "
                    "a plain transformers config holds a single FFN width, so the checkpoint loads without layercut"
                    + ("; kept rows = top-k of the learned policy's keep probability" if method == "prunenet"
                       else "; kept rows = largest L2 norm of the first FFN weight")),
    }
