"""Inference speed and memory of a (pruned) model next to its dense baseline.

A run feeds a fixed batch of synthetic prompts through the model, then decodes greedily with the
KV cache for a fixed number of tokens (no early stop), timing:
- time to first token (TTFT): the prompt's forward pass and the first argmax; as in `generate`, the
  LM head runs at the last prompt position only (`logits_to_keep=1`) where the model accepts it;
  prefill tokens/s = prompt tokens / TTFT;
- decode tokens/s: the remaining gen_len - 1 single-token steps;
- peak memory above the level before the run (peak RSS on CPU, reset through /proc/self/clear_refs
  on Linux; `torch.cuda.max_memory_allocated` on GPU).
Models are measured in turn within each repeat (A, B, A, B, ...) so that a shared machine's load
drifts over both alike. The ideal speed-up counts layers, parameters and forward FLOPs kept.
"""

from __future__ import annotations

import inspect
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from layercut.export import count_parameters
from layercut.linear import weight_out_in
from layercut.loading import LoadedModel
from layercut.methods.sublayers import SUBLAYER_PARTS, output_projection, removed_sublayers

METRICS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_memory_mb")


@dataclass
class RunTiming:
    """One measured generation run."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    ttft_ms: float
    peak_memory_mb: float


def synthetic_prompts(vocab_size: int, batch: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """[batch, prompt_len] token ids drawn uniformly from the upper three quarters of the vocabulary
    (special tokens sit at the low ids in most tokenizers)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size // 4, vocab_size, (batch, prompt_len), generator=generator)


