"""Redundancy scores (ALGORITHMS.md section 1) as pure functions and a running-sum accumulator.

`hidden[k]` is X_k, the input of block k (k = 0 is the embeddings; k = L the last block's output).
Span (k, n) means blocks k .. k+n-1; its scores compare X_k with X_{k+n}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from layercut.distributed import all_reduce_max, all_reduce_sum


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows (last dim is the feature dim), computed in float64."""
    a64, b64 = a.double(), b.double()
    return (a64 * b64).sum(-1) / (a64.norm(dim=-1) * b64.norm(dim=-1)).clamp_min(1e-30)


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / pi per row: 0 for parallel vectors, 1 for opposite ones."""
    return torch.arccos(cosine_rows(a, b).clamp(-1.0, 1.0)) / math.pi


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row of a [B, T] mask (right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


@dataclass
class ScanStats:
    """Running sums over calibration tokens for every span (k, n), indexed [k, n].

    Only entries with n >= 1 and k + n <= num_layers are meaningful. The sums (not means) are
    kept so they add across batches and across processes.
    """

    num_layers: int
    cos_sum: torch.Tensor
    angular_sum: torch.Tensor
    angular_last_sum: torch.Tensor
    cos_last_sum: torch.Tensor
    tokens: torch.Tensor
    samples: torch.Tensor
    norm_sum: torch.Tensor
    norm_max: torch.Tensor

    @classmethod
    def empty(cls, num_layers: int) -> "ScanStats":
        zeros = lambda: torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64)  # noqa: E731
        scalar = lambda: torch.zeros((), dtype=torch.float64)  # noqa: E731
        per_state = lambda: torch.zeros(num_layers + 1, dtype=torch.float64)  # noqa: E731
        return cls(num_layers, zeros(), zeros(), zeros(), zeros(), scalar(), scalar(), per_state(), per_state())

    def update(self, hidden: list[torch.Tensor], mask: torch.Tensor, chunk: int = 256) -> None:
        """Add one batch: `hidden` holds X_0 .. X_L, each [B, T, d]; `mask` [B, T] marks real tokens.

        Per-token cosines of every (X_k, X_m) pair come from one batched float32 matmul per chunk
        of tokens (small chunks stay in cache); the sums are kept in float64.
        """
        keep = mask.bool().reshape(-1).to(hidden[0].device)
        rows = [h.reshape(-1, h.shape[-1]) for h in hidden]
        if not bool(keep.all()):
            rows = [r[keep] for r in rows]
        last = last_token_index(mask).to(hidden[0].device)
        batch_rows = torch.arange(mask.shape[0], device=hidden[0].device)
        last_rows = [h[batch_rows, last] for h in hidden]
        # Per-token norms in float32 (no float64 copy of every hidden state), summed in float64.
        norms = torch.stack([r.float().norm(dim=-1) for r in rows]).double()   # [L+1, N]
        self.norm_sum += norms.sum(1).cpu()
        self.norm_max = torch.maximum(self.norm_max, norms.max(1).values.cpu())
        for start in range(0, rows[0].shape[0], chunk):
            self._add_pairs([r[start:start + chunk] for r in rows], self.cos_sum, self.angular_sum)
        self._add_pairs(last_rows, self.cos_last_sum, self.angular_last_sum)
        self.tokens += float(keep.sum())
        self.samples += float(mask.shape[0])

    def _add_pairs(self, rows: list[torch.Tensor], cos_total: torch.Tensor, angular_total: torch.Tensor) -> None:
        unit = torch.nn.functional.normalize(torch.stack(rows, dim=1).float(), dim=-1)   # [N, L+1, d]
        cos = (unit @ unit.transpose(1, 2)).clamp(-1.0, 1.0)                                # [N, L+1, L+1]
        cos_total += self._by_span(cos.double().sum(0).cpu())
        angular_total += self._by_span((torch.arccos(cos) / math.pi).double().sum(0).cpu())

    def _by_span(self, pair: torch.Tensor) -> torch.Tensor:
        """Re-index a [k, m] matrix of (X_k, X_m) sums to [k, n] with n = m - k (zeros where invalid)."""
        out = torch.zeros_like(pair)
        for k in range(self.num_layers):
            out[k, 1:self.num_layers - k + 1] = pair[k, k + 1:]
        return out

    def all_reduce(self) -> None:
        """Sum the statistics across torch.distributed ranks (no-op in a single process)."""
        all_reduce_sum([self.cos_sum, self.angular_sum, self.angular_last_sum, self.cos_last_sum,
                        self.tokens, self.samples, self.norm_sum])
        all_reduce_max([self.norm_max])

    def valid(self) -> torch.Tensor:
        """Boolean [L+1, L+1] mask of the meaningful (k, n) entries."""
        k = torch.arange(self.num_layers + 1).unsqueeze(1)
        n = torch.arange(self.num_layers + 1).unsqueeze(0)
        return (n >= 1) & (k + n <= self.num_layers)

    def _mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(self.valid(), total / count.clamp_min(1), torch.full_like(total, float("nan")))

    def span_cosine(self) -> torch.Tensor:
        """Mean cosine(X_k, X_{k+n}) over all tokens (LLM-Streamline); higher = more redundant."""
        return self._mean(self.cos_sum, self.tokens)

    def span_angular(self) -> torch.Tensor:
        """Mean angular distance over all tokens (Gromov et al.); lower = more redundant."""
        return self._mean(self.angular_sum, self.tokens)

    def span_angular_last(self) -> torch.Tensor:
        """Mean angular distance on each sample's last token (ReplaceMe's reference code)."""
        return self._mean(self.angular_last_sum, self.samples)

    def massive_ratio(self) -> torch.Tensor:
        """Per hidden state X_k: the largest token norm over the mean token norm. Values in the
        hundreds mark "massive activations" (Sun et al., 2024), e.g. on attention-sink tokens."""
        return self.norm_max / (self.norm_sum / self.tokens.clamp_min(1)).clamp_min(1e-12)

    def massive_creators(self, threshold: float = 20.0) -> list[int]:
        """Blocks k whose output X_{k+1} carries massive activations that their input X_k lacks.

        Later blocks rely on those activations, and no linear map of the block before a span
        reproduces them, so ReplaceMe keeps these blocks out of its cuts.
        """
        ratio = self.massive_ratio()
        return [k for k in range(self.num_layers) if ratio[k + 1] >= threshold and ratio[k] < threshold]

    def block_influence(self) -> torch.Tensor:
        """BI_k = 1 - mean cos(X_k, X_{k+1}) per block (ShortGPT); low BI = the block changes little."""
        return 1.0 - self.span_cosine()[: self.num_layers, 1]


# Span scores a user can select by name: (accessor, True when lower means more redundant).
SPAN_SCORES = {
    "angular": (ScanStats.span_angular, True),
    "angular-last": (ScanStats.span_angular_last, True),
    "cosine": (ScanStats.span_cosine, False),
}


def redundancy(stats: ScanStats, score: str) -> torch.Tensor:
    """The [k, n] matrix of a named score, oriented so that lower = more redundant (NaN where invalid)."""
    accessor, lower_is_better = SPAN_SCORES[score]
    values = accessor(stats)
    return values if lower_is_better else -values
