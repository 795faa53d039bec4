"""Structural edits of a loaded model: delete decoder blocks, renumber the rest, fix the config."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from layercut.errors import ConfigError
from layercut.loading import LoadedModel


def per_layer_config_keys(config: object, num_layers: int) -> list[str]:
    """Config attributes that hold one entry per layer (e.g. `layer_types`), found by their length."""
    return [key for key, value in vars(config).items()
            if isinstance(value, (list, tuple)) and len(value) == num_layers and not key.startswith("_")]


def remove_blocks(loaded: LoadedModel, indices: Iterable[int]) -> list[int]:
    """Delete the given decoder blocks in place and return the sorted removed indices.

    The remaining blocks are renumbered (every submodule's `layer_idx`, which KV caches index
    by), and the config's layer count and per-layer lists lose the same entries.
    """
    blocks = loaded.adapter.blocks(loaded.model)
    num_layers = len(blocks)
    drop = sorted(set(int(i) for i in indices))
    if not drop:
        return []
    if drop[0] < 0 or drop[-1] >= num_layers:
        raise ConfigError(f"cannot remove block {drop[-1] if drop[-1] >= num_layers else drop[0]}: "
                          f"the model has blocks 0..{num_layers - 1}")
    if len(drop) >= num_layers:
        raise ConfigError(f"cannot remove all {num_layers} blocks; cut fewer layers")
    config = loaded.model.config
    keys = per_layer_config_keys(config, num_layers)
    kept = [block for index, block in enumerate(blocks) if index not in drop]
    loaded.adapter.set_blocks(loaded.model, nn.ModuleList(kept))
    for new_index, block in enumerate(kept):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    for key in keys:
        values = getattr(config, key)
        setattr(config, key, type(values)(v for i, v in enumerate(values) if i not in drop))
    config.num_hidden_layers = len(kept)
    return drop
