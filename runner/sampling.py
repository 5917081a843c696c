"""Choosing each sequence's next token from its logits, with the sampling settings of its
request.

A sampled token depends only on the logits, the request's settings, its seed and the
token's index in the output: the draw of token ``i`` of a request with seed ``s`` is
the uniform number :func:`uniform` gives ``(s, i)``, turned into a token by inverting
the cumulative distribution of the row's (temperature-scaled, top-k) probabilities.
Whichever process samples it (the last stage of a pipeline, an encoder or a decoder),
and whatever batch it shares, a request with a seed gets the same output.

A step samples all its rows at once: one softmax, one cumulative sum and one search
over the batch, whatever the rows' settings, so that a sampled step costs what the
XProfiler measures for it (it times this function) rather than a few small operations
per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .generate import GREEDY, Sampling

_MASK64 = (1 << 64) - 1
_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class RowSampling:
    """The settings of one row: ``temperature`` 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    index: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @classmethod
    def of(cls, sampling: Sampling, seed: int, index: int) -> RowSampling:
        if sampling.greedy:
            return cls(0.0, 0, seed, index)
        return cls(sampling.temperature, sampling.top_k, seed, index)


def uniform(seed: int, index: int) -> float:
    """A number in [0, 1) that depends only on ``(seed, index)`` (SplitMix64 of the
    pair: a counter-based draw, the same on every process and device)."""
    z = (seed * _SEED_STRIDE + index + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return (z >> 11) / float(1 << 53)


def sample_rows(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """The next token of each row of ``logits`` ``[B, vocab]``: the arg-max of a greedy
    row; for a sampled row, the token whose cumulative probability first exceeds the
    row's :func:`uniform` draw."""
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{len(rows)} sampling rows for {logits.shape[0]} logits")
    tokens: list[int] = logits.argmax(dim=-1).tolist()
    sampled = [b for b, row in enumerate(rows) if not row.greedy]
    if not sampled:
        return tokens
    device = logits.device
    picked = [rows[b] for b in sampled]
    index = torch.tensor(sampled, device=device) if len(sampled) < len(rows) else None
    scores = (logits if index is None else logits[index]).float()
    temps = torch.tensor([r.temperature for r in picked], device=device)
    scores = scores / temps.clamp_min(1e-6).unsqueeze(1)
    ks = [min(r.top_k, scores.shape[1]) for r in picked]
    if any(ks):
        top = scores.topk(max(ks), dim=-1).values
        k = torch.tensor([max(x, 1) for x in ks], device=device)
        kth = top.gather(1, (k - 1).unsqueeze(1))
        limited = torch.tensor([x > 0 for x in ks], device=device).unsqueeze(1)
        scores = scores.masked_fill(limited & (scores < kth), float("-inf"))
    cdf = torch.softmax(scores, dim=-1).cumsum(dim=-1)
    u = torch.tensor([uniform(r.seed, r.index) for r in picked], device=device)
    draw = (u * cdf[:, -1]).unsqueeze(1)
    chosen = torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp_max(cdf.shape[1] - 1)
    for b, token in zip(sampled, chosen.tolist(), strict=True):
        tokens[b] = int(token)
    return tokens


__all__ = ["GREEDY", "RowSampling", "sample_rows", "uniform"]
