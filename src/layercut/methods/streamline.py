"""LLM-Streamline (ALGORITHMS.md section 3): replace the most similar span of blocks by one trained module.

The span k .. k+n-1 with the highest span cosine (or another `--select` score) is chosen from one
scan. One capture pass, stopped after block k+n-1, keeps X_k and X_{k+n} for every calibration
token (in memory, or in a memory-mapped temp file above a size threshold). A replacement is then
trained with MSE to map X_k to X_{k+n}:

- "layer": a copy of block k (the model's own decoder-layer class), called with the
  arguments the model itself passed to block k (position embeddings, masks) captured by a hook;
- "ffn": block k's MLP with the norms around it, x + MLP(norm(x)) (x + post(MLP(norm(x))) in
  Gemma 2/3). It is exported as block k with a zeroed attention output projection, so plain
  `transformers` loads the result.

An optional second stage fine-tunes the replacement with the next-token loss.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from layercut.adapters import ArchAdapter, family_name, get_path
from layercut.calibration.capture import calibrate, first_tensor, forward_blocks
from layercut.errors import ConfigError
from layercut.loading import LoadedModel
from layercut.methods.base import PruneOutcome, PruneRequest, register
from layercut.methods.settings import StreamlineSettings
from layercut.methods.protection import check_forced_span, protection_details
from layercut.methods.spans import place_spans, span_summary
from layercut.surgery import remove_blocks

KINDS = ("layer", "ffn")
FFN_GROUP_STEPS = 16  # FFN steps drawn from one group of windows read from the store


class FFNReplacement(nn.Module):
    """x + MLP(norm(x)), or x + post_norm(MLP(norm(x))) in families that normalise the MLP output
    (Gemma 2/3): an MLP of the model's own class with the norms that wrap it, as one residual step."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, post_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.norm = norm
        self.mlp = mlp
        self.post_norm = post_norm

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        branch = first_tensor(self.mlp(self.norm(hidden)))
        return hidden + (branch if self.post_norm is None else self.post_norm(branch))


class HiddenStore:
    """Span inputs X_k and outputs X_{k+n} of every window, [W, T, d] float32 each, in RAM or memory-mapped."""

    def __init__(self, windows: int, seq_len: int, dim: int, directory: Path | None) -> None:
        shape = (windows, seq_len, dim)
        self.inputs = self._allocate(shape, directory, "inputs")
        self.targets = self._allocate(shape, directory, "targets")
        self.on_disk = directory is not None

    @staticmethod
    def _allocate(shape: tuple[int, int, int], directory: Path | None, name: str) -> torch.Tensor:
        if directory is None:
            return torch.empty(shape, dtype=torch.float32)
        path = directory / f"{name}.f32"
        count = shape[0] * shape[1] * shape[2]
        with open(path, "wb") as handle:
            handle.truncate(count * 4)
        return torch.from_file(str(path), shared=True, size=count, dtype=torch.float32).view(shape)


def store_bytes(windows: int, seq_len: int, dim: int) -> int:
    """Bytes the two float32 hidden-state tensors of a capture take."""
    return 2 * windows * seq_len * dim * 4


@contextmanager
def hidden_store(windows: torch.Tensor, dim: int, memory_gib: float) -> Iterator[HiddenStore]:
    """A store for `windows`; a temp directory of memory-mapped files when it would exceed `memory_gib`."""
    count, seq_len = windows.shape
    if store_bytes(count, seq_len, dim) <= memory_gib * 2**30:
        yield HiddenStore(count, seq_len, dim, None)
        return
    with tempfile.TemporaryDirectory(prefix="layercut-streamline-") as directory:
        yield HiddenStore(count, seq_len, dim, Path(directory))


def capture_span(loaded: LoadedModel, windows: torch.Tensor, start: int, span_len: int, store: HiddenStore,
                 batch_size: int, progress: bool = True) -> None:
    """Fill `store` with X_start and X_{start+span_len} of every window (the pass stops after the span)."""
    row = 0
    for capture in forward_blocks(loaded, windows, batch_size, stop_after=start + span_len - 1,
                                  desc="streamline capture", progress=progress):
        count = capture.hidden[start].shape[0]
        store.inputs[row:row + count] = capture.hidden[start].float().cpu()
        store.targets[row:row + count] = capture.hidden[start + span_len].float().cpu()
        row += count


