"""Hidden-state distillation next to a cut: the student's hidden state after the first block kept
behind each cut should equal the teacher's after that same original block.

Which original block every student block is comes from the model's layercut history (each prune step
records the blocks it removed). Behind a cut the student's block i is the dense model's block
`origin[i]`, with a gap before it; its output is where the cut's damage shows first, and the teacher's
output of block `origin[i]` is what it should be. This holds for every depth method: after a drop
the block behind the gap must cope with the span's input, after ReplaceMe it follows the folded map,
after LLM-Streamline it follows the trained replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from layercut.adapters import ArchAdapter
from layercut.calibration.capture import first_tensor
from layercut.errors import ConfigError


def block_origins(history: Sequence[dict], num_layers: int) -> list[int] | None:
    """The dense model's index of each of the student's `num_layers` blocks, replayed from the prune
    steps of `history` (None when the history records no removed blocks or does not add up)."""
    origins: list[int] | None = None
    for step in history:
        result = step.get("result") or {}
        removed, before = result.get("removed_blocks"), result.get("layers_before")
        if not removed or before is None:
            continue
        if origins is None:
            origins = list(range(before))
        if len(origins) != before:
            return None
        gone = set(removed)
        origins = [origin for index, origin in enumerate(origins) if index not in gone]
    if origins is None or len(origins) != num_layers:
        return None
    return origins


def cut_pairs(origins: Sequence[int]) -> list[tuple[int, int]]:
    """(student block, teacher block) for the first block kept behind each cut."""
    return [(index, origins[index]) for index in range(1, len(origins)) if origins[index] - origins[index - 1] > 1]


def behind_cut_pairs(origins: Sequence[int]) -> list[tuple[int, int]]:
    """(student block, teacher block) for every block from the first one behind the first cut to the last:
    the whole path the cut's damage travels, not only its first step."""
    first = cut_pairs(origins)
    if not first:
        return []
    return [(index, origins[index]) for index in range(first[0][0], len(origins))]


def per_token_relative_error(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """||s - t||^2 / ||t||^2 for every token (the last dimension is the hidden size): scale-free per token."""
    student, teacher = student.float(), teacher.float()
    error = (student - teacher).pow(2).sum(-1)
    return error / teacher.pow(2).sum(-1).clamp_min(eps)


def relative_hidden_error(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean over tokens of the per-token relative error, so the few tokens with massive activations do not
    drown the rest."""
    return per_token_relative_error(student, teacher, eps).mean()


class HiddenMatch:
    """Hooks that keep the outputs of the paired student and teacher blocks of one forward pass each."""

    def __init__(self, student: nn.Module, teacher: nn.Module, adapter: ArchAdapter,
                 pairs: Sequence[tuple[int, int]]) -> None:
        self.pairs = list(pairs)
        self.student_out: dict[int, torch.Tensor] = {}
        self.teacher_out: dict[int, torch.Tensor] = {}
        student_blocks, teacher_blocks = adapter.blocks(student), adapter.blocks(teacher)
        self.handles = []
        for student_index, teacher_index in self.pairs:
            self.handles.append(student_blocks[student_index].register_forward_hook(
                self._keeper(self.student_out, student_index)))
            self.handles.append(teacher_blocks[teacher_index].register_forward_hook(
                self._keeper(self.teacher_out, teacher_index)))

    @staticmethod
    def _keeper(store: dict[int, torch.Tensor], index: int):
        def keep(_module: nn.Module, _args: tuple, output: object) -> None:
            store[index] = first_tensor(output)
        return keep

    def loss(self) -> torch.Tensor:
        """The mean relative error over the pairs, for the batch both models just ran."""
        errors = [relative_hidden_error(self.student_out[s], self.teacher_out[t].to(self.student_out[s].device))
                  for s, t in self.pairs]
        self.student_out.clear()
        self.teacher_out.clear()
        return torch.stack(errors).mean()

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def hidden_pairs(history: Sequence[dict], student_layers: int, teacher_layers: int,
                 match: Literal["first", "all"] = "first") -> list[tuple[int, int]]:
    """The block pairs to match (`match`: "first" = the first block behind each cut, "all" = every block from
    the first cut on), or a one-line `ConfigError` saying why they cannot be known."""
    origins = block_origins(history, student_layers)
    if origins is None:
        raise ConfigError("--hidden-kd-weight needs to know which blocks were cut, but this model's layercut.json "
                          "records no removed blocks; heal a model that layercut pruned, or drop --hidden-kd-weight")
    if max(origins) >= teacher_layers:
        raise ConfigError(f"the teacher has {teacher_layers} layers but the model came from one with at least "
                          f"{max(origins) + 1}; give the dense model it was cut from as --teacher")
    pairs = cut_pairs(origins) if match == "first" else behind_cut_pairs(origins)
    if not pairs:
        raise ConfigError("--hidden-kd-weight matches the block behind a cut, but this model has no interior cut; "
                          "drop --hidden-kd-weight")
    return pairs
