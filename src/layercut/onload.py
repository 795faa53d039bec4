"""Layer-by-layer onloading: calibrate a model that does not fit in memory, one block at a time.

The model is built from its config with every parameter on the meta device (no memory); only the
parts outside the decoder blocks (embeddings, final norm, LM head) are read from the safetensors files.
One tiny pass through that skeleton, with every block's `forward` swapped for a recorder, gives
the inputs of block 0 and the exact arguments the model passes to each block (position
embeddings, causal mask), so no family needs special code. Then each block in turn is read from
disk with `safetensors.safe_open`, run over the hidden states of all calibration windows and
dropped. Hidden states travel between blocks through a temporary folder, so resident memory is
about one block plus one batch of activations. The batches yielded are the same `BlockCapture`s
the in-memory pass yields, so every statistic downstream is computed by the same code.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from torch import nn
from tqdm.auto import tqdm

from layercut.adapters import get_adapter
from layercut.calibration.capture import BlockCapture, first_tensor
from layercut.distributed import rank_and_world
from layercut.errors import ConfigError, ModelLoadError
from layercut.loading import ALIASES, LoadedModel, cached_alias_dir, load_tokenizer, read_history, resolve_dtype

# Methods whose only edits are deleting blocks and folding a ReplaceMe map (which reads its block
# first): these work on a skeleton. Methods that train, merge or score with full forwards need the model.
OFFLOAD_METHODS = ("angular", "replaceme-lstsq", "replaceme-cosine", "shortgpt", "chop", "last", "random")


def check_offload_supported(method: str, granularity: str = "block", heal_steps: int = 0) -> None:
    """Refuse, before loading, a pruning setup that needs every weight in memory."""
    if method not in OFFLOAD_METHODS:
        raise ConfigError(f"--offload layers works with --method {', '.join(OFFLOAD_METHODS)}; "
                          f"'{method}' needs the whole model in memory (drop --offload)")
    if granularity != "block" or heal_steps:
        raise ConfigError("--offload layers cuts whole blocks without healing; drop --granularity/--heal-steps "
                          "or --offload")


class SafetensorsWeights:
    """The tensors of a checkpoint directory, read one at a time (single file or sharded with an index)."""

    def __init__(self, directory: Path) -> None:
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / file for name, file in weight_map.items()}
        else:
            self.files = {}
            for path in sorted(directory.glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as handle:
                    self.files.update({name: path for name in handle.keys()})
        if not self.files:
            raise ModelLoadError(f"'{directory}' holds no .safetensors weights; --offload layers reads safetensors "
                                 "checkpoints (re-save the model with save_pretrained)")

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def read(self, name: str) -> torch.Tensor:
        with safe_open(str(self.files[name]), framework="pt") as handle:
            return handle.get_tensor(name)


def load_parameters(module: nn.Module, prefix: str, weights: SafetensorsWeights, dtype: torch.dtype,
                    device: torch.device, only_meta: bool = False) -> None:
    """Fill `module`'s parameters from the checkpoint tensors named `prefix + name`."""
    for name, param in list(module.named_parameters()):
        if only_meta and not param.is_meta:
            continue
        if prefix + name not in weights:
            if only_meta:
                continue
            raise ModelLoadError(f"checkpoint has no tensor '{prefix + name}'; the files do not match config.json")
        value = weights.read(prefix + name)
        set_module_tensor_to_device(module, name, device, value=value.to(dtype) if value.is_floating_point() else value)


@dataclass
class BlockCall:
    """What the model passed to one block besides the hidden states (mask, positions, rotary cos/sin)."""

    args: tuple
    kwargs: dict[str, Any]


