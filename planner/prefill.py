"""The prompt lengths a prefill (encode) step is priced at: those the engine
actually batches. A padded batch computes every prompt at the batch's longest; a
packed batch computes each prompt's own tokens, so its cost is the mean of the
per-prompt costs (the attention's quadratic part makes that more than the cost at
the mean length)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .workload import LengthDistribution

PACKED_NODES = 8
"""Equal-probability bins of the input distribution a packed batch is priced over."""


class PrefillLengths:
    """Lengths, each with a weight, to average an encode stage's cost over."""

    def __init__(self, inputs: LengthDistribution, padded: bool) -> None:
        self.inputs = inputs
        self.padded = padded
        self._packed = _bin_means(inputs, PACKED_NODES)

    def expected(self, batch: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(lengths, weights) for a batch of ``batch`` prompts drawn from the workload:
        the expected longest of ``batch`` when padded, the input distribution's bin
        means when packed."""
        if self.padded:
            return (self.inputs.expected_max(max(round(batch), 1)),), (1.0,)
        return self._packed

    def of(self, prompts: NDArray[np.float64]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(lengths, weights) for the given prompts' lengths."""
        if self.padded:
            return (float(prompts.max()),), (1.0,)
        values, counts = np.unique(prompts, return_counts=True)
        w = counts / counts.sum()
        return tuple(float(v) for v in values), tuple(float(x) for x in w)


def _bin_means(dist: LengthDistribution, bins: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Means of ``bins`` near-equal-probability bins of ``dist``, with the bins'
    probabilities: the same mean as ``dist``, a slightly smaller spread."""
    pmf = dist.pmf
    lengths = np.arange(1, pmf.size + 1, dtype=np.float64)
    mid_cdf = np.cumsum(pmf) - pmf / 2
    which = np.minimum((mid_cdf * bins).astype(np.int64), bins - 1)
    mass = np.bincount(which, weights=pmf, minlength=bins)
    total = np.bincount(which, weights=pmf * lengths, minlength=bins)
    keep = mass > 0
    means = total[keep] / mass[keep]
    weights = mass[keep] / mass[keep].sum()
    return tuple(float(v) for v in means), tuple(float(x) for x in weights)
