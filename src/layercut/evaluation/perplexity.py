"""Perplexity over non-overlapping windows (ALGORITHMS.md section 6).

The whole text is tokenised once and cut into windows of `seq_len` tokens (BOS first when the
tokenizer adds one); perplexity is exp of the mean next-token negative log-likelihood over every
predicted token of every window.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from layercut.data import bos_id, read_text, split_windows, tokenize_text
from layercut.errors import DataError
from layercut.evaluation.logprobs import DEFAULT_LOGITS_MIB, next_token_logprobs
from layercut.loading import LoadedModel


@dataclass
class PerplexityResult:
    """A perplexity with the settings that produced it."""

    perplexity: float
    mean_nll: float
    predicted_tokens: int
    windows: int
    seq_len: int
    bos: bool
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_nll(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, progress: bool = True,
               logits_mib: int = DEFAULT_LOGITS_MIB) -> tuple[float, int]:
    """Sum of next-token NLL and number of predicted tokens over all windows ([N, T] token ids);
    at most `logits_mib` MiB of logits exist at a time (see `evaluation.logprobs`)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", disable=not progress,
                          unit="batch"):
            batch = windows[start:start + batch_size].to(device)
            total_nll -= float(next_token_logprobs(model, batch, logits_mib).double().sum())
            total_tokens += batch[:, 1:].numel()
    return total_nll, total_tokens


def text_perplexity(loaded: LoadedModel, source: str, seq_len: int | None = None, max_tokens: int | None = None,
                    batch_size: int = 8, text_field: str = "text", progress: bool = True,
                    logits_mib: int = DEFAULT_LOGITS_MIB) -> PerplexityResult:
    """Perplexity of `loaded` on a text source; `max_tokens` caps the tokens read (whole windows)."""
    config = loaded.model.config
    if seq_len is None:
        seq_len = min(int(getattr(config, "max_position_embeddings", 2048) or 2048), 2048)
    bos = bos_id(loaded.tokenizer)
    ids = tokenize_text(loaded.tokenizer, read_text(source, text_field))
    windows = split_windows(ids, seq_len, bos)
    if max_tokens is not None:
        windows = windows[: max(1, max_tokens // seq_len)]
    if windows.shape[0] == 0:
        raise DataError(f"'{source}' has {ids.numel()} tokens, fewer than one window of {seq_len}; "
                        "lower --seq-len or give more text")
    nll, count = window_nll(loaded.model, windows, batch_size, progress, logits_mib)
    mean = nll / count
    return PerplexityResult(perplexity=math.exp(mean), mean_nll=mean, predicted_tokens=count,
                            windows=int(windows.shape[0]), seq_len=seq_len, bos=bos is not None, source=source)
