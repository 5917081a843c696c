"""Choosing each sequence's next token from its logits, with the sampling settings of its
request.

A sampled token depends only on the logits, the request's settings, its seed and the
token's index in the output: the random draw of token ``i`` of a request with seed
``s`` comes from a generator seeded with ``(s, i)``. Whichever process samples it (the
last stage of a pipeline, an encoder or a decoder), and whatever batch it shares, a
request with a seed gets the same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .generate import GREEDY, Sampling, select_tokens

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


def sample_rows(logits: torch.Tensor, rows: Sequence[RowSampling]) -> list[int]:
    """The next token of each row of ``logits`` ``[B, vocab]``."""
    if len(rows) != logits.shape[0]:
        raise ValueError(f"{len(rows)} sampling rows for {logits.shape[0]} logits")
    tokens = logits.argmax(dim=-1).tolist()
    for b, row in enumerate(rows):
        if row.greedy:
            continue
        generator = torch.Generator(device=logits.device)
        generator.manual_seed((row.seed * _SEED_STRIDE + row.index) % (2**63))
        sampling = Sampling(greedy=False, temperature=row.temperature, top_k=row.top_k)
        tokens[b] = int(select_tokens(logits[b : b + 1], sampling, generator)[0])
    return [int(t) for t in tokens]


__all__ = ["GREEDY", "RowSampling", "sample_rows"]
