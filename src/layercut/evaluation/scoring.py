"""Log-likelihood of continuations given contexts, with lm-evaluation-harness conventions, fast.

Conventions of the harness's Hugging Face backend: the tokenizer adds its own special tokens (a
BOS for Gemma or Llama-2); trailing spaces of the context move to the front of the continuation;
context + continuation is tokenised whole and split where the context's own tokens end; an
empty context gets the BOS (else EOS) token; an over-long input keeps its rightmost tokens.

Speed: requests that share a token prefix (the choices of one question) are packed in one row:
the shared prefix once, then each request's own tokens. An attention mask lets each request see
the prefix and itself only, and position ids continue the prefix, so each request gets exactly
the logits a row of its own would give, while the prefix is computed once. Rows are
left-padded and batched longest first within a token budget so batches pad little, and the
vocabulary projection runs only at the positions that predict continuation tokens, a bounded
chunk of them at a time (`evaluation.logprobs`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from layercut.errors import DataError
from layercut.evaluation.logprobs import DEFAULT_LOGITS_MIB, target_logprobs

PREFIX, PADDING = -1, -2


@dataclass(frozen=True)
class Scored:
    """A continuation's summed log-probability and whether greedy decoding would produce it."""

    logprob: float
    greedy: bool


@dataclass
class PackedRow:
    """One model input row: a shared prefix then each request's own tokens.

    `segments[i]` is PREFIX for a prefix token, else the local index of the request owning token i.
    `targets[r]` holds, for local request r, the row indices whose logits predict its continuation
    tokens and those tokens.
    """

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    request_ids: list[int]
    targets: list[tuple[list[int], list[int]]] = field(default_factory=list)


@dataclass
class ScoringStats:
    """What a scoring pass cost: tokens run through the model (padding excluded), rows, seconds."""

    tokens: int = 0
    rows: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def prefix_token(tokenizer: Any) -> int:
    """The token an empty context starts from: BOS when the tokenizer has one, else EOS."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise DataError("an empty context needs a BOS or EOS token, and this tokenizer has neither; "
                        "give every item a non-empty context")
    return int(token)


def encode_pair(tokenizer: Any, context: str, continuation: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of context + continuation (at most `max_len` + 1, rightmost kept) and how many of
    them, at the end, belong to the continuation."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        whole = tokenizer(context + continuation)["input_ids"]
        context_len = len(tokenizer(context)["input_ids"])
    else:
        whole = [prefix_token(tokenizer)] + tokenizer(continuation, add_special_tokens=False)["input_ids"]
        context_len = 1
    cont_len = len(whole) - context_len
    if cont_len < 1:
        raise DataError(f"continuation {continuation!r} is empty after tokenisation; every choice needs text")
    if cont_len > max_len:
        raise DataError(f"continuation {continuation[:40]!r}... has {cont_len} tokens, more than the model's "
                        f"{max_len}; shorten it")
    return list(whole[-(max_len + 1):]), cont_len


def shared_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the common token prefix, leaving every sequence at least one token of its own."""
    limit = min(len(seq) for seq in sequences) - 1
    length = 0
    while length < limit and all(seq[length] == sequences[0][length] for seq in sequences):
        length += 1
    return length


def pack_row(sequences: Sequence[list[int]], cont_lens: Sequence[int], request_ids: Sequence[int]) -> PackedRow:
    """Pack requests into one row: their shared prefix once, then each one's remaining tokens
    (except its last, which predicts nothing)."""
    shared = shared_prefix_len(sequences)
    row = PackedRow(tokens=list(sequences[0][:shared]), positions=list(range(shared)), segments=[PREFIX] * shared,
                    request_ids=list(request_ids))
    for local, (seq, cont_len) in enumerate(zip(sequences, cont_lens)):
        start = len(row.tokens)
        own = seq[shared:-1]
        row.tokens += own
        row.positions += range(shared, shared + len(own))
        row.segments += [local] * len(own)
        # token k of `seq` is predicted at sequence index k - 1; map that index into the row
        predictors = [k - 1 if k - 1 < shared else start + k - 1 - shared for k in range(len(seq) - cont_len, len(seq))]
        row.targets.append((predictors, list(seq[-cont_len:])))
    return row


def pack_groups(encoded: Sequence[tuple[list[int], int]], groups: Sequence[Sequence[int]], max_len: int,
                share_prefix: bool = True) -> list[PackedRow]:
    """Rows for all requests: one row per group (e.g. a question's choices) when it fits in
    `max_len`, else one row per request."""
    rows = []
    for group in groups:
        if share_prefix and len(group) > 1:
            candidate = pack_row([encoded[i][0] for i in group], [encoded[i][1] for i in group], group)
            if len(candidate.tokens) <= max_len:
                rows.append(candidate)
                continue
        rows += [pack_row([encoded[i][0]], [encoded[i][1]], [i]) for i in group]
    return rows