@contextmanager
def _recording(blocks: nn.ModuleList, calls: list[BlockCall], inputs: list[torch.Tensor]) -> Iterator[None]:
    """Swap every block's forward for an identity that records its arguments (and block 0's input)."""
    def recorder(index: int):
        def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if index == 0:
                inputs.append(hidden_states)
            calls.append(BlockCall(args, kwargs))
            return hidden_states
        return forward

    for index, block in enumerate(blocks):
        block.forward = recorder(index)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class SpillStore:
    """Tensors keyed by (name, batch) in a temporary folder, so only one batch stays in memory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, name: str, batch: int, tensor: torch.Tensor) -> None:
        torch.save(tensor.detach().cpu().contiguous(), self.directory / f"{name}-{batch}.pt")

    def get(self, name: str, batch: int, device: torch.device) -> torch.Tensor:
        return torch.load(self.directory / f"{name}-{batch}.pt", weights_only=True).to(device)


@dataclass
class OnloadSource:
    """A checkpoint on disk whose blocks are read one at a time; set as `LoadedModel.onload`."""

    directory: Path
    weights: SafetensorsWeights
    dtype: torch.dtype
    spill_dir: str | None = None
    origin: dict[int, str] = field(default_factory=dict)

    def block_prefix(self, block: nn.Module) -> str:
        return self.origin[id(block)]

    def resident_block(self, block: nn.Module, device: torch.device) -> nn.Module:
        """A real copy of a (meta) skeleton block, weights read from disk."""
        resident = copy.deepcopy(block)
        load_parameters(resident, self.block_prefix(block), self.weights, self.dtype, device)
        return resident

    def forward_blocks(self, loaded: LoadedModel, windows: torch.Tensor, batch_size: int, *,
                       mlp_blocks: Collection[int] = (), stop_after: int | None = None,
                       desc: str = "calibration", progress: bool = True) -> Iterator[BlockCapture]:
        """Same contract as `capture.forward_blocks`, computed block by block from disk."""
        blocks = loaded.adapter.blocks(loaded.model)
        last = len(blocks) - 1 if stop_after is None else min(stop_after, len(blocks) - 1)
        device = loaded.device
        starts = list(range(0, windows.shape[0], batch_size))
        rank, _ = rank_and_world()
        with tempfile.TemporaryDirectory(prefix="layercut-onload-", dir=self.spill_dir) as spill, \
                torch.inference_mode():
            store = SpillStore(Path(spill))
            calls: list[list[BlockCall]] = []
            masks: list[torch.Tensor] = []
            for number, start in enumerate(starts):
                batch = windows[start:start + batch_size].to(device)
                masks.append(torch.ones_like(batch))
                batch_calls: list[BlockCall] = []
                inputs: list[torch.Tensor] = []
                with _recording(blocks, batch_calls, inputs):
                    loaded.model.base_model(input_ids=batch, attention_mask=masks[-1], use_cache=False)
                calls.append(batch_calls)
                store.put("hidden0", number, inputs[0])
            for index in tqdm(range(last + 1), desc=f"{desc} (onloaded)", unit="block",
                              disable=not progress or rank != 0):
                self._run_block(loaded, blocks[index], index, calls, store, index in mlp_blocks, device)
            for number in range(len(starts)):
                hidden = [store.get(f"hidden{k}", number, device) for k in range(last + 2)]
                mlp = {j: store.get(f"mlp{j}", number, device) for j in mlp_blocks if j <= last}
                yield BlockCapture(hidden=hidden, mlp=mlp, mask=masks[number])

    def _run_block(self, loaded: LoadedModel, skeleton_block: nn.Module, index: int, calls: list[list[BlockCall]],
                   store: SpillStore, keep_mlp: bool, device: torch.device) -> None:
        """Run one block over every batch: X_index -> X_index+1 (and its MLP output when asked)."""
        block = self.resident_block(skeleton_block, device)
        grabbed: list[torch.Tensor] = []
        handle = loaded.adapter.mlp_module(block).register_forward_hook(
            lambda _module, _args, output: grabbed.append(first_tensor(output))) if keep_mlp else None
        for number, batch_calls in enumerate(calls):
            call = batch_calls[index]
            output = first_tensor(block(store.get(f"hidden{index}", number, device), *call.args, **call.kwargs))
            store.put(f"hidden{index + 1}", number, output)
            if grabbed:
                store.put(f"mlp{index}", number, grabbed.pop())
        if handle is not None:
            handle.remove()
        del block


def checkpoint_dir(spec: str, trust_remote_code: bool = False) -> Path:
    """The local safetensors directory behind a model spec (aliases resolve to their cached copy)."""
    if spec in ALIASES:
        return cached_alias_dir(spec, trust_remote_code)
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise ConfigError(f"--offload layers needs a local Hugging Face directory with safetensors weights, "
                          f"not '{spec}'; save the model with save_pretrained first")
    return path


def load_onloaded(spec: str, *, dtype: str = "auto", trust_remote_code: bool = False,
                  spill_dir: str | None = None) -> LoadedModel:
    """A LoadedModel whose blocks stay on the meta device until `materialize` (calibration reads them from disk).

    Runs on CPU: onloading is for models larger than the memory at hand.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    directory = checkpoint_dir(spec, trust_remote_code)
    device = torch.device("cpu")
    torch_dtype = resolve_dtype(dtype, device)
    config = AutoConfig.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    model.eval()
    adapter = get_adapter(model)
    weights = SafetensorsWeights(directory)
    source = OnloadSource(directory, weights, torch_dtype, spill_dir)
    blocks = adapter.blocks(model)
    source.origin = {id(block): f"{adapter.blocks_path}.{index}." for index, block in enumerate(blocks)}
    block_ids = {id(param) for param in blocks.parameters()}
    for name, param in list(model.named_parameters()):
        if id(param) not in block_ids and name in weights:
            set_module_tensor_to_device(model, name, device, value=weights.read(name).to(torch_dtype))
    model.tie_weights()  # a tied LM head is not in the files: share the embedding just read
    tokenizer = load_tokenizer(str(directory), trust_remote_code)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, adapter=adapter,
                         source=spec if spec in ALIASES else str(directory), history=read_history(directory))
    loaded.onload = source
    return loaded


def materialize(loaded: LoadedModel, block_indices: Collection[int] | None = None) -> None:
    """Read the still-empty weights of an onloaded model from disk: the given blocks, or (None) all of it.

    Blocks are matched to their original checkpoint names, so this works after blocks were removed.
    A model that was loaded whole is left as it is.
    """
    source: OnloadSource | None = loaded.onload
    if source is None:
        return
    blocks = loaded.adapter.blocks(loaded.model)
    chosen = range(len(blocks)) if block_indices is None else block_indices
    device = loaded.device
    for index in chosen:
        block = blocks[index]
        load_parameters(block, source.block_prefix(block), source.weights, source.dtype, device, only_meta=True)
    if block_indices is None:
        load_parameters(loaded.model, "", source.weights, source.dtype, device, only_meta=True)
        loaded.model.tie_weights()
        leftover = [name for name, param in loaded.model.named_parameters() if param.is_meta]
        if leftover:
            raise ModelLoadError(f"checkpoint '{source.directory}' lacks {leftover[0]}; it does not match its config")
        loaded.onload = None
