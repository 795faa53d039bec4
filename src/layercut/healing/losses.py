"""Training losses of healing: next-token cross-entropy and distillation from a teacher."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from the logits at position t ([B, T, V], [B, T])."""
    predicted = logits[:, :-1].float()
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), input_ids[:, 1:].reshape(-1))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, averaged over positions.

    Both distributions are softened by `temperature`; the result is multiplied by
    temperature**2 so its gradient keeps the same scale as the cross-entropy's (Hinton et al.).
    """
    vocab = student_logits.shape[-1]
    student = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab) / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2


def mixed_loss(ce: torch.Tensor, kl: torch.Tensor | None, kd_weight: float) -> torch.Tensor:
    """(1 - kd_weight) * CE + kd_weight * KL; plain CE when there is no teacher."""
    if kl is None:
        return ce
    return (1.0 - kd_weight) * ce + kd_weight * kl
