"""PruneNet: calibration-free FFN width pruning by policy learning (ALGORITHMS.md section 5).

Two variants learn, from the weights alone (no text is read), which FFN neurons every block keeps.
A neuron j is row j of gate/up and column j of down_proj; keeping k of d_ff neurons per block
slices all three (layercut.slicing).

`layercut` (the default) scores neuron j of block l with a small policy shared by all blocks:

    score = features[l, j] . theta

where the features are sign-invariant statistics of what the neuron reads and writes (log L2 norm
and log largest |entry| of its gate row, up row and down column), standardised within each block.
The policy is a Plackett-Luce distribution over neuron orderings; an action keeps the first k of
an ordering sampled by Gumbel-top-k, and REINFORCE (advantage = reward minus the mean of the
episode's samples) raises the exact log-probability of good actions. The reward of block l is its
channel coverage: for each of gate, up and down and for every hidden channel c, the share of
sum_j |W[j, c]|^4 that the kept neurons hold; the worst channel counts, averaged over the three
matrices, so no residual-stream channel loses the neurons that read or write it. Neurons whose
largest gate, up and down entries multiply to more than `protect` times the block's median are
always kept (they create SmolLM2's massive activations). Several restarts are learned and the one
whose deterministic choice earns the highest reward is kept. Export: the top-k scores of each block.

`reference` is the authors' published code (see docs/BENCHMARKS.md for every way it differs from
the paper): logits = (W P^T + b) v on the gate weight W with v ~ uniform(0, 1); keep probabilities
sigmoid(logit(alpha) + logistic noise) at temperature 1; k rows sampled without replacement in
proportion to them; reward 1 / KS between the singular values of W and of its kept rows, discounted
by gamma^l; after each episode one AdamW step per block on -R_l * sum over kept rows of log(prob)
with fresh noise; the policy of the best-scoring episode is kept, and export samples the keep set.

The magnitude baseline keeps the k rows of W with the largest L2 norm.
"""

from __future__ import annotations

import contextlib
import copy
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
from layercut.export import count_parameters, follow_umask
from layercut.linear import weight_out_in
from layercut.loading import LoadedModel
from layercut.methods.settings import FEATURES, REWARDS, VARIANT_DEFAULTS, VARIANTS, PolicyConfig
from layercut.slicing import ffn_width, keep_count, slice_ffn

POLICY_FORMAT = "layercut-prunenet-policy/2"


# ---- weights -------------------------------------------------------------------------------

@dataclass
class FfnWeights:
    """Every block's FFN as float32 [L, d_ff, d] tensors; row j of each is neuron j.

    `down` holds the columns of down_proj as rows. A model with one input matrix (GPT-2's c_fc)
    has `up` equal to `gate`.
    """

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        layers, width, hidden = self.gate.shape
        return int(layers), int(width), int(hidden)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.gate, self.up, self.down


def ffn_weights(loaded: LoadedModel) -> FfnWeights:
    """Gate, up and down weights of every block (all blocks must have one FFN width)."""
    adapter = loaded.adapter
    blocks = adapter.blocks(loaded.model)
    widths = {ffn_width(adapter, block) for block in blocks}
    if len(widths) != 1:
        raise ConfigError(f"blocks have different FFN widths {sorted(widths)}; slim needs one width for all blocks")
    width = widths.pop()
    gates, ups, downs = [], [], []
    for block in blocks:
        rows = torch.cat([weight_out_in(module).detach().float() for module in adapter.mlp_inputs(block)])
        gates.append(rows[:width])
        ups.append(rows[width:2 * width] if rows.shape[0] >= 2 * width else rows[:width])
        downs.append(weight_out_in(adapter.down_proj(block)).detach().float().T)
    return FfnWeights(torch.stack(gates), torch.stack(ups), torch.stack(downs))


# ---- math ----------------------------------------------------------------------------------

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


def spectral_reward(ks: torch.Tensor, floor: float = 1e-5) -> torch.Tensor:
    """Reward 1 / KS, with KS floored so identical spectra give a large finite reward (1e5, as the
    reference code's 99999)."""
    return 1.0 / ks.clamp_min(floor)


def discounts(num_layers: int, gamma: float) -> torch.Tensor:
    """gamma^l for blocks l = 0 .. num_layers - 1."""
    return gamma ** torch.arange(num_layers, dtype=torch.float64)


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """A reparameterised concrete (relaxed Bernoulli) sample in (0, 1) with the given logits."""
    noise = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    noise = noise.clamp(1e-6, 1.0 - 1e-6)
    return torch.sigmoid((logits + noise.log() - (-noise).log1p()) / temperature)