def _status_kib(field_name: str) -> float | None:
    """A `VmRSS`/`VmHWM` entry of /proc/self/status in KiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS (Linux >= 4.0); False when it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager: `.megabytes` = peak memory above the level at entry, for `device`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.megabytes = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = float(torch.cuda.memory_allocated(self.device))
        elif _reset_peak_rss() and _status_kib("VmRSS") is not None:
            self._start = float(_status_kib("VmRSS")) * 1024
        else:
            self._start = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = float(torch.cuda.max_memory_allocated(self.device))
        else:
            hwm = _status_kib("VmHWM")
            peak = (hwm if hwm is not None else float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)) * 1024
        self.megabytes = max(peak - self._start, 0.0) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def last_logits_only(model: nn.Module) -> dict[str, int]:
    """Forward keyword that limits the LM head to the last position, if the model's forward has one.

    Generation needs only the last prompt position's logits; the full [batch, prompt, vocab] tensor
    would dominate prefill memory and time for a small model with a large vocabulary."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def greedy_run(model: nn.Module, prompts: torch.Tensor, gen_len: int) -> RunTiming:
    """Prefill `prompts`, then decode `gen_len` tokens greedily with the KV cache; timings of one run."""
    device = next(model.parameters()).device
    batch, prompt_len = prompts.shape
    prompts = prompts.to(device)
    with torch.inference_mode(), PeakMemory(device) as memory:
        _sync(device)
        began = time.perf_counter()
        output = model(input_ids=prompts, use_cache=True, **last_logits_only(model))
        next_token = output.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        first = time.perf_counter()
        cache = output.past_key_values
        for _ in range(gen_len - 1):
            output = model(input_ids=next_token, past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            next_token = output.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        done = time.perf_counter()
    ttft = first - began
    decode_tokens = batch * (gen_len - 1)
    return RunTiming(prefill_tokens_per_s=batch * prompt_len / ttft,
                     decode_tokens_per_s=decode_tokens / (done - first) if decode_tokens else float("nan"),
                     ttft_ms=ttft * 1000, peak_memory_mb=memory.megabytes)


def summarize(runs: list[RunTiming]) -> dict[str, dict[str, float]]:
    """Median, min and max of each metric over repeats."""
    summary = {}
    for metric in METRICS:
        values = [getattr(run, metric) for run in runs]
        summary[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return summary


def head_parameters(loaded: LoadedModel) -> int:
    """Weights of the LM head (the vocabulary projection)."""
    return weight_out_in(loaded.model.get_output_embeddings()).numel()


def block_matmul_parameters(loaded: LoadedModel) -> int:
    """Weights of the blocks' linear layers a token passes through, leaving out the attention or MLP
    halves whose output projection is zero (they do nothing, so ideally cost nothing)."""
    total = 0
    blocks = loaded.adapter.blocks(loaded.model)
    removed = {part: set(removed_sublayers(loaded, part)) for part in SUBLAYER_PARTS}
    for index, block in enumerate(blocks):
        for part in SUBLAYER_PARTS:
            if index in removed[part]:
                continue
            half = loaded.adapter.attn_module(block) if part == "attn" else loaded.adapter.mlp_module(block)
            total += sum(weight_out_in(m).numel() for m in half.modules()
                         if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D")
    return total


def forward_flops_per_token(loaded: LoadedModel, context: float, head_share: float = 1.0) -> float:
    """About 2 FLOPs per matmul weight plus 4 * context * attention width per attending block; the LM
    head counts `head_share` times (1 in decode, 1 / prompt length in prefill, where only the last
    position needs logits)."""
    blocks = loaded.adapter.blocks(loaded.model)
    attending = [b for i, b in enumerate(blocks) if i not in set(removed_sublayers(loaded, "attn"))]
    attention = sum(4.0 * context * weight_out_in(output_projection(loaded, b, "attn")).shape[1] for b in attending)
    return 2.0 * (block_matmul_parameters(loaded) + head_share * head_parameters(loaded)) + attention


def compute_profile(loaded: LoadedModel, prompt_len: int, gen_len: int) -> dict[str, float]:
    """What the ideal speed-up is computed from: layers, parameters, FLOPs per prefill/decode token."""
    prefill_head_share = 1.0 / prompt_len if last_logits_only(loaded.model) else 1.0
    return {"layers": loaded.num_layers, "parameters": count_parameters(loaded.model),
            "active_sublayers": 2 * loaded.num_layers - sum(len(removed_sublayers(loaded, p)) for p in SUBLAYER_PARTS),
            "prefill_flops_per_token": forward_flops_per_token(loaded, prompt_len / 2, prefill_head_share),
            "decode_flops_per_token": forward_flops_per_token(loaded, prompt_len + gen_len / 2)}


def ideal_speedups(baseline: dict[str, float], model: dict[str, float]) -> dict[str, float]:
    """Speed-ups if time were proportional to layers, sublayers, parameters or FLOPs kept."""
    return {"layers": baseline["layers"] / model["layers"],
            "sublayers": baseline["active_sublayers"] / model["active_sublayers"],
            "parameters": baseline["parameters"] / model["parameters"],
            "prefill_flops": baseline["prefill_flops_per_token"] / model["prefill_flops_per_token"],
            "decode_flops": baseline["decode_flops_per_token"] / model["decode_flops_per_token"]}


def measured_speedups(baseline: dict[str, dict[str, float]], model: dict[str, dict[str, float]]) -> dict[str, float]:
    """Median-over-median ratios against the baseline."""
    return {"prefill": model["prefill_tokens_per_s"]["median"] / baseline["prefill_tokens_per_s"]["median"],
            "decode": model["decode_tokens_per_s"]["median"] / baseline["decode_tokens_per_s"]["median"],
            "ttft": baseline["ttft_ms"]["median"] / model["ttft_ms"]["median"]}


def bench_models(models: dict[str, LoadedModel], batches: list[int], prompt_len: int, gen_len: int,
                 repeats: int = 3, warmup: int = 1, seed: int = 0, baseline: str | None = None) -> dict[str, Any]:
    """Measure every model at every batch size, interleaving the models within each repeat; the
    first-named model (or `baseline`) is the reference for the speed-up ratios."""
    reference = baseline or next(iter(models))
    vocab = min(int(m.model.config.vocab_size) for m in models.values())
    profiles = {name: compute_profile(loaded, prompt_len, gen_len) for name, loaded in models.items()}
    results: dict[str, Any] = {"settings": {"prompt_len": prompt_len, "gen_len": gen_len, "batches": batches,
                                            "repeats": repeats, "warmup": warmup, "seed": seed,
                                            "baseline": reference, "threads": torch.get_num_threads(),
                                            "device": str(next(iter(models.values())).device)},
                               "models": {name: {"source": m.source, **profiles[name]} for name, m in models.items()},
                               "runs": []}
    for batch in batches:
        prompts = synthetic_prompts(vocab, batch, prompt_len, seed)
        for loaded in models.values():
            for _ in range(warmup):
                greedy_run(loaded.model, prompts[:, : min(prompt_len, 16)], min(gen_len, 4))
        timings: dict[str, list[RunTiming]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, loaded in models.items():
                timings[name].append(greedy_run(loaded.model, prompts, gen_len))
        summaries = {name: summarize(runs) for name, runs in timings.items()}
        for name in models:
            results["runs"].append({"model": name, "batch": batch, **summaries[name],
                                    "repeats": [asdict(run) for run in timings[name]],
                                    "measured_speedup": measured_speedups(summaries[reference], summaries[name]),
                                    "ideal_speedup": ideal_speedups(profiles[reference], profiles[name])})
    return results


def _spread(stat: dict[str, float], digits: int = 1) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def render_bench_markdown(results: dict[str, Any]) -> str:
    """A markdown table: medians (min-max over repeats), measured speed-ups and the ideal ones."""
    settings = results["settings"]
    lines = [f"prompt {settings['prompt_len']} tokens, {settings['gen_len']} generated (greedy, KV cache), "
             f"{settings['repeats']} repeats, device {settings['device']}, {settings['threads']} threads; "
             f"baseline `{settings['baseline']}`; median (min-max)", "",
             "| model | layers | batch | prefill tok/s | decode tok/s | TTFT ms | peak MB | prefill x | decode x "
             "| ideal x (layers / params / prefill FLOPs / decode FLOPs) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        measured, ideal = run["measured_speedup"], run["ideal_speedup"]
        profile = results["models"][run["model"]]
        lines.append(f"| {run['model']} | {profile['layers']} | {run['batch']} "
                     f"| {_spread(run['prefill_tokens_per_s'])} | {_spread(run['decode_tokens_per_s'])} "
                     f"| {_spread(run['ttft_ms'])} "
                     f"| {_spread(run['peak_memory_mb'])} | {measured['prefill']:.2f} | {measured['decode']:.2f} "
                     f"| {ideal['layers']:.2f} / {ideal['parameters']:.2f} / {ideal['prefill_flops']:.2f} / "
                     f"{ideal['decode_flops']:.2f} |")
    return "\n".join(lines)
