"""Log-probabilities of target tokens without ever holding the logits of a whole batch.

The vocabulary projection is the largest tensor of an evaluation: [batch, seq, vocab] floats, 17 GB
for 8 windows of 2048 tokens with Gemma 3's 262,144-token vocabulary. Instead the model body runs
to its final (normed) hidden states, and the LM head, with the family's logit transform from the
adapter table, runs on a chunk of positions at a time; each chunk is reduced to the target's
log-probability and whether it is the argmax before the next chunk is computed. Peak memory is
then set by `logits_mib`, not by the batch or the window length.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from layercut.adapters import adapter_for_model_type
from layercut.evaluation import DEFAULT_LOGITS_MIB

"""MiB of float32 logits computed at once: 256 positions of Gemma 3's vocabulary, 1365 of SmolLM2's."""


def chunk_positions(vocab_size: int, logits_mib: int) -> int:
    """Positions per chunk so that one chunk's float32 logits take at most `logits_mib` MiB (at least one)."""
    return max(1, logits_mib * 2**20 // (4 * vocab_size))


def chunked_target_logprobs(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor,
                            chunk: int, greedy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target) in float32 and (when `greedy`) whether the target is the argmax, for hidden
    states [N, d] and targets [N], applying `head` (hidden -> logits) to `chunk` rows at a time.
    The argmax is an extra pass over the logits, skipped when only the log-probabilities count."""
    logprobs, hits = [], []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start:start + chunk]).float()
        target = targets[start:start + chunk].to(logits.device)
        picked = logits.gather(-1, target[:, None])[:, 0]
        logprobs.append(picked - torch.logsumexp(logits, dim=-1))
        if greedy:
            hits.append(logits.argmax(dim=-1) == target)
        del logits
    return torch.cat(logprobs), torch.cat(hits) if greedy else None


def target_logprobs(model: nn.Module, inputs: dict[str, torch.Tensor], rows: torch.Tensor, columns: torch.Tensor,
                    targets: torch.Tensor, logits_mib: int = DEFAULT_LOGITS_MIB,
                    greedy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run `model` on `inputs` and return, for each cell (rows[i], columns[i]) of the batch, the
    log-probability of `targets[i]` as the next token and (when `greedy`) whether greedy decoding
    picks it."""
    adapter = adapter_for_model_type(getattr(model.config, "model_type", "<none>"))
    hidden = adapter.final_hidden(model, **inputs)
    picked = hidden[rows.to(hidden.device), columns.to(hidden.device)]
    return chunked_target_logprobs(lambda states: adapter.head_logits(model, states), picked, targets,
                                   chunk_positions(adapter.vocab_size(model), logits_mib), greedy)


def next_token_logprobs(model: nn.Module, input_ids: torch.Tensor,
                        logits_mib: int = DEFAULT_LOGITS_MIB) -> torch.Tensor:
    """log p(input_ids[b, t + 1] | input_ids[b, :t + 1]) for every window b and position t < T - 1,
    flattened to [B * (T - 1)] in float32."""
    batch, length = input_ids.shape
    rows = torch.arange(batch).repeat_interleave(length - 1)
    columns = torch.arange(length - 1).repeat(batch)
    logprobs, _ = target_logprobs(model, {"input_ids": input_ids}, rows, columns,
                                  input_ids[:, 1:].reshape(-1), logits_mib, greedy=False)
    return logprobs
