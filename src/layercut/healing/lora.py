"""LoRA through `peft`: wrap the adapter table's target layers, and merge back into plain weights."""

from __future__ import annotations

import warnings

from torch import nn

from layercut.adapters import ArchAdapter
from layercut.errors import ConfigError, UnsupportedArchitectureError
from layercut.healing.scope import lora_target_names


def add_lora(model: nn.Module, adapter: ArchAdapter, rank: int, alpha: float, dropout: float,
             first_block: int = 0) -> nn.Module:
    """Wrap `model` with trainable LoRA matrices on `adapter.lora_targets` of blocks `first_block` and
    above; the base weights freeze."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("--mode lora needs the 'peft' package: pip install 'layercut[lora]'") from None
    if not adapter.lora_targets:
        raise UnsupportedArchitectureError(f"the {adapter.name} adapter lists no LoRA target layers; "
                                           "add lora_targets to its entry in layercut/adapters.py or use --mode full")
    targets = list(adapter.lora_targets) if first_block == 0 else lora_target_names(model, adapter, first_block)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=targets)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; nothing for the user to do
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA products into the base weights and return the plain transformers model."""
    return model.merge_and_unload()
