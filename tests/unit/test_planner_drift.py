"""Traffic drift (``planner/drift.py``): bucket masses, TV distances, the judgement and
the observed workload, on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exegpt.planner.drift import (
    DriftReport,
    bucket_masses,
    judge,
    observed_histogram,
    observed_workload,
    tv_distance,
)
from exegpt.planner.workload import LengthDistribution, Workload
from exegpt.planner.workload_presets import get_workload

# The workers' buckets: 1, 2, 4, ..., 32768, +Inf.
BOUNDS = [float(2**i) for i in range(16)] + [math.inf]


def bucket_of(length: int) -> int:
    """The index of the power-of-two bucket holding ``length``."""
    return next(k for k, b in enumerate(BOUNDS) if length <= b)


def counts(**at: int) -> list[int]:
    """Bucket counts with ``n`` requests at each length: ``counts(l100=5)``."""
    out = [0] * len(BOUNDS)
    for key, n in at.items():
        out[bucket_of(int(key[1:]))] += n
    return out


def fixed(length: int) -> LengthDistribution:
    return LengthDistribution.fixed(length)


def test_a_point_mass_at_100_tokens_is_all_in_the_bucket_64_to_128() -> None:
    masses = bucket_masses(fixed(100), BOUNDS)
    assert masses.sum() == pytest.approx(1.0)
    assert masses[bucket_of(100)] == 1.0 and BOUNDS[bucket_of(100)] == 128.0
    assert np.count_nonzero(masses) == 1


def test_bucket_edges_are_upper_inclusive() -> None:
    # 64 is in (32, 64], 65 in (64, 128].
    assert bucket_masses(fixed(64), BOUNDS)[6] == 1.0
    assert bucket_masses(fixed(65), BOUNDS)[7] == 1.0
    # A uniform on 1..4: 1 in (0,1], 2 in (1,2], 3 and 4 in (2,4].
    uniform = LengthDistribution.from_bins([1, 5], [1.0])
    assert bucket_masses(uniform, BOUNDS)[:4].tolist() == pytest.approx([0.25, 0.25, 0.5, 0.0])


def test_a_length_past_the_last_bound_is_in_the_inf_bucket() -> None:
    masses = bucket_masses(fixed(40_000), BOUNDS)
    assert masses[-1] == 1.0


def test_identical_distributions_are_at_distance_zero() -> None:
    s = get_workload("summarization")
    masses = bucket_masses(s.input, BOUNDS)
    assert tv_distance(masses * 10_000, masses) == pytest.approx(0.0, abs=1e-12)


def test_disjoint_distributions_are_at_distance_one() -> None:
    assert tv_distance(counts(l10=500), bucket_masses(fixed(100), BOUNDS)) == 1.0


def test_half_the_mass_moved_is_distance_one_half() -> None:
    assert tv_distance(counts(l100=50, l10=50), bucket_masses(fixed(100), BOUNDS)) == 0.5


def test_no_observation_is_no_distance() -> None:
    assert tv_distance([0] * len(BOUNDS), bucket_masses(fixed(100), BOUNDS)) == 0.0


def test_judge_reports_both_sides_and_the_requests() -> None:
    planned = Workload(fixed(100), fixed(20))
    report = judge(
        planned, BOUNDS, counts(l100=1500), counts(l20=900, l300=300),
        threshold=0.2, min_requests=1000,
    )  # fmt: skip
    assert report.input_distance == 0.0
    assert report.output_distance == 0.25
    assert report.requests == 1200  # the fewer: finished outputs
    assert report.judged and report.drifted and report.distance == 0.25


def test_no_drift_under_the_threshold() -> None:
    planned = Workload(fixed(100), fixed(20))
    report = judge(
        planned, BOUNDS, counts(l100=1900, l10=100), counts(l20=2000),
        threshold=0.2, min_requests=1000,
    )  # fmt: skip
    assert report.input_distance == pytest.approx(0.05)
    assert report.judged and not report.drifted


def test_below_the_minimum_count_never_drifts() -> None:
    planned = Workload(fixed(100), fixed(20))
    report = judge(
        planned, BOUNDS, counts(l5000=999), counts(l5000=999), threshold=0.2, min_requests=1000
    )
    assert report.input_distance == 1.0 and report.output_distance == 1.0
    assert not report.judged and not report.drifted


def test_judge_rejects_counts_that_do_not_match_the_buckets() -> None:
    with pytest.raises(ValueError, match="one count per bucket"):
        judge(Workload(fixed(1), fixed(1)), BOUNDS, [1, 2], counts(l1=1), threshold=0.2,
              min_requests=1)  # fmt: skip
    with pytest.raises(ValueError, match="last histogram bucket bound must be \\+Inf"):
        bucket_masses(fixed(1), [1.0, 2.0])


def test_a_report_is_frozen() -> None:
    report = DriftReport(
        input_distance=0.1, output_distance=0.3, requests=5, threshold=0.2, min_requests=1
    )
    with pytest.raises(ValueError, match="frozen"):
        report.requests = 6  # type: ignore[misc]


def test_the_observed_histogram_has_one_bin_per_bucket() -> None:
    h = observed_histogram(BOUNDS, counts(l100=30, l200=10), max_length=2048)
    # (64, 128] -> [65, 129), (128, 256] -> [129, 257).
    assert h.edges == [65, 129, 257] and h.weights == [30.0, 10.0]
    dist = LengthDistribution.histogram(h.edges, h.weights)
    assert (dist.min, dist.max) == (65, 256)
    assert dist.mean == pytest.approx(0.75 * 96.5 + 0.25 * 192.5)


def test_the_smallest_buckets_are_single_lengths() -> None:
    h = observed_histogram(BOUNDS, counts(l1=1, l2=1, l3=2), max_length=2048)
    assert h.edges == [1, 2, 3, 5] and h.weights == [1.0, 1.0, 2.0]


def test_empty_buckets_between_observed_ones_are_kept() -> None:
    h = observed_histogram(BOUNDS, counts(l3=1, l100=1), max_length=2048)
    assert h.edges == [3, 5, 9, 17, 33, 65, 129] and h.weights == [1, 0, 0, 0, 0, 1]


def test_the_inf_bucket_is_clamped_to_the_longest_length() -> None:
    h = observed_histogram(BOUNDS, counts(l40000=4), max_length=50_000)
    assert h.edges == [32769, 50_001] and h.weights == [4.0]


def test_buckets_past_the_longest_length_fold_into_the_last_one_below() -> None:
    h = observed_histogram(BOUNDS, counts(l1500=3, l3000=1, l40000=1), max_length=2048)
    # (1024, 2048] -> [1025, 2049) takes the counts of (2048, 4096] and (32768, +Inf).
    assert h.edges == [1025, 2049] and h.weights == [5.0]
    h = observed_histogram(BOUNDS, counts(l100=1, l1500=3), max_length=1500)
    assert h.edges[-1] == 1501


def test_an_empty_side_is_rejected_with_its_name() -> None:
    with pytest.raises(ValueError, match="no output lengths were observed"):
        observed_workload(BOUNDS, counts(l100=3), [0] * len(BOUNDS), max_length=2048)


def test_the_observed_workload_is_a_spec_of_independent_histograms() -> None:
    spec = observed_workload(BOUNDS, counts(l100=3), counts(l20=1, l40=1), max_length=2048)
    assert spec.correlation == 0.0
    workload = spec.build()
    assert workload.correlation == 0.0
    assert (workload.input.min, workload.input.max) == (65, 128)
    assert (workload.output.min, workload.output.max) == (17, 64)
    # What was observed is what the workload predicts, bucket by bucket.
    bi = bucket_masses(workload.input, BOUNDS)
    assert tv_distance(counts(l100=3), bi) == pytest.approx(0.0, abs=1e-12)
    assert tv_distance(counts(l20=1, l40=1), bucket_masses(workload.output, BOUNDS)) == (
        pytest.approx(0.0, abs=1e-12)
    )
    # It round-trips through JSON, as it does through the deployment's status.
    again = type(spec).model_validate(spec.model_dump(mode="json"))
    assert again == spec


def test_the_observed_workload_is_deterministic() -> None:
    a = observed_workload(BOUNDS, counts(l100=3, l7=2), counts(l20=1), max_length=2048)
    b = observed_workload(BOUNDS, counts(l100=3, l7=2), counts(l20=1), max_length=2048)
    assert a.model_dump_json() == b.model_dump_json()


def test_a_histogram_that_reaches_keeps_the_longest_length_with_one_request() -> None:
    h = observed_histogram(BOUNDS, counts(l100=30), max_length=512, reach=True)
    # (64, 128], nothing observed in [129, 512), one request at 512
    assert h.edges == [65, 129, 512, 513] and h.weights == [30.0, 0.0, 1.0]
    assert LengthDistribution.histogram(h.edges, h.weights).max == 512
    # counts that already end at the longest length need no tail
    h = observed_histogram(BOUNDS, counts(l300=5), max_length=300, reach=True)
    assert h.edges == [257, 301] and h.weights == [5.0]


def test_counts_all_past_the_longest_length_fill_the_bucket_that_ends_there() -> None:
    h = observed_histogram(BOUNDS, counts(l700=4, l5000=1), max_length=512)
    assert h.edges == [257, 513] and h.weights == [5.0]


def test_the_observed_workload_keeps_the_declared_longest_lengths() -> None:
    seen_in, seen_out = counts(l100=2000), counts(l10=1500, l20=500)
    spec = observed_workload(BOUNDS, seen_in, seen_out, max_length=2048, longest=(512, 80))
    workload = spec.build()
    assert (workload.input.max, workload.output.max) == (512, 80)
    # the one request at each longest length moves no percentile the planner uses
    bare = observed_workload(BOUNDS, seen_in, seen_out, max_length=2048).build()
    assert (bare.input.max, bare.output.max) == (128, 32)
    assert workload.output_p99 == bare.output_p99
    # and shifts the mean by one request's share: 2000 observed outputs, one of 80
    assert workload.output.mean == pytest.approx((2000 * bare.output.mean + 80) / 2001)
    # the model's context caps the declared lengths
    capped = observed_workload(BOUNDS, seen_in, seen_out, max_length=256, longest=(512, 80))
    assert capped.build().input.max == 256
