"""Workloads: distributions of input and output lengths, and seeded sampling.

A length distribution is a probability mass function over the integers 1..max. Input
and output lengths are coupled by a Gaussian copula with correlation ``correlation``
(the paper's translation task has strongly correlated lengths), or, for a trace, by
the trace's own pairs.

Distributions and workloads are immutable: their arrays are read-only, and the
derived quantities the simulator asks for repeatedly (percentiles, ``expected_max``,
the Pearson correlation) are memoised per instance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

# Percentiles reported by ``describe()``.
_DESCRIBE_PERCENTILES = (50, 90, 99)
# Beyond this many sigmas from the mean a normal's mass is below double precision.
_MASS_SIGMAS = 40.0
# Ranges wider than this are fitted on a scaled copy first (a start for Newton).
_FIT_WIDTH = 4096


def normal_cdf(x: FloatArray) -> FloatArray:
    """Standard normal CDF (vectorised; |error| < 1.5e-7)."""
    with np.errstate(over="ignore", under="ignore"):  # |x| -> inf is fine: erf -> 1
        z = np.abs(x) / math.sqrt(2.0)
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (
            0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
        )
        erf = 1.0 - poly * np.exp(-z * z)
    out: FloatArray = 0.5 * (1.0 + np.sign(x) * erf)
    return out


def _readonly(a: NDArray[Any]) -> NDArray[Any]:
    a.flags.writeable = False
    return a


def _mass_window(mean: float, std: float, lo: int, hi: int) -> tuple[int, int]:
    """The lengths in [lo, hi] within ``_MASS_SIGMAS`` sigmas of ``mean`` (empty when
    ``a > b``): outside them a normal has no mass in double precision."""
    a, b = mean - _MASS_SIGMAS * std, mean + _MASS_SIGMAS * std
    first = lo if not math.isfinite(a) else int(np.clip(math.floor(a), lo, hi))
    last = hi if not math.isfinite(b) else int(np.clip(math.ceil(b), lo, hi))
    if (math.isfinite(a) and a > hi) or (math.isfinite(b) and b < lo):
        return hi + 1, hi
    return first, last


def _window_pmf(mean: float, std: float, first: int, last: int) -> FloatArray:
    """Unnormalised P(round(N(mean, std)) = k) for k = first..last (one CDF evaluation
    per bin edge)."""
    edges = np.arange(first - 0.5, last + 1.0, 1.0, dtype=np.float64)
    with np.errstate(over="ignore"):  # a tiny std sends the bounds to +-inf: fine
        cdf = normal_cdf((edges - mean) / std)
    out: FloatArray = np.maximum(np.diff(cdf), 0.0)
    return out


def _truncated_normal_pmf(mean: float, std: float, lo: int, hi: int) -> FloatArray:
    """Unnormalised P(round(N(mean, std)) = k) for k = 1..hi, zero below ``lo`` (and
    where the normal has no mass, without evaluating it there)."""
    pmf: FloatArray = np.zeros(hi, dtype=np.float64)
    first, last = _mass_window(mean, std, lo, hi)
    if first <= last:
        pmf[first - 1 : last] = _window_pmf(mean, std, first, last)
    return pmf


def truncated_normal_moments(
    mu: float, sigma: float, max: int, min: int = 1
) -> tuple[float, float]:
    """(mean, std) of ``LengthDistribution.truncated_normal(mu, sigma, max, min)``.

    Only the lengths within ``_MASS_SIGMAS`` sigmas of ``mu`` are evaluated (the rest
    have no mass in double precision), so a narrow normal on a wide range is cheap.
    """
    if sigma <= 0:
        k = float(np.clip(round(mu), min, max))
        return k, 0.0
    first, last = _mass_window(mu, sigma, min, max)
    if first > last:
        return math.nan, math.nan
    ks = np.arange(first, last + 1, dtype=np.float64)
    pmf = _window_pmf(mu, sigma, first, last)
    total = float(pmf.sum())
    if total <= 0.0:
        return math.nan, math.nan
    mean = float(np.dot(ks, pmf)) / total
    var = float(np.dot((ks - mean) ** 2, pmf)) / total
    return mean, math.sqrt(var if var > 0.0 else 0.0)


def _uniform_std(width: float) -> float:
    """The std of the uniform distribution on ``width`` consecutive integers: no
    truncated normal on that range (a log-concave distribution) has a larger one."""
    return math.sqrt(max(width * width - 1.0, 0.0) / 12.0)


def _max_attainable_std(mean: float, max: int, min: int) -> float:
    """About the largest std a truncated normal on [min, max] with this mean reaches
    (on a range wider than ``_FIT_WIDTH``, from a scaled copy of the range)."""
    width = float(max - min + 1)
    if width > _FIT_WIDTH:
        f = (width - 1.0) / (_FIT_WIDTH - 1.0)
        scaled = _max_attainable_std(1.0 + (mean - min) / f, _FIT_WIDTH, 1)
        return scaled * f
    best = 0.0
    for sigma in np.geomspace(0.05 * width, 200.0 * width, 24):
        lo_mu, hi_mu = min - 50.0 * sigma, max + 50.0 * sigma
        for _ in range(50):  # the mean increases with mu: bisect for it
            mid = 0.5 * (lo_mu + hi_mu)
            m, _s = truncated_normal_moments(mid, float(sigma), max, min)
            if math.isnan(m) or m < mean:
                lo_mu = mid
            else:
                hi_mu = mid
        m, s = truncated_normal_moments(0.5 * (lo_mu + hi_mu), float(sigma), max, min)
        if not math.isnan(s) and abs(m - mean) < 1e-3 * width:
            best = np.maximum(best, s)
    return float(best)


def fit_truncated_normal(
    mean: float, std: float, max: int, min: int = 1, *, tol: float = 1e-6
) -> tuple[float, float]:
    """The (mu, sigma) of a normal whose discretised truncation to [min, max] has the
    given mean and std.

    ``LengthDistribution.truncated_normal(mu, sigma, max, min)`` with the result has
    ``mean`` and ``std`` to within ``tol`` (relative to the range). Raises ``ValueError``
    when no truncated normal on that range has these moments (for example a std close
    to or above the range's uniform distribution's, or a mean outside [min, max]).
    """
    if not 1 <= min <= max:
        raise ValueError(f"need 1 <= min <= max, got min={min}, max={max}")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError(f"mean {mean:g} and std {std:g} must be finite numbers")
    if not min <= mean <= max:
        raise ValueError(f"mean {mean:g} must lie in [min, max] = [{min}, {max}]")
    if std < 0:
        raise ValueError("std must be >= 0")
    if std == 0 or min == max:
        if std > 0:
            raise ValueError(f"std must be 0 when min == max == {max}")
        return float(mean), 0.0
    width = float(max - min + 1)
    uniform = _uniform_std(width)
    if std > uniform:
        # Checked first: no search can reach it, and a huge std must cost nothing.
        raise ValueError(
            f"no normal truncated to [{min}, {max}] has mean {mean:g} and std {std:g}: its "
            f"std is at most about {uniform:.1f} (a uniform distribution on the range has "
            "the largest std of any); lower std, or raise max"
        )
    start = (float(mean), math.log(std))
    if width > _FIT_WIDTH:
        # Fit a scaled copy of the range first: Newton on the whole range then starts
        # next to the answer and needs a step or two over the long arrays.
        f = (width - 1.0) / (_FIT_WIDTH - 1.0)
        try:
            mu, sigma = fit_truncated_normal(1.0 + (mean - min) / f, std / f, _FIT_WIDTH, 1)
        except ValueError:
            if std / f >= 10.0:  # rounding is negligible at this std: no fit either
                return _unreachable(mean, std, max, min)
        else:
            if sigma > 0:
                start = (min + (mu - 1.0) * f, math.log(sigma * f))
    found = _newton_fit(mean, std, max, min, start, tol)
    if found is not None:
        return found
    return _unreachable(mean, std, max, min)


def _unreachable(mean: float, std: float, max: int, min: int) -> tuple[float, float]:
    """Raise the error for moments no truncated normal on [min, max] has."""
    bound = _max_attainable_std(mean, max, min)
    uniform = _uniform_std(float(max - min + 1))
    raise ValueError(
        f"no normal truncated to [{min}, {max}] has mean {mean:g} and std {std:g}: with "
        f"that mean its std is at most about {bound:.1f} (a uniform distribution on the "
        f"range has std {uniform:.1f}); lower std, or raise max"
    )


def _newton_fit(
    mean: float, std: float, max: int, min: int, start: tuple[float, float], tol: float
) -> tuple[float, float] | None:
    """Newton on (mu, log sigma) from ``start`` with a finite-difference Jacobian and
    backtracking; None when it does not converge."""
    width = float(max - min + 1)
    target = np.array([mean, std])
    scale = np.array([width, width])

    def residual(p: FloatArray) -> FloatArray:
        try:
            m, s = truncated_normal_moments(float(p[0]), float(math.exp(p[1])), max, min)
        except OverflowError:
            m = s = math.nan
        out: FloatArray = (np.array([m, s]) - target) / scale
        return out

    p = np.array(start, dtype=np.float64)
    r = residual(p)
    for _ in range(100):
        norm = float(np.max(np.abs(r))) if np.isfinite(r).all() else math.inf
        if norm < tol:
            return float(p[0]), float(math.exp(p[1]))
        h = np.array([1e-4 * width, 1e-5])
        jac = np.empty((2, 2))
        for j in range(2):
            dp = np.zeros(2)
            dp[j] = h[j]
            jac[:, j] = (residual(p + dp) - r) / h[j]
        try:
            step = np.linalg.solve(jac, -r)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(step).all():
            return None
        step[1] = float(np.clip(step[1], -2.0, 2.0))
        t = 1.0
        while t > 1e-6:
            q = p + t * step
            rq = residual(q)
            if np.isfinite(rq).all() and float(np.max(np.abs(rq))) < norm:
                p, r = q, rq
                break
            t *= 0.5
        else:
            return None
    return None


class LengthDistribution:
    """A distribution over token counts 1..max, as a probability mass function."""

    __slots__ = (
        "_cache",
        "_cdf",
        "_cdf_before",
        "_mean",
        "_pmf",
        "_std",
        "_survival",
        "description",
    )

    def __init__(self, pmf: Sequence[float] | FloatArray, description: str = "") -> None:
        p = np.array(pmf, dtype=np.float64)
        if p.ndim != 1 or p.size == 0:
            raise ValueError("pmf must be a non-empty 1-D array")
        if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
            raise ValueError("pmf must be finite, non-negative and not all zero")
        nz = np.nonzero(p)[0]
        p = p[: nz[-1] + 1] / p.sum()
        self._pmf: FloatArray = _readonly(p)
        cdf = np.minimum(np.cumsum(p), 1.0)
        cdf[-1] = 1.0
        self._cdf: FloatArray = _readonly(cdf)
        # cdf_before[k-1] = P(L < k) = P(L <= k-1) for k = 1..max
        self._cdf_before: FloatArray = _readonly(np.concatenate(([0.0], cdf[:-1])))
        # survival[k] = P(L > k) for k = 0..max
        self._survival: FloatArray = _readonly(np.concatenate(([1.0], 1.0 - cdf)))
        ks = np.arange(1, p.size + 1, dtype=np.float64)
        self._mean = float(np.dot(ks, p))
        self._std = float(math.sqrt(max(float(np.dot((ks - self._mean) ** 2, p)), 0.0)))
        self._cache: dict[tuple[str, float], float] = {}
        self.description = description

    # -- constructors ------------------------------------------------------------
    @classmethod
    def truncated_normal(
        cls, mean: float, std: float, max: int, min: int = 1
    ) -> LengthDistribution:
        """A normal(mean, std) rounded to integers and truncated to [min, max].

        ``mean`` and ``std`` are the parameters of the underlying normal; the
        truncated distribution's own moments differ when the normal reaches past
        either bound (see ``with_moments``).
        """
        if not 1 <= min <= max:
            raise ValueError(f"need 1 <= min <= max, got min={min}, max={max}")
        if std < 0:
            raise ValueError("std must be >= 0")
        if std == 0:
            k = int(np.clip(round(mean), min, max))
            pmf = np.zeros(max)
            pmf[k - 1] = 1.0
        else:
            pmf = _truncated_normal_pmf(mean, std, min, max)
            if pmf.sum() <= 0:
                raise ValueError(f"normal(mean={mean}, std={std}) has no mass in [{min}, {max}]")
        return cls(pmf, f"normal(mean={mean:g}, std={std:g}, max={max})")

    @classmethod
    def with_moments(cls, mean: float, std: float, max: int, min: int = 1) -> LengthDistribution:
        """A truncated normal on [min, max] whose own mean and std are ``mean``, ``std``.

        Fits the underlying normal with ``fit_truncated_normal`` (raises ``ValueError``
        when no truncated normal on the range has these moments).
        """
        mu, sigma = fit_truncated_normal(mean, std, max, min)
        dist = cls.truncated_normal(mu, sigma, max, min)
        dist.description = f"truncated normal(mean={mean:g}, std={std:g}, max={max})"
        return dist

    @classmethod
    def fixed(cls, length: int) -> LengthDistribution:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        pmf = np.zeros(length)
        pmf[length - 1] = 1.0
        return cls(pmf, f"fixed({length})")

    @classmethod
    def from_samples(cls, samples: Sequence[int] | IntArray) -> LengthDistribution:
        s = np.asarray(samples, dtype=np.int64)
        if s.size == 0 or (s < 1).any():
            raise ValueError("samples must be non-empty and >= 1")
        return cls(np.bincount(s)[1:].astype(np.float64), f"empirical(n={s.size})")

    @classmethod
    def from_points(
        cls, lengths: Sequence[int] | IntArray, weights: Sequence[float] | FloatArray
    ) -> LengthDistribution:
        """Point masses: length ``lengths[i]`` has probability proportional to
        ``weights[i]``. Lengths must be distinct integers >= 1."""
        ls = np.asarray(lengths)
        w = np.asarray(weights, dtype=np.float64)
        if ls.ndim != 1 or ls.size == 0:
            raise ValueError("lengths must be a non-empty list")
        if w.shape != ls.shape:
            raise ValueError(
                f"weights must have one entry per length (got {w.size} weights for "
                f"{ls.size} lengths)"
            )
        if not np.all(np.equal(np.mod(ls, 1), 0)) or (ls < 1).any():
            raise ValueError("lengths must be integers >= 1")
        li = ls.astype(np.int64)
        if np.unique(li).size != li.size:
            raise ValueError("lengths must be distinct")
        _check_weights(w)
        pmf = np.zeros(int(li.max()))
        pmf[li - 1] = w
        return cls(pmf, f"points(n={li.size}, max={int(li.max())})")

    @classmethod
    def from_bins(
        cls, edges: Sequence[int] | IntArray, weights: Sequence[float] | FloatArray
    ) -> LengthDistribution:
        """Bins: the integers in [edges[i], edges[i+1]) share probability proportional
        to ``weights[i]`` uniformly. Edges are strictly increasing integers >= 1, one
        more than the weights; the largest length is ``edges[-1] - 1``."""
        e = np.asarray(edges)
        w = np.asarray(weights, dtype=np.float64)
        if e.ndim != 1 or e.size < 2:
            raise ValueError("edges must list at least two integers")
        if w.ndim != 1 or w.size != e.size - 1:
            raise ValueError(
                f"weights must have one entry per bin, len(edges) - 1 = {e.size - 1} (got {w.size})"
            )
        if not np.all(np.equal(np.mod(e, 1), 0)) or (e < 1).any():
            raise ValueError("edges must be integers >= 1")
        ei = e.astype(np.int64)
        widths = np.diff(ei)
        if (widths <= 0).any():
            raise ValueError("edges must be strictly increasing")
        _check_weights(w)
        w = w / w.sum()  # normalise first: tiny weights must not underflow once spread
        pmf = np.repeat(w / widths, widths)
        pmf = np.concatenate((np.zeros(int(ei[0]) - 1), pmf))
        return cls(pmf, f"bins(n={w.size}, max={int(ei[-1]) - 1})")

    @classmethod
    def histogram(
        cls,
        edges_or_lengths: Sequence[int] | IntArray,
        weights: Sequence[float] | FloatArray,
    ) -> LengthDistribution:
        """A histogram, read by the number of values given:

        - ``len(weights) + 1`` values are bin edges: the integers in
          [edge_i, edge_{i+1}) share ``weights[i]`` uniformly (``from_bins``);
        - ``len(weights)`` values are lengths, each a point mass (``from_points``).

        Weights are relative (normalised here); any non-negative numbers, not all
        zero, such as counts.
        """
        n = len(edges_or_lengths)
        if n == len(weights) + 1:
            return cls.from_bins(edges_or_lengths, weights)
        if n == len(weights):
            return cls.from_points(edges_or_lengths, weights)
        raise ValueError(
            f"a histogram needs len(weights) + 1 bin edges or len(weights) point lengths; "
            f"got {n} values for {len(weights)} weights"
        )

    # -- statistics ----------------------------------------------------------------
    @property
    def pmf(self) -> FloatArray:
        """P(L = k) at index k-1 (read-only)."""
        return self._pmf

    @property
    def cdf(self) -> FloatArray:
        """P(L <= k) at index k-1 (read-only)."""
        return self._cdf

    @property
    def max(self) -> int:
        return int(self._pmf.size)

    @property
    def min(self) -> int:
        """The smallest length with non-zero probability."""
        return int(np.argmax(self._pmf > 0)) + 1

    @property
    def mean(self) -> float:
        return self._mean

    @property
    def std(self) -> float:
        return self._std

    def moment(self, p: int) -> float:
        """E[L^p] (memoised)."""
        key = ("moment", float(p))
        hit = self._cache.get(key)
        if hit is None:
            ks = np.arange(1, self.max + 1, dtype=np.float64)
            hit = self._cache[key] = float(np.dot(ks**p, self._pmf))
        return hit

    def percentile(self, q: float) -> int:
        """Smallest length L with P(length <= L) >= q/100 (``min`` for q = 0)."""
        if not 0 <= q <= 100:
            raise ValueError("q must be in [0, 100]")
        key = ("p", float(q))
        hit = self._cache.get(key)
        if hit is None:
            target = max(q / 100.0 - 1e-12, 1e-300)
            i = int(np.searchsorted(self._cdf, target, side="left"))
            hit = self._cache[key] = float(min(i + 1, self.max))
        return int(hit)

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
        key = ("emax", float(n))
        hit = self._cache.get(key)
        if hit is None:
            # E[max] = sum_k P(max >= k) = sum_k 1 - P(L < k)^n
            hit = self._cache[key] = float(np.sum(1.0 - self._cdf_before**n))
        return hit

    def quantile_of(self, u: FloatArray) -> IntArray:
        """Lengths at uniform draws ``u`` in [0, 1] (inverse CDF)."""
        idx = np.searchsorted(self._cdf, u, side="right")
        out: IntArray = np.minimum(idx, self.max - 1).astype(np.int64) + 1
        return out

    def sample(self, n: int, rng: np.random.Generator) -> IntArray:
        return self.quantile_of(rng.random(n))

    # -- transformations -----------------------------------------------------------
    def scaled(self, factor: float) -> LengthDistribution:
        """The distribution of ``factor`` times the length, kept on the integers >= 1.

        The pmf is read as a density uniform on [k - 0.5, k + 0.5), stretched by
        ``factor`` and re-binned, so the mean scales by ``factor`` (up to the rounding
        at length 1) and the shape stays smooth.
        """
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"factor must be a positive number, got {factor}")
        if factor == 1.0:
            return self
        new_max = max(1, math.ceil((self.max + 0.5) * factor - 0.5))
        xp = np.arange(0.5, self.max + 1.0, 1.0)  # 0.5, 1.5, ..., max + 0.5
        fp = np.concatenate(([0.0], self._cdf))
        bounds = (np.arange(1, new_max + 1, dtype=np.float64) + 0.5) / factor
        cdf = np.interp(bounds, xp, fp)
        pmf = np.diff(np.concatenate(([0.0], cdf)))
        dist = LengthDistribution(np.maximum(pmf, 0.0))
        dist.description = f"{self.description or 'pmf'} x{factor:g}"
        return dist

    def describe(self) -> dict[str, float | int]:
        """JSON-friendly summary: mean, std, min, p50/p90/p99, max."""
        out: dict[str, float | int] = {"mean": self.mean, "std": self.std, "min": self.min}
        for q in _DESCRIBE_PERCENTILES:
            out[f"p{q}"] = self.percentile(q)
        out["max"] = self.max
        return out

    def __repr__(self) -> str:
        return f"LengthDistribution({self.description or 'pmf'}, mean={self.mean:.1f})"


def _check_weights(w: FloatArray) -> None:
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and >= 0")
    if w.sum() <= 0:
        raise ValueError("weights must not all be zero")


# Gauss grid for the copula's Pearson correlation: z in [-7, 7], midpoint weights.
_GRID_STEP = 0.025


def _copula_grid(
    x: LengthDistribution, y: LengthDistribution, rho: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Quadrature of a Gaussian copula: weights w over z in [-7, 7], X at each z1, and Y at
    (z1, z2) = Y(rho z1 + sqrt(1 - rho^2) z2)."""
    z = np.arange(-7.0, 7.0 + _GRID_STEP / 2, _GRID_STEP, dtype=np.float64)
    w = np.exp(-0.5 * z * z)
    w /= w.sum()
    xs = x.quantile_of(normal_cdf(z)).astype(np.float64)
    s = math.sqrt(max(1.0 - rho * rho, 0.0))
    ys = y.quantile_of(normal_cdf(rho * z[:, None] + s * z[None, :])).astype(np.float64)
    return w, xs, ys