def attention_bias(segments: torch.Tensor, dtype: torch.dtype, positions: torch.Tensor | None = None,
                   window: int | None = None) -> torch.Tensor:
    """Additive 4-D mask [B, 1, L, L]: causal, and a token sees only the prefix and its own request;
    with a sliding `window`, also only keys fewer than `window` positions back (by position id, so
    packed requests keep their own distances)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segments.device).tril()
    keys, queries = segments[:, None, :], segments[:, :, None]
    allowed = causal & ((keys == queries) | (keys == PREFIX))
    if window is not None and positions is not None:
        allowed &= positions[:, :, None] - positions[:, None, :] < window
    bias = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def packed_attention_mask(config: Any, segments: torch.Tensor, positions: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor | dict[str, torch.Tensor]:
    """The mask of a packed batch as the model's config asks for it. A custom 4-D mask replaces the
    model's own, sliding window included, so the window is applied here: models whose config lists
    per-layer `layer_types` get one mask per type (their forward accepts that mapping), models with
    one `sliding_window` for every layer get it in their single mask."""
    window = getattr(config, "sliding_window", None)
    window = window if isinstance(window, int) and window > 0 else None
    layer_types = getattr(config, "layer_types", None)
    if layer_types and window is not None:
        return {kind: attention_bias(segments, dtype, positions, window if "sliding" in kind else None)
                for kind in set(layer_types)}
    if window is not None and getattr(config, "use_sliding_window", True):
        return attention_bias(segments, dtype, positions, window)
    return attention_bias(segments, dtype)


def score_batch(model: nn.Module, rows: Sequence[PackedRow], pad_id: int,
                logits_mib: int = DEFAULT_LOGITS_MIB) -> list[tuple[int, Scored]]:
    """Run one left-padded batch of rows; return (request id, Scored) for every request in it."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    width = max(len(row.tokens) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), PADDING, dtype=torch.long)
    rows_at, columns, targets, owners = [], [], [], []
    for b, row in enumerate(rows):
        offset = width - len(row.tokens)
        ids[b, offset:] = torch.tensor(row.tokens)
        positions[b, offset:] = torch.tensor(row.positions)
        segments[b, offset:] = torch.tensor(row.segments)
        for local, (predictors, tokens) in enumerate(row.targets):
            rows_at += [b] * len(tokens)
            columns += [offset + p for p in predictors]
            targets += tokens
            owners += [(b, local)] * len(tokens)
    inputs = {"input_ids": ids.to(device), "position_ids": positions.to(device),
              "attention_mask": packed_attention_mask(model.config, segments.to(device), positions.to(device), dtype)}
    logprobs, greedy = target_logprobs(model, inputs, torch.tensor(rows_at), torch.tensor(columns),
                                       torch.tensor(targets), logits_mib)
    assert greedy is not None
    picked, hits = logprobs.tolist(), greedy.tolist()
    totals: dict[tuple[int, int], list] = {}
    for key, value, hit in zip(owners, picked, hits):
        entry = totals.setdefault(key, [0.0, True])
        entry[0] += value
        entry[1] = entry[1] and hit
    return [(rows[b].request_ids[local], Scored(lp, ok)) for (b, local), (lp, ok) in totals.items()]


def batch_rows(rows: Sequence[PackedRow], batch_size: int, token_budget: int) -> list[list[PackedRow]]:
    """Group rows, longest first, into batches of at most `batch_size` rows whose padded size
    (rows x longest row) stays within `token_budget`, so one long row does not pad a whole batch."""
    ordered = sorted(rows, key=lambda row: len(row.tokens), reverse=True)
    batches: list[list[PackedRow]] = []
    for row in ordered:
        if batches and len(batches[-1]) < batch_size and \
                (len(batches[-1]) + 1) * len(batches[-1][0].tokens) <= token_budget:
            batches[-1].append(row)
        else:
            batches.append([row])
    return batches


def model_max_len(model: nn.Module, default: int = 2048) -> int:
    """The longest input the model takes (its max_position_embeddings / n_positions)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    return default


def score_requests(model: nn.Module, tokenizer: Any, requests: Sequence[tuple[str, str]],
                   groups: Sequence[Sequence[int]] | None = None, batch_size: int = 16,
                   progress: bool = True, desc: str = "scoring",
                   stats: ScoringStats | None = None, logits_mib: int = DEFAULT_LOGITS_MIB) -> list[Scored]:
    """Score (context, continuation) pairs; `groups` lists request indices worth packing together
    (by default each request alone); a batch holds up to `batch_size` rows of average length, and
    at most `logits_mib` MiB of logits exist at a time. Returns one `Scored` per request, in order."""
    max_len = model_max_len(model)
    encoded = [encode_pair(tokenizer, context, continuation, max_len) for context, continuation in requests]
    rows = pack_groups(encoded, groups if groups is not None else [[i] for i in range(len(requests))], max_len)
    budget = batch_size * sum(len(row.tokens) for row in rows) // max(len(rows), 1)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results: list[Scored | None] = [None] * len(requests)
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(batch_rows(rows, batch_size, budget), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            for request_id, scored in score_batch(model, batch, pad_id, logits_mib):
                results[request_id] = scored
    if stats is not None:
        stats.tokens += sum(len(row.tokens) for row in rows)
        stats.rows += len(rows)
        stats.seconds += time.perf_counter() - started
    return [result for result in results if result is not None]