@dataclass
class BlockCall:
    """The extra positional and keyword arguments a model passes to one of its blocks (after the
    hidden states): position embeddings, attention masks... Tensors keep batch size 1 and broadcast
    over a batch of windows of the same length."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def capture_block_call(loaded: LoadedModel, window: torch.Tensor, block_index: int) -> BlockCall:
    """How the model calls block `block_index` on one window, so a standalone copy of the block can
    be called the same way (no per-family knowledge: a forward pre-hook records the call)."""
    block = loaded.adapter.blocks(loaded.model)[block_index]
    seen: dict[str, Any] = {}

    def grab(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        seen["args"] = args[1:]
        seen["kwargs"] = {key: value for key, value in kwargs.items() if key != "hidden_states"}

    handle = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for _ in forward_blocks(loaded, window[:1], 1, stop_after=block_index, progress=False):
            pass
    finally:
        handle.remove()
    kwargs = {key: _outside_inference(value) for key, value in seen["kwargs"].items()
              if key not in ("past_key_value", "past_key_values", "layer_past")}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return BlockCall(args=_outside_inference(seen["args"]), kwargs=kwargs)


def _outside_inference(value: Any) -> Any:
    """A copy usable with autograd of a tensor (or tuple of tensors) captured under inference mode."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, tuple):
        return tuple(_outside_inference(item) for item in value)
    return value


def build_replacement(loaded: LoadedModel, start: int, kind: str) -> nn.Module:
    """A float32 trainable copy of block `start` ("layer") or of its MLP with its pre-norm ("ffn"), dropout off."""
    adapter = loaded.adapter
    block = adapter.blocks(loaded.model)[start]
    if kind == "layer":
        module = copy.deepcopy(block)
    else:
        post_norm = None if adapter.mlp_post_norm is None else copy.deepcopy(get_path(block, adapter.mlp_post_norm))
        module = FFNReplacement(copy.deepcopy(get_path(block, adapter.mlp_norm_path())),
                                copy.deepcopy(adapter.mlp_module(block)), post_norm)
    return module.float().eval()  # eval: no dropout while regressing hidden states


def apply_replacement(module: nn.Module, inputs: torch.Tensor, call: BlockCall | None) -> torch.Tensor:
    """Run the replacement on [B, T, d] inputs; a decoder layer (`call` given) is called as the model calls it."""
    if call is not None:
        return first_tensor(module(inputs, *call.args, **call.kwargs))
    return module(inputs)