def copula_pearson(x: LengthDistribution, y: LengthDistribution, rho: float) -> float:
    """Pearson correlation of (X, Y) coupled by a Gaussian copula with parameter rho."""
    if rho == 0.0 or x.std == 0.0 or y.std == 0.0:
        return 0.0
    w, xs, ys = _copula_grid(x, y, rho)
    ey_given = ys @ w  # E[Y | z1]
    # moments on the same grid, so the discretisation errors cancel
    ex = float(np.dot(w, xs))
    ey = float(np.dot(w, ey_given))
    sx = math.sqrt(max(float(np.dot(w, (xs - ex) ** 2)), 0.0))
    sy = math.sqrt(max(float(np.dot(w, ((ys - ey) ** 2) @ w)), 0.0))
    if sx == 0.0 or sy == 0.0:
        return 0.0
    cov = float(np.dot(w, xs * ey_given)) - ex * ey
    return float(np.clip(cov / (sx * sy), -1.0, 1.0))


def copula_cross_moment(
    x: LengthDistribution, y: LengthDistribution, rho: float, p: int = 1, q: int = 1
) -> float:
    """E[X^p Y^q] for (X, Y) coupled by a Gaussian copula with parameter rho: the
    independent part exactly, plus the covariance of X^p and Y^q from the quadrature."""
    independent = x.moment(p) * y.moment(q)
    if rho == 0.0 or x.std == 0.0 or y.std == 0.0:
        return independent
    w, xs, ys = _copula_grid(x, y, rho)
    xp = xs**p
    eyq_given = (ys**q) @ w
    cov = float(np.dot(w, xp * eyq_given)) - float(np.dot(w, xp)) * float(np.dot(w, eyq_given))
    return independent + cov


