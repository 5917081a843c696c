"""Traffic drift: how far the served request lengths are from a planned workload.

The workers count the prompt and output lengths they serve in Prometheus histograms
(bucket ``k`` holds the lengths in ``(bounds[k-1], bounds[k]]``, the first bucket
starting at 0 and the last bound being +Inf). This module compares such counts with a
:class:`~exegpt.planner.workload.Workload` and builds the workload they describe:

- :func:`bucket_masses`: the probability a length distribution puts in each bucket;
- :func:`tv_distance`: the total-variation distance between observed counts and those
  masses, ``0.5 * sum |p_observed - p_planned|`` (0: the same bucket shares, 1: no
  bucket in common);
- :func:`judge`: both sides' distances, the requests counted, and whether the traffic
  drifted against a threshold and a minimum request count (:class:`DriftReport`);
- :func:`observed_workload`: a ``WorkloadSpec`` of two histograms, one bin per bucket,
  lengths uniform inside each bin, the +Inf bucket ending at a given longest length.

The buckets are coarse: an observed length is only known to within its bucket (the
workers' have four per doubling, so about 19 %), and so is the observed workload. The
two sides are counted separately (a request's prompt and output length are not paired
in the histograms), so the observed workload treats them as independent (correlation 0).

Pure: numpy and pydantic, no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .workload import FloatArray, LengthDistribution, Workload
from .workload_spec import MAX_LENGTH, HistogramSpec, LengthSpec, WorkloadSpec

Side = str  # "input" or "output"


def _check_bounds(bounds: Sequence[float]) -> list[float]:
    b = [float(x) for x in bounds]
    if not b:
        raise ValueError("histogram bucket bounds are empty")
    if not math.isinf(b[-1]) or b[-1] < 0:
        raise ValueError("the last histogram bucket bound must be +Inf")
    if any(math.isnan(x) for x in b) or any(y <= x for x, y in itertools.pairwise(b)):
        raise ValueError("histogram bucket bounds must be strictly increasing")
    return b


def _check_counts(counts: Sequence[float], bounds: Sequence[float], side: Side) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size != len(bounds):
        raise ValueError(
            f"{side}: one count per bucket is needed ({len(bounds)} buckets, got {c.size} counts)"
        )
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError(f"{side}: bucket counts must be finite and non-negative")
    return c


def bucket_masses(dist: LengthDistribution, bounds: Sequence[float]) -> FloatArray:
    """The probability ``dist`` puts in each bucket ``(bounds[k-1], bounds[k]]`` (the
    first bucket from 0, the last bound +Inf); sums to 1."""
    b = _check_bounds(bounds)
    cdf = dist.cdf

    def at_most(x: float) -> float:  # P(L <= x)
        if math.isinf(x):
            return 1.0
        k = math.floor(x)
        if k < 1:
            return 0.0
        return 1.0 if k >= cdf.size else float(cdf[k - 1])

    upper = np.array([at_most(x) for x in b])
    masses: FloatArray = np.diff(np.concatenate(([0.0], upper)))
    return np.maximum(masses, 0.0)


def tv_distance(
    counts: Sequence[float] | FloatArray, masses: Sequence[float] | FloatArray
) -> float:
    """Total-variation distance between observed bucket ``counts`` and planned bucket
    ``masses``: ``0.5 * sum |p_observed - p_planned|``, in [0, 1]. No observation is
    at distance 0 (nothing contradicts the plan)."""
    c = np.asarray(counts, dtype=np.float64)
    m = np.asarray(masses, dtype=np.float64)
    if c.shape != m.shape:
        raise ValueError(f"{c.size} counts for {m.size} bucket masses")
    total = float(c.sum())
    if total <= 0:
        return 0.0
    return float(min(1.0, 0.5 * np.abs(c / total - m / m.sum()).sum()))


class DriftReport(BaseModel):
    """How far the observed traffic is from the planned workload, per side."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_distance: float = Field(ge=0, le=1, description="TV distance of prompt lengths")
    output_distance: float = Field(ge=0, le=1, description="TV distance of output lengths")
    requests: int = Field(
        ge=0, description="requests counted: the fewer of admitted prompts and finished outputs"
    )
    threshold: float = Field(gt=0, le=1)
    min_requests: int = Field(ge=1)

    @property
    def judged(self) -> bool:
        """Whether enough requests were counted to judge."""
        return self.requests >= self.min_requests

    @property
    def distance(self) -> float:
        """The larger of the two sides' distances."""
        return max(self.input_distance, self.output_distance)

    @property
    def drifted(self) -> bool:
        """Judged, and either side at or past the threshold."""
        return self.judged and self.distance >= self.threshold


