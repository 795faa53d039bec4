"""Which weights healing trains: every block, or only the blocks from the first one a cut changed.

A depth cut leaves the blocks below it exactly as the dense model had them (ReplaceMe changes the
block before the span, a drop the first block after it). Training only from the first changed block
up keeps the intact lower blocks as they were and spares the backward pass through them, so each
step costs less. `first_changed_block` finds that block by comparing the student with its teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from layercut.adapters import ArchAdapter, get_path
from layercut.errors import ConfigError


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    """True when two modules hold equal tensors under the same names (and nothing else)."""
    first, second = dict(a.named_parameters()), dict(b.named_parameters())
    if first.keys() != second.keys():
        return False
    return all(first[name].shape == second[name].shape
               and torch.equal(first[name].detach().cpu(), second[name].detach().cpu()) for name in first)


def first_changed_block(student: nn.Module, teacher: nn.Module, adapter: ArchAdapter) -> int:
    """The index of the student's first block that differs from the teacher's block at the same index
    (0 when the embeddings differ; the block count when nothing does)."""
    if not same_parameters(student.get_input_embeddings(), teacher.get_input_embeddings()):
        return 0
    student_blocks, teacher_blocks = adapter.blocks(student), adapter.blocks(teacher)
    for index, block in enumerate(student_blocks):
        if index >= len(teacher_blocks) or not same_parameters(block, teacher_blocks[index]):
            return index
    return len(student_blocks)


def resolve_train_from(setting: int | str | None, student: nn.Module, teacher: nn.Module | None,
                       adapter: ArchAdapter) -> int:
    """The first trained block: 0 for every block (None), the given number, or, for 'auto', the first
    block that differs from the teacher's (which must then be given)."""
    count = len(adapter.blocks(student))
    if setting is None:
        return 0
    if setting == "auto":
        if teacher is None:
            raise ConfigError("--train-from auto compares the model's blocks with the teacher's; give --teacher "
                              "(the dense model) or a block number")
        return min(first_changed_block(student, teacher, adapter), count - 1)
    if not 0 <= int(setting) < count:
        raise ConfigError(f"--train-from {setting} is not a block of this {count}-block model; use 0..{count - 1} "
                          "or auto")
    return int(setting)


def freeze_below(model: nn.Module, adapter: ArchAdapter, first: int) -> None:
    """Full training from block `first`: those blocks and the final norm train; the blocks below it,
    the embeddings and the LM head stay frozen. `first` = 0 trains every weight."""
    if first == 0:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    for block in adapter.blocks(model)[first:]:
        block.requires_grad_(True)
    get_path(model, adapter.final_norm_path).requires_grad_(True)


def lora_target_names(model: nn.Module, adapter: ArchAdapter, first: int) -> list[str]:
    """Full names of the LoRA target layers in blocks `first` and above."""
    owners = {id(block): index for index, block in enumerate(adapter.blocks(model))}
    names = []
    for block_name, block in model.named_modules():
        if owners.get(id(block), -1) < first:
            continue
        for name, _ in block.named_modules():
            if name.rsplit(".", 1)[-1] in adapter.lora_targets:
                names.append(f"{block_name}.{name}")
    return names