def pairs_pearson(inputs: IntArray, outputs: IntArray) -> float:
    """The Pearson correlation of paired lengths (0 when either is constant)."""
    a, b = inputs.astype(np.float64), outputs.astype(np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


class Workload:
    """Input and output length distributions of a service's traffic.

    ``correlation`` is the parameter of the Gaussian copula that couples input and
    output lengths when sampling from the marginals. A workload built from a trace
    carries the trace's (input, output) ``pairs``, which ``sample`` draws from
    directly; its ``correlation`` is then the measured Pearson correlation.
    """

    __slots__ = ("_cache", "correlation", "input", "name", "output", "pairs")

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
        if pairs is not None:
            a = np.array(pairs[0], dtype=np.int64)
            b = np.array(pairs[1], dtype=np.int64)
            if a.ndim != 1 or a.shape != b.shape or a.size == 0:
                raise ValueError("pairs must be two non-empty 1-D arrays of the same length")
            if (a < 1).any() or (b < 1).any():
                raise ValueError("pair lengths must be >= 1")
            pairs = (_readonly(a), _readonly(b))
        self.input = input
        self.output = output
        self.correlation = float(correlation)
        self.name = name
        self.pairs = pairs
        self._cache: dict[str, float] = {}

    @classmethod
    def from_pairs(
        cls, inputs: Sequence[int] | IntArray, outputs: Sequence[int] | IntArray, name: str
    ) -> Workload:
        """The empirical workload of given (input, output) length pairs: their
        marginals, the pairs themselves and their Pearson correlation."""
        a = np.asarray(inputs, dtype=np.int64)
        b = np.asarray(outputs, dtype=np.int64)
        if a.ndim != 1 or a.shape != b.shape or a.size == 0:
            raise ValueError("inputs and outputs must be non-empty 1-D, one per request")
        return cls(
            LengthDistribution.from_samples(a),
            LengthDistribution.from_samples(b),
            correlation=float(np.clip(pairs_pearson(a, b), -1.0, 1.0)),
            name=name,
            pairs=(a, b),
        )

    # -- statistics the simulator asks for -------------------------------------------
    @property
    def mean_input(self) -> float:
        return self.input.mean

    @property
    def mean_output(self) -> float:
        return self.output.mean

    @property
    def output_p99(self) -> int:
        """The 99th-percentile output length: the paper's latency bound is the time to
        generate an output this long."""
        return self.output.percentile(99)

    @property
    def pearson(self) -> float:
        """Pearson correlation of input and output lengths under this workload: of the
        pairs for a trace, else of the copula-coupled marginals (computed once)."""
        hit = self._cache.get("pearson")
        if hit is None:
            if self.pairs is not None:
                hit = pairs_pearson(*self.pairs)
            else:
                hit = copula_pearson(self.input, self.output, self.correlation)
            self._cache["pearson"] = hit
        return hit

    def cross_moment(self, input_power: int = 1, output_power: int = 1) -> float:
        """E[input^p * output^q] under this workload, with its correlation (e.g. p=2,
        q=1 for the KV-cache token-steps of a query); memoised."""
        key = f"cross_moment:{input_power}:{output_power}"
        hit = self._cache.get(key)
        if hit is None:
            if self.pairs is not None:
                a = self.pairs[0].astype(np.float64)
                b = self.pairs[1].astype(np.float64)
                hit = float(np.mean(a**input_power * b**output_power))
            else:
                hit = copula_cross_moment(
                    self.input, self.output, self.correlation, input_power, output_power
                )
            self._cache[key] = hit
        return hit

    # -- sampling --------------------------------------------------------------------
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

    # -- what-ifs ----------------------------------------------------------------------
    def scaled(self, input_factor: float = 1.0, output_factor: float = 1.0) -> Workload:
        """This workload with input lengths times ``input_factor`` and output lengths
        times ``output_factor`` (drift what-ifs). Trace pairs are scaled and rounded,
        and the marginals re-derived from them."""
        if input_factor == 1.0 and output_factor == 1.0:
            return self
        tag = []
        if input_factor != 1.0:
            tag.append(f"input x{input_factor:g}")
        if output_factor != 1.0:
            tag.append(f"output x{output_factor:g}")
        name = f"{self.name} ({', '.join(tag)})"
        if self.pairs is not None:
            for f in (input_factor, output_factor):
                if not (f > 0 and math.isfinite(f)):
                    raise ValueError(f"factor must be a positive number, got {f}")
            a = np.maximum(np.rint(self.pairs[0] * input_factor), 1).astype(np.int64)
            b = np.maximum(np.rint(self.pairs[1] * output_factor), 1).astype(np.int64)
            return Workload(
                LengthDistribution.from_samples(a),
                LengthDistribution.from_samples(b),
                self.correlation,
                name,
                pairs=(a, b),
            )
        return Workload(
            self.input.scaled(input_factor),
            self.output.scaled(output_factor),
            self.correlation,
            name,
        )

    def with_correlation(self, correlation: float) -> Workload:
        """The same marginals coupled by a Gaussian copula with ``correlation`` (trace
        pairs are dropped)."""
        return Workload(self.input, self.output, correlation, self.name)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary: per side mean, std, min, p50/p90/p99 and max, plus
        the copula parameter, the Pearson correlation and how pairs are drawn."""
        return {
            "name": self.name,
            "input": self.input.describe(),
            "output": self.output.describe(),
            "correlation": self.correlation,
            "pearson": self.pearson,
            "sampling": "trace pairs" if self.pairs is not None else "gaussian copula",
            "pairs": None if self.pairs is None else int(self.pairs[0].size),
        }

    def __repr__(self) -> str:
        return (
            f"Workload({self.name}: input mean {self.input.mean:.0f} max {self.input.max}, "
            f"output mean {self.output.mean:.0f} p99 {self.output.percentile(99)} "
            f"max {self.output.max}, correlation {self.correlation:g})"
        )