def judge(
    workload: Workload,
    bounds: Sequence[float],
    input_counts: Sequence[float],
    output_counts: Sequence[float],
    *,
    threshold: float,
    min_requests: int,
) -> DriftReport:
    """Compare the observed bucket counts of both sides with ``workload``."""
    b = _check_bounds(bounds)
    ci = _check_counts(input_counts, b, "input")
    co = _check_counts(output_counts, b, "output")
    return DriftReport(
        input_distance=round(tv_distance(ci, bucket_masses(workload.input, b)), 6),
        output_distance=round(tv_distance(co, bucket_masses(workload.output, b)), 6),
        requests=int(min(ci.sum(), co.sum())),
        threshold=threshold,
        min_requests=min_requests,
    )


def observed_histogram(
    bounds: Sequence[float],
    counts: Sequence[float],
    max_length: int,
    side: Side = "lengths",
    *,
    reach: bool = False,
) -> HistogramSpec:
    """One side's bucket counts as a histogram of bins: the integers of bucket
    ``(lo, hi]`` are the bin ``[floor(lo) + 1, floor(hi) + 1)``, sharing its count
    uniformly. Lengths past ``max_length`` do not exist: the +Inf bucket ends there, and
    a bucket wholly past it adds its count to the last bucket below. Leading and
    trailing empty buckets are dropped. ``reach``: the histogram still ends at
    ``max_length`` when the counts stop short of it, with a one-length bin there
    counting one request (the longest length a deployment declared it serves stays
    its longest, so its request limits and KV caches are sized for it; one request in
    the thousand or more a drift is judged on moves no percentile the planner uses).

    Raises ``ValueError`` when the side counted nothing.
    """
    b = _check_bounds(bounds)
    c = _check_counts(counts, b, side)
    if not 1 <= max_length < MAX_LENGTH:
        raise ValueError(f"max_length must be in [1, {MAX_LENGTH - 1}], got {max_length}")
    if c.sum() <= 0:
        raise ValueError(
            f"no {side} lengths were observed: an observed workload needs at least one "
            "counted request on each side"
        )
    starts: list[int] = []
    stops: list[int] = []
    weights: list[float] = []
    pending = 0.0  # counts of buckets with no length, given to the next bucket that has
    lo = 0.0
    for hi, n in zip(b, c, strict=True):
        start = math.floor(lo) + 1
        stop = max_length + 1 if math.isinf(hi) else min(math.floor(hi), max_length) + 1
        lo = hi
        if stop <= start:
            if start > max_length and weights:
                weights[-1] += float(n)  # past the longest length: the last bucket below
            else:
                pending += float(n)
            continue
        starts.append(start)
        stops.append(stop)
        weights.append(float(n) + pending)
        pending = 0.0
    nonzero = [i for i, w in enumerate(weights) if w > 0]
    first, last = nonzero[0], nonzero[-1]
    edges = [*starts[first : last + 1], stops[last]]
    kept = weights[first : last + 1]
    if reach and edges[-1] <= max_length:
        if edges[-1] < max_length:  # the lengths between: none observed
            edges.append(max_length)
            kept.append(0.0)
        edges.append(max_length + 1)
        kept.append(1.0)
    return HistogramSpec(edges=edges, weights=kept)


def observed_workload(
    bounds: Sequence[float],
    input_counts: Sequence[float],
    output_counts: Sequence[float],
    max_length: int,
    longest: tuple[int, int] | None = None,
) -> WorkloadSpec:
    """The workload the observed bucket counts describe: each side a histogram of bins
    (``observed_histogram``), the sides independent (correlation 0: the histograms do
    not pair a request's prompt with its output). ``longest``: the declared longest
    input and output, which each side then ends at (capped at ``max_length``): the
    workers refuse anything longer, and a plan for shorter traffic must still serve
    them. ``.build()`` gives the ``Workload``."""
    caps = (max_length, max_length) if longest is None else (
        min(longest[0], max_length), min(longest[1], max_length)
    )  # fmt: skip
    reach = longest is not None
    return WorkloadSpec(
        input=LengthSpec(
            histogram=observed_histogram(bounds, input_counts, caps[0], "input", reach=reach)
        ),
        output=LengthSpec(
            histogram=observed_histogram(bounds, output_counts, caps[1], "output", reach=reach)
        ),
        correlation=0.0,
    )


__all__ = [
    "DriftReport",
    "bucket_masses",
    "judge",
    "observed_histogram",
    "observed_workload",
    "tv_distance",
]
