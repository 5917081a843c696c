"""Isotonic regression: the closest non-decreasing sequence to noisy measurements.

Costs measured on a shared machine scatter; where a quantity cannot fall as its
argument grows (a step of more sequences does at least the work of one of fewer), a
measured point below its predecessor is scatter, and pooling it with its neighbours
keeps the measurements' mean where cutting or lifting it would bias them."""

from __future__ import annotations

from collections.abc import Sequence


def non_decreasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-decreasing sequence through ``values``
    (pool-adjacent-violators): a run of values that falls is replaced by its mean."""
    blocks: list[tuple[float, int]] = []  # (mean, count) of each pooled run
    for v in values:
        mean, count = float(v), 1
        while blocks and blocks[-1][0] > mean:
            m, c = blocks.pop()
            mean, count = (m * c + mean * count) / (c + count), c + count
        blocks.append((mean, count))
    return [m for m, c in blocks for _ in range(c)]