def sample_rows(weights: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k row indices per batch entry drawn without replacement, proportional to `weights` [..., n]."""
    return torch.multinomial(weights.detach().clamp_min(1e-12), k, replacement=False, generator=generator)


def top_rows(scores: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Indices of the k highest scores in each row of [L, n], sorted ascending."""
    return [torch.sort(index).values for index in torch.topk(scores, k, dim=-1).indices]


def neuron_features(ffn: FfnWeights) -> torch.Tensor:
    """[L, d_ff, 6] features in FEATURES order: log L2 norm and log largest |entry| of each neuron's
    gate row, up row and down column, standardised over the neurons of each block."""
    columns = []
    for matrix in ffn.matrices():
        magnitude = matrix.abs()
        columns += [magnitude.norm(dim=-1), magnitude.amax(dim=-1)]
    raw = torch.stack(columns, dim=-1).clamp_min(1e-12).log()
    return (raw - raw.mean(dim=1, keepdim=True)) / raw.std(dim=1, keepdim=True).clamp_min(1e-6)


def outlier_neurons(ffn: FfnWeights, factor: float) -> torch.Tensor:
    """[L, d_ff] bool: neurons whose largest gate, up and down entries multiply to more than `factor`
    times the median of their block (factor <= 0: none)."""
    product = ffn.gate.abs().amax(-1) * ffn.up.abs().amax(-1) * ffn.down.abs().amax(-1)
    if factor <= 0:
        return torch.zeros_like(product, dtype=torch.bool)
    return product > factor * product.median(dim=1, keepdim=True).values


def channel_coverage(magnitudes: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Worst-channel share of a matrix's mass that the kept neurons hold.

    magnitudes: [L, n, d] non-negative (|W|^p, neuron j in row j); masks: [..., L, n] 0/1 keep masks.
    Returns [..., L]: min over channels c of sum_{j kept} magnitudes[l, j, c] / sum_j magnitudes[l, j, c].
    """
    kept = torch.einsum("...ln,lnd->...ld", masks.to(magnitudes.dtype), magnitudes)
    return (kept / magnitudes.sum(dim=1).clamp_min(1e-30)).amin(dim=-1)


def plackett_luce_top_k(scores: torch.Tensor, k: int, samples: int,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample orderings of the neurons of every block from Plackett-Luce(exp(scores)) (Gumbel-top-k)
    and keep the first k. scores: [L, n]. Returns kept indices [samples, L, k] and the exact
    log-probability of each ordered choice [samples, L] (differentiable in `scores`):
    sum_{i<k} (s_(i) - log sum_{j>=i} exp s_(j))."""
    uniform = torch.rand((samples, *scores.shape), generator=generator, device=scores.device)
    gumbel = -(-uniform.clamp(1e-12, 1.0 - 1e-12).log()).log()
    order = torch.argsort(scores.detach() + gumbel, dim=-1, descending=True)
    ordered = scores.expand(samples, *scores.shape).gather(-1, order)
    remaining = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)
    return order[..., :k], (ordered - remaining)[..., :k].sum(dim=-1)


# ---- policies ------------------------------------------------------------------------------

class FeaturePolicy(nn.Module):
    """The default policy: score = neuron_features . theta, for models of one FFN shape."""

    def __init__(self, hidden_size: int, ffn_width: int, theta: torch.Tensor | None = None,
                 protect: float = 0.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(len(FEATURES)) if theta is None else theta.clone().float())
        self.register_buffer("shape_", torch.tensor([ffn_width, hidden_size]))
        self.register_buffer("protect", torch.tensor(float(protect)))

    @property
    def ffn_width(self) -> int:
        return int(self.shape_[0])

    @property
    def hidden_size(self) -> int:
        return int(self.shape_[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.theta

    def keep(self, ffn: FfnWeights, k: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Deterministic: per block, the k best scores, outlier neurons first."""
        with torch.no_grad():
            return top_rows(protected_scores(self(neuron_features(ffn)), outlier_neurons(ffn, float(self.protect))), k)


class ReferencePolicy(nn.Module):
    """The authors' policy: alpha = sigmoid((W P^T + b) v) for W [..., d_ff, d], v ~ uniform(0, 1)."""

    def __init__(self, hidden_size: int, ffn_width: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(hidden_size)
        self.proj = nn.Parameter((torch.rand(ffn_width, hidden_size, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(ffn_width, generator=generator) * 2 - 1) * bound)
        self.vec = nn.Parameter(torch.rand(ffn_width, generator=generator))

    @property
    def hidden_size(self) -> int:
        return int(self.proj.shape[1])

    @property
    def ffn_width(self) -> int:
        return int(self.proj.shape[0])

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        """Logits of alpha, computed as W (P^T v) + b.v (no [d_ff, d_ff] product)."""
        return weights @ (self.proj.T @ self.vec) + self.bias @ self.vec

    def keep(self, ffn: FfnWeights, k: int, generator: torch.Generator) -> list[torch.Tensor]:
        """Sampled, as the reference code exports: k rows per block without replacement in proportion
        to the noisy keep probabilities."""
        with torch.no_grad():
            probs = relaxed_bernoulli(self(ffn.gate), 1.0, generator)
            return [torch.sort(index).values for index in sample_rows(probs, k, generator)]


Policy = FeaturePolicy | ReferencePolicy


def protected_scores(scores: torch.Tensor, protected: torch.Tensor) -> torch.Tensor:
    """Scores with protected neurons lifted above every other neuron of their block."""
    lift = scores.detach().abs().amax() * 2 + 1
    return scores + protected.to(scores.dtype) * lift


# ---- learning ------------------------------------------------------------------------------



@dataclass
class PolicyRun:
    """A learned policy and how learning went."""

    policy: Policy
    mean_rewards: list[float] = field(default_factory=list)
    final_reward: float = 0.0
    seconds: float = 0.0


def check_config(config: PolicyConfig) -> None:
    keep_count(2, config.ratio)
    if config.variant not in VARIANTS:
        raise ConfigError(f"unknown PruneNet variant '{config.variant}'; choose one of {', '.join(VARIANTS)}")
    if config.resolved("episodes") < 1:
        raise ConfigError(f"--episodes must be at least 1 (got {config.episodes})")
    if config.reward not in REWARDS:
        raise ConfigError(f"unknown PruneNet reward '{config.reward}'; choose one of {', '.join(REWARDS)}")
    unknown = set(config.features) - set(FEATURES)
    if unknown or not config.features:
        raise ConfigError(f"PruneNet features must be a non-empty subset of {', '.join(FEATURES)}")
    if config.samples < 2 or config.restarts < 1:
        raise ConfigError("PruneNet needs at least 2 samples per episode and 1 restart")


def learn_policy(ffn: FfnWeights, config: PolicyConfig, progress: bool = True) -> PolicyRun:
    """Learn a policy of `config.variant` from the weights `ffn` (see the module docstring)."""
    check_config(config)
    start = time.perf_counter()
    learn = learn_feature_policy if config.variant == "layercut" else learn_reference_policy
    run = learn(ffn, config, progress)
    run.seconds = time.perf_counter() - start
    return run


class CoverageReward:
    """Per-block reward of keep masks: mean over gate, up, down of the worst-channel coverage of
    |W|^power, optionally plus 1 - KS between the down_proj spectra before and after."""

    def __init__(self, ffn: FfnWeights, power: float, kind: str) -> None:
        self.ffn, self.kind = ffn, kind
        self.magnitudes = [matrix.abs().pow(power) for matrix in ffn.matrices()]
        self.down_spectrum = singular_values(ffn.down) if "spectrum" in kind else None

    def __call__(self, kept: torch.Tensor) -> torch.Tensor:
        """kept: [..., L, k] indices -> [..., L] reward."""
        layers, width, _ = self.ffn.shape
        masks = torch.zeros((*kept.shape[:-1], width), device=kept.device).scatter_(-1, kept, 1.0)
        reward = torch.zeros(kept.shape[:-1], dtype=torch.float64, device=kept.device)
        if "coverage" in self.kind:
            reward += sum(channel_coverage(m, masks) for m in self.magnitudes).double() / 3
        if self.down_spectrum is not None:
            index = torch.arange(layers, device=kept.device)[:, None]
            kept_down = torch.stack([self.ffn.down[index, sample] for sample in kept.reshape(-1, layers, kept.shape[-1])])
            spectra = singular_values(kept_down)
            ks = ks_statistic(self.down_spectrum.expand_as(spectra), spectra).reshape(kept.shape[:-1])
            reward += 1.0 - ks
        return reward


def learn_feature_policy(ffn: FfnWeights, config: PolicyConfig, progress: bool = True) -> PolicyRun:
    """REINFORCE on a Plackett-Luce policy over neuron features; the best of `restarts` runs by the
    reward of its deterministic choice."""
    layers, width, hidden = ffn.shape
    k = keep_count(width, config.ratio)
    selected = [FEATURES.index(name) for name in config.features]
    features = neuron_features(ffn)[..., selected]
    protected = outlier_neurons(ffn, config.protect)
    reward_of = CoverageReward(ffn, config.power, config.reward)
    generator = torch.Generator(device=ffn.gate.device).manual_seed(config.seed)
    init = torch.Generator().manual_seed(config.seed)
    best: PolicyRun | None = None
    episodes = config.resolved("episodes")
    bar = tqdm(total=episodes * config.restarts, desc="prunenet", unit="episode", disable=not progress)
    for _ in range(config.restarts):
        theta = nn.Parameter(torch.randn(len(selected), generator=init).to(ffn.gate.device) * 0.1)
        optimizer = torch.optim.Adam([theta], lr=config.resolved("lr"))
        rewards = []
        for _ in range(episodes):
            scores = protected_scores(features @ theta, protected)
            kept, log_prob = plackett_luce_top_k(scores, k, config.samples, generator)
            reward = reward_of(kept)
            advantage = (reward - reward.mean(dim=0, keepdim=True)).to(log_prob.dtype)
            loss = -(advantage * log_prob).sum(dim=-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rewards.append(float(reward.mean()))
            bar.update()
            bar.set_postfix(mean_reward=f"{rewards[-1]:.4f}")
        with torch.no_grad():
            chosen = torch.topk(protected_scores(features @ theta, protected), k, dim=-1).indices
            final = float(reward_of(chosen).mean())
        if best is None or final > best.final_reward:
            full = torch.zeros(len(FEATURES))
            full[selected] = theta.detach().cpu()
            best = PolicyRun(FeaturePolicy(hidden, width, full, config.protect), rewards, final)
    bar.close()
    assert best is not None
    return best


def learn_reference_policy(ffn: FfnWeights, config: PolicyConfig, progress: bool = True) -> PolicyRun:
    """The authors' code: per episode sample every block with the current policy, then one AdamW
    step per block on -R_l * sum_{kept} log(prob) with fresh noise; keep the best episode's policy."""
    weights = ffn.gate
    layers, width, hidden = ffn.shape
    k = keep_count(width, config.ratio)
    generator = torch.Generator(device=weights.device).manual_seed(config.seed)
    policy = ReferencePolicy(hidden, width, torch.Generator().manual_seed(config.seed)).to(weights.device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.resolved("lr"))
    reference = singular_values(weights)
    discount = discounts(layers, config.gamma).to(weights.device)
    index = torch.arange(layers, device=weights.device)[:, None]
    run = PolicyRun(policy=copy.deepcopy(policy), final_reward=-math.inf)
    for _ in tqdm(range(config.resolved("episodes")), desc="prunenet", unit="episode", disable=not progress):
        with torch.no_grad():
            kept = sample_rows(relaxed_bernoulli(policy(weights), 1.0, generator), k, generator)
        reward = spectral_reward(ks_statistic(reference, singular_values(weights[index, kept])))
        returns = discount * reward
        for layer in range(layers):
            probs = relaxed_bernoulli(policy(weights[layer]), 1.0, generator)
            loss = -probs[kept[layer]].clamp_min(1e-12).log().sum() * float(returns[layer])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        run.mean_rewards.append(float(reward.mean()))
        if float(reward.sum()) > run.final_reward:
            run.final_reward = float(reward.sum())
            run.policy = copy.deepcopy(policy)
    return run


# ---- choosing and slicing ------------------------------------------------------------------

def check_policy_fits(policy: Policy, ffn: FfnWeights) -> None:
    _, width, hidden = ffn.shape
    if (policy.ffn_width, policy.hidden_size) != (width, hidden):
        raise ConfigError(
            f"the policy was learned for FFN width {policy.ffn_width} and hidden size {policy.hidden_size}, but this "
            f"model has {width} and {hidden}; learn a policy for this model (drop --policy)")


def policy_keep(policy: Policy, ffn: FfnWeights, ratio: float, seed: int = 0) -> list[torch.Tensor]:
    """The neurons `policy` keeps in every block at `ratio` (`seed` drives the reference's sampling)."""
    check_policy_fits(policy, ffn)
    generator = torch.Generator(device=ffn.gate.device).manual_seed(seed)
    return policy.to(ffn.gate.device).keep(ffn, keep_count(ffn.shape[1], ratio), generator)


def magnitude_keep(weights: torch.Tensor, ratio: float) -> list[torch.Tensor]:
    """Baseline: per block, the k rows of W with the largest L2 norm."""
    return top_rows(weights.norm(dim=-1), keep_count(weights.shape[1], ratio))


# ---- policy files --------------------------------------------------------------------------

def save_policy(run: PolicyRun, path: str | Path, metadata: dict[str, Any], overwrite: bool = False) -> Path:
    """Write the policy as a plain state dict plus metadata (loadable with weights_only=True), atomically."""
    target = Path(path).expanduser()
    if target.exists() and not overwrite:
        raise ConfigError(f"policy file '{target}' already exists; pass --overwrite or choose another --policy-out")
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": POLICY_FORMAT,
        "variant": "layercut" if isinstance(run.policy, FeaturePolicy) else "reference",
        "state_dict": {name: tensor.detach().cpu() for name, tensor in run.policy.state_dict().items()},
        "metadata": {"layercut_version": __version__, "mean_rewards": run.mean_rewards,
                     "final_reward": run.final_reward, "seconds": run.seconds, **metadata},
    }
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(handle)
    try:
        torch.save(payload, tmp)
        follow_umask(Path(tmp), directory=False)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_policy(path: str | Path) -> tuple[Policy, dict[str, Any]]:
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
        raise ConfigError(f"'{source}' is not a layercut PruneNet policy of format {POLICY_FORMAT}; "
                          "learn one again with --policy-out")
    state = payload["state_dict"]
    policy: Policy
    if payload.get("variant") == "reference":
        policy = ReferencePolicy(int(state["proj"].shape[1]), int(state["proj"].shape[0]))
    else:
        width, hidden = (int(v) for v in state["shape_"])
        policy = FeaturePolicy(hidden, width)
    policy.load_state_dict(state)
    return policy, dict(payload.get("metadata", {}))


# ---- orchestration -------------------------------------------------------------------------

def slim_model(loaded: LoadedModel, method: str, config: PolicyConfig, policy_path: str | None = None,
               policy_out: str | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Slim `loaded` in place with `method`; returns the step record for the model card."""
    ffn = ffn_weights(loaded)
    width_before = ffn.shape[1]
    params_before = count_parameters(loaded.model)
    params: dict[str, Any] = {"ratio": config.ratio}
    result: dict[str, Any] = {}
    if method == "magnitude":
        keep = magnitude_keep(ffn.gate, config.ratio)
        how = "largest L2 norm of the first FFN weight"
    else:
        if policy_path:
            policy, metadata = load_policy(policy_path)
            params.update(policy=str(policy_path), policy_learned_at_ratio=metadata.get("ratio"),
                          policy_learned_on=metadata.get("source_model"))
        else:
            check_config(config)
            run = learn_policy(ffn, config, progress)
            policy = run.policy
            params.update(variant=config.variant, episodes=config.resolved("episodes"), lr=config.resolved("lr"),
                          seed=config.seed)
            if config.variant == "layercut":
                params.update(samples=config.samples, restarts=config.restarts, protect=config.protect)
            result.update(policy_seconds=round(run.seconds, 2), mean_reward_first=round(run.mean_rewards[0], 4),
                          mean_reward_last=round(run.mean_rewards[-1], 4), final_reward=round(run.final_reward, 4))
            if policy_out:
                save_policy(run, policy_out, {"ratio": config.ratio, "variant": config.variant, "seed": config.seed,
                                              "source_model": loaded.source}, overwrite)
                params["policy_out"] = str(policy_out)
        keep = policy_keep(policy, ffn, config.ratio, config.seed)
        how = ("top-k of the learned policy's neuron scores" if isinstance(policy, FeaturePolicy)
               else "sampled from the reference policy's noisy keep probabilities")
    del ffn
    width_after = slice_ffn(loaded, keep)
    result.update(ffn_width_before=width_before, ffn_width_after=width_after,
                  params_before=params_before, params_after=count_parameters(loaded.model))
    return {
        "command": "slim", "method": method, "params": params,
        "calibration": {"data": "none (calibration-free)"},
        "result": result,
        "summary": (f"FFN width {width_before} -> {width_after} in every layer; one width for all layers because "
                    f"a plain transformers config holds a single FFN width, so the checkpoint loads without layercut; "
                    f"kept neurons = {how}"),
    }