def _batches(count: int, per_batch: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return [order[i:i + per_batch] for i in range(0, count, per_batch)]


def span_mse(module: nn.Module, store: HiddenStore, window_ids: torch.Tensor, call: BlockCall | None,
             windows_per_batch: int, device: torch.device) -> float:
    """Mean squared error of the replacement over the given windows (all their tokens)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for pick in _batches(len(window_ids), windows_per_batch, None):
            ids = window_ids[pick]
            inputs, targets = store.inputs[ids].to(device), store.targets[ids].to(device)
            error = apply_replacement(module, inputs, call) - targets
            total += float(error.double().pow(2).sum())
            count += error.numel()
    return total / max(count, 1)


def identity_mse(store: HiddenStore, window_ids: torch.Tensor) -> float:
    """MSE of leaving the span out entirely (X_{k+n} predicted by X_k)."""
    error = store.targets[window_ids].double() - store.inputs[window_ids].double()
    return float(error.pow(2).mean())


def train_replacement(module: nn.Module, store: HiddenStore, kind: str, call: BlockCall | None,
                      settings: StreamlineSettings, seed: int, device: torch.device,
                      progress: bool = True) -> dict[str, Any]:
    """AdamW on the MSE between the replacement's output and X_{k+n}, early-stopped on held-out windows.

    The FFN kind samples token rows across windows; the layer kind takes whole windows (attention
    needs the sequence). The best held-out state is restored at the end.
    """
    windows, seq_len, _ = store.inputs.shape
    held = max(1, windows // 10) if windows > 1 else 0
    train_ids, held_ids = torch.arange(windows - held), torch.arange(windows - held, windows)
    if held == 0:
        held_ids = train_ids
    windows_per_batch = max(1, settings.train_batch_tokens // seq_len)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=settings.lr)
    best = span_mse(module, store, held_ids, call, windows_per_batch, device)
    history = {"identity_heldout_mse": identity_mse(store, held_ids), "initial_heldout_mse": best, "epochs": []}
    best_state = copy.deepcopy(module.state_dict())
    stale = 0
    bar = tqdm(range(settings.epochs), desc=f"streamline {kind}", unit="epoch", disable=not progress)
    for _ in bar:
        train_loss = _train_epoch(module, optimizer, store, train_ids, kind, call, settings, generator, device)
        held_mse = span_mse(module, store, held_ids, call, windows_per_batch, device)
        history["epochs"].append({"train_mse": train_loss, "heldout_mse": held_mse})
        bar.set_postfix(train=f"{train_loss:.4g}", heldout=f"{held_mse:.4g}")
        if held_mse < best:
            best, best_state, stale = held_mse, copy.deepcopy(module.state_dict()), 0
        else:
            stale += 1
            if stale >= settings.patience:
                break
    module.load_state_dict(best_state)
    history.update({"best_heldout_mse": best, "train_windows": len(train_ids), "heldout_windows": held})
    return history


def _train_epoch(module: nn.Module, optimizer: torch.optim.Optimizer, store: HiddenStore, train_ids: torch.Tensor,
                 kind: str, call: BlockCall | None, settings: StreamlineSettings, generator: torch.Generator,
                 device: torch.device) -> float:
    """One pass over the training windows in shuffled order; returns the mean batch loss.

    The layer kind steps on whole windows (attention needs the sequence). The FFN kind reads a
    group of windows at a time (so a memory-mapped store is never loaded whole) and steps on
    shuffled token rows of that group.
    """
    seq_len, dim = store.inputs.shape[1:]
    windows_per_step = max(1, settings.train_batch_tokens // seq_len)
    group = windows_per_step if kind == "layer" else windows_per_step * FFN_GROUP_STEPS
    losses = []
    for pick in _batches(len(train_ids), group, generator):
        ids = train_ids[pick]
        inputs, targets = store.inputs[ids], store.targets[ids]
        if kind == "layer":
            losses.append(_step(module, optimizer, inputs, targets, call, device))
            continue
        inputs, targets = inputs.reshape(-1, dim), targets.reshape(-1, dim)
        for rows in _batches(inputs.shape[0], settings.train_batch_tokens, generator):
            losses.append(_step(module, optimizer, inputs[rows], targets[rows], call, device))
    return sum(losses) / len(losses)


def _step(module: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor,
          call: BlockCall | None, device: torch.device) -> float:
    optimizer.zero_grad()
    loss = nn.functional.mse_loss(apply_replacement(module, inputs.to(device), call), targets.to(device))
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def install_replacement(loaded: LoadedModel, start: int, span_len: int, module: nn.Module, kind: str) -> list[int]:
    """Write the trained module into block `start` and delete blocks start+1 .. start+span_len-1.

    For "ffn", block `start` keeps its attention but its output projection (weight and bias) is
    zeroed, so the block computes x + MLP(norm(x)) (with the post-MLP norm where the family has
    one): a plain decoder layer of the model's class. A norm after the attention (Gemma's
    post_attention_layernorm, an RMSNorm) maps the zero attention output to zero.
    """
    adapter = loaded.adapter
    block = adapter.blocks(loaded.model)[start]
    with torch.no_grad():
        if kind == "layer":
            block.load_state_dict(module.state_dict())
        else:
            get_path(block, adapter.mlp_norm_path()).load_state_dict(module.norm.state_dict())
            adapter.mlp_module(block).load_state_dict(module.mlp.state_dict())
            if module.post_norm is not None:
                get_path(block, adapter.mlp_post_norm).load_state_dict(module.post_norm.state_dict())
            out_proj = adapter.attn_out_proj(block)
            for param in (out_proj.weight, getattr(out_proj, "bias", None)):
                if param is not None:
                    param.zero_()
    return remove_blocks(loaded, range(start + 1, start + span_len))


def replacement_parameters(loaded: LoadedModel, block_index: int, kind: str) -> list[nn.Parameter]:
    """The parameters of the installed replacement that the LM-loss stage trains."""
    adapter = loaded.adapter
    block = adapter.blocks(loaded.model)[block_index]
    if kind == "layer":
        return list(block.parameters())
    norms = [adapter.mlp_norm_path()] + ([adapter.mlp_post_norm] if adapter.mlp_post_norm else [])
    return [param for path in norms for param in get_path(block, path).parameters()] + \
        list(adapter.mlp_module(block).parameters())


def lm_loss_stage(loaded: LoadedModel, windows: torch.Tensor, block_index: int, kind: str,
                  settings: StreamlineSettings, seed: int, progress: bool = True) -> list[float]:
    """Fine-tune only the replacement with the next-token loss on the calibration windows."""
    model = loaded.model
    params = replacement_parameters(loaded, block_index, kind)
    trainable = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in trainable and p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=settings.lm_loss_lr)
    generator = torch.Generator().manual_seed(seed)
    per_batch = max(1, settings.train_batch_tokens // windows.shape[1])
    losses = []
    model.train()
    try:
        for _ in tqdm(range(settings.lm_loss_steps), desc="streamline LM loss", unit="step", disable=not progress):
            pick = torch.randint(0, windows.shape[0], (per_batch,), generator=generator)
            batch = windows[pick].to(loaded.device)
            optimizer.zero_grad()
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        model.eval()
        for param in frozen:
            param.requires_grad_(True)
    return losses


def choose_span(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest
                ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """The span start (`request.start`, else the most redundant span of `request.cut` blocks by
    `request.select` that covers no protected block), the scores behind it and the protection record."""
    if request.num_cuts != 1:
        raise ConfigError("streamline replaces one span; drop --num-cuts")
    guards = request.guards(loaded.num_layers)
    if request.start is not None:
        check_forced_span(request.start, request.cut, guards)
        return request.start, {}, protection_details(guards)
    calibration = calibrate(loaded, windows, request.batch_size, progress=request.progress)
    starts, protection = place_spans(loaded, calibration, request, guards)
    return starts[0], span_summary(calibration, request.select, starts, request.cut), protection


def streamline(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest, settings: StreamlineSettings,
               kind: str) -> PruneOutcome:
    """Choose a span, train its replacement on captured hidden states, install it; returns a PruneOutcome."""
    if kind not in KINDS:
        raise ValueError(f"unknown replacement kind {kind}")
    if loaded.onload is not None:
        raise ConfigError("streamline trains a replacement in memory; drop --offload layers")
    torch.manual_seed(request.seed)
    span_len = request.cut
    start, scores, protection = choose_span(loaded, windows, request)
    train_windows = windows[:settings.train_samples] if settings.train_samples else windows
    module = build_replacement(loaded, start, kind).to(loaded.device)
    call = capture_block_call(loaded, train_windows, start) if kind == "layer" else None
    dim = loaded.model.config.hidden_size
    with hidden_store(train_windows, dim, settings.memory_gib) as store:
        capture_span(loaded, train_windows, start, span_len, store, request.batch_size, request.progress)
        history = train_replacement(module, store, kind, call, settings, request.seed, loaded.device,
                                    request.progress)
        history["streamed_from_disk"] = store.on_disk
    removed = install_replacement(loaded, start, span_len, module, kind)
    if settings.lm_loss_steps:
        history["lm_loss"] = lm_loss_stage(loaded, train_windows, start, kind, settings, request.seed,
                                           request.progress)
    details = {**protection, "streamline": {"kind": kind, "replaced_blocks": list(range(start, start + span_len)),
                              "replacement_block": start, "settings": settings.to_dict(), **history}}
    return PruneOutcome(request.method, removed, [start], span_len, scores=scores, details=details)


@register("streamline-layer", StreamlineSettings, select="cosine")
def streamline_layer(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                     settings: StreamlineSettings) -> PruneOutcome:
    """`--method streamline-layer`: one decoder layer (initialised from the span's first block) replaces the span."""
    return streamline(loaded, windows, request, settings, "layer")


@register("streamline-ffn", StreamlineSettings, select="cosine")
def streamline_ffn(loaded: LoadedModel, windows: torch.Tensor, request: PruneRequest,
                   settings: StreamlineSettings) -> PruneOutcome:
    """`--method streamline-ffn`: an FFN (MLP + pre-norm, from the span's first block) replaces the span."""
    return streamline(loaded, windows, request, settings, "ffn")
