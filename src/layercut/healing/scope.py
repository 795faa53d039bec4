"""Which weights healing trains: every block, or only the blocks from the first one a cut changed.

A depth cut leaves the blocks below it exactly as the dense model had them (ReplaceMe changes the
block before the span, a drop the first block after it). Training only from the first changed block
up keeps the intact lower blocks as they were and spares the backward pass through them, so each
step costs less. `first_changed_block` finds that block by comparing the student with its teacher.
"""

from __future__ import annotations

from collections.abc import Callable

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


def resolve_train_from(setting: int | str | None, count: int, changed: int | None) -> int:
    """The first trained block of a `count`-block model: 0 for every block (None), the given number, or,
    for 'auto', `changed`: the first block that differs from the teacher's (None without a teacher)."""
    if setting is None:
        return 0
    if setting == "auto":
        if changed is None:
            raise ConfigError("--train-from auto compares the model's blocks with the teacher's; give --teacher "
                              "(the dense model) or a block number")
        return min(changed, count - 1)
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


class PassThrough(nn.Module):
    """Stands in for a shared prefix block of the teacher: returns its input hidden state."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


class Replay(nn.Module):
    """Stands in for the last shared prefix block: returns the hidden state the student computed there."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return self.hidden.to(hidden_states.device)


class SharedPrefix:
    """Distillation without running the teacher's copy of the frozen blocks below `first`.

    When the student's embeddings and blocks 0..first-1 equal the teacher's and stay frozen, the
    teacher's hidden state entering block `first` is the student's. A hook keeps the student's; the
    teacher then runs with its blocks below `first` replaced by stand-ins that pass it through, so
    only its blocks from `first` up compute. The first call checks the result against a full teacher
    pass and turns sharing off if they disagree (a family whose blocks return something else).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, adapter: ArchAdapter, first: int) -> None:
        self.teacher, self.adapter, self.first = teacher, adapter, first
        self.captured: torch.Tensor | None = None
        self.replay = Replay()
        self.active, self.checked = True, False
        self.handle = adapter.blocks(student)[first].register_forward_pre_hook(self._grab, with_kwargs=True)

    def _grab(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.captured = (args[0] if args else kwargs["hidden_states"]).detach()

    def teacher_logits(self, run_teacher: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The teacher's logits for the batch the student just ran; `run_teacher` runs the teacher's forward."""
        if not self.active or self.captured is None:
            return run_teacher()
        full_blocks = self.adapter.blocks(self.teacher)
        stand_ins = [PassThrough() for _ in range(self.first - 1)] + [self.replay]
        self.replay.hidden = self.captured
        self.adapter.set_blocks(self.teacher, nn.ModuleList([*stand_ins, *full_blocks[self.first:]]))
        try:
            logits = run_teacher()
        finally:
            self.adapter.set_blocks(self.teacher, full_blocks)
            self.replay.hidden = None
        if not self.checked:
            self.checked = True
            reference = run_teacher()
            if not torch.allclose(logits, reference, rtol=1e-4, atol=1e-4):
                self.active = False
                return reference
        return logits

    def close(self) -> None:
        self.handle.remove()
