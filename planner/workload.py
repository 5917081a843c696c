"""Workloads: distributions of input and output lengths, and seeded sampling.

A length distribution is a probability mass function over the integers 1..max. Input
and output lengths are coupled by a Gaussian copula with correlation ``correlation``
(the paper's translation task has strongly correlated lengths), or, for a trace, by
the trace's own pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def normal_cdf(x: FloatArray) -> FloatArray:
    """Standard normal CDF (vectorised; |error| < 1.5e-7)."""
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (
        0.254829592
        + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf = 1.0 - poly * np.exp(-z * z)
    out: FloatArray = 0.5 * (1.0 + np.sign(x) * erf)
    return out


class LengthDistribution:
    """A distribution over token counts 1..max, as a probability mass function."""

    __slots__ = ("_cdf", "_mean", "_pmf", "_survival", "description")

    def __init__(self, pmf: Sequence[float] | FloatArray, description: str = "") -> None:
        p = np.asarray(pmf, dtype=np.float64)
        if p.ndim != 1 or p.size == 0:
            raise ValueError("pmf must be a non-empty 1-D array")
        if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError("pmf must be finite, non-negative and not all zero")
        nz = np.nonzero(p)[0]
        p = p[: nz[-1] + 1] / p.sum()
        self._pmf: FloatArray = p
        self._cdf: FloatArray = np.minimum(np.cumsum(p), 1.0)
        # survival[k] = P(L > k) for k = 0..max
        self._survival: FloatArray = np.concatenate(([1.0], 1.0 - self._cdf))
        self._mean = float(np.dot(np.arange(1, p.size + 1), p))
        self.description = description

    # -- constructors ------------------------------------------------------------
    @classmethod
    def truncated_normal(
        cls, mean: float, std: float, max: int, min: int = 1
    ) -> LengthDistribution:
        """A normal(mean, std) rounded to integers and truncated to [min, max]."""
        if not 1 <= min <= max:
            raise ValueError(f"need 1 <= min <= max, got min={min}, max={max}")
        if std < 0:
            raise ValueError("std must be >= 0")
        ks = np.arange(1, max + 1, dtype=np.float64)
        if std == 0:
            k = int(np.clip(round(mean), min, max))
            pmf = np.zeros(max)
            pmf[k - 1] = 1.0
        else:
            hi = normal_cdf((ks + 0.5 - mean) / std)
            lo = normal_cdf((ks - 0.5 - mean) / std)
            pmf = np.maximum(hi - lo, 0.0)
            pmf[: min - 1] = 0.0
            if pmf.sum() <= 0:
                raise ValueError(
                    f"normal(mean={mean}, std={std}) has no mass in [{min}, {max}]"
                )
        return cls(pmf, f"normal(mean={mean:g}, std={std:g}, max={max})")

    @classmethod
    def fixed(cls, length: int) -> LengthDistribution:
        pmf = np.zeros(length)
        pmf[length - 1] = 1.0
        return cls(pmf, f"fixed({length})")

    @classmethod
    def from_samples(cls, samples: Sequence[int] | IntArray) -> LengthDistribution:
        s = np.asarray(samples, dtype=np.int64)
        if s.size == 0 or (s < 1).any():
            raise ValueError("samples must be non-empty and >= 1")
        return cls(np.bincount(s)[1:].astype(np.float64), f"empirical(n={s.size})")

    # -- statistics ----------------------------------------------------------------
    @property
    def pmf(self) -> FloatArray:
        """P(L = k) at index k-1."""
        return self._pmf

    @property
    def max(self) -> int:
        return int(self._pmf.size)

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        ks = np.arange(1, self.max + 1)
        return float(math.sqrt(max(np.dot(ks * ks, self._pmf) - self._mean**2, 0.0)))

    def percentile(self, q: float) -> int:
        """Smallest length L with P(length <= L) >= q/100."""
        if not 0 <= q <= 100:
            raise ValueError("q must be in [0, 100]")
        i = int(np.searchsorted(self._cdf, q / 100.0 - 1e-12, side="left"))
        return min(i + 1, self.max)

    def survival(self, k: int) -> float:
        """P(L > k)."""
        if k < 0:
            return 1.0
        if k >= self.max:
            return 0.0
        return float(self._survival[k])

    def expected_max(self, n: int) -> float:
        """E[max of n independent draws] (how long a static batch of n runs)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        return float(np.sum(1.0 - np.concatenate(([0.0], self._cdf[:-1])) ** n))

    def quantile_of(self, u: FloatArray) -> IntArray:
        """Lengths at uniform draws ``u`` (inverse CDF)."""
        idx = np.searchsorted(self._cdf, u, side="left")
        out: IntArray = np.minimum(idx, self.max - 1).astype(np.int64) + 1
        return out

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        return self.quantile_of(rng.random(n))

    def __repr__(self) -> str:
        return f"LengthDistribution({self.description or 'pmf'}, mean={self.mean:.1f})"


class Workload:
    """Input and output length distributions of a service's traffic."""

    __slots__ = ("correlation", "input", "name", "output", "pairs")

    def __init__(
        self,
        input: LengthDistribution,
        output: LengthDistribution,
        correlation: float = 0.0,
        name: str = "custom",
        pairs: tuple[IntArray, IntArray] | None = None,
    ) -> None:
        if not -1.0 <= correlation <= 1.0:
            raise ValueError("correlation must be in [-1, 1]")
        self.input = input
        self.output = output
        self.correlation = float(correlation)
        self.name = name
        self.pairs = pairs

    def sample(self, n: int, rng: np.random.Generator) -> tuple[IntArray, IntArray]:
        """``n`` (input, output) length pairs, deterministic for a given generator."""
        if self.pairs is not None:
            idx = rng.integers(0, self.pairs[0].size, size=n)
            return self.pairs[0][idx], self.pairs[1][idx]
        z1 = rng.standard_normal(n)
        z2 = rng.standard_normal(n)
        rho = self.correlation
        z2 = rho * z1 + math.sqrt(max(1.0 - rho * rho, 0.0)) * z2
        return self.input.quantile_of(normal_cdf(z1)), self.output.quantile_of(normal_cdf(z2))

    def __repr__(self) -> str:
        return (
            f"Workload({self.name}: input mean {self.input.mean:.0f} max {self.input.max}, "
            f"output mean {self.output.mean:.0f} p99 {self.output.percentile(99)} "
            f"max {self.output.max}, correlation {self.correlation:g})"
        )
