"""Workloads: length distributions, sampling, traces, presets and the CR's workload spec."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from exegpt.planner import workload_presets
from exegpt.planner.traces import (
    TraceError,
    arrival_times,
    derive_histogram,
    load_trace,
    read_trace,
    trace_data_dir,
)
from exegpt.planner.workload import (
    LengthDistribution,
    Workload,
    copula_pearson,
    fit_truncated_normal,
    truncated_normal_moments,
)
from exegpt.planner.workload_presets import (
    PAPER_PRESETS,
    TRACE_PRESETS,
    canonical_name,
    get_preset,
    get_workload,
    preset_names,
)
from exegpt.planner.workload_spec import WorkloadSpec

REPO = Path(__file__).resolve().parents[2]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- LengthDistribution ----------------------------------------------------------------
def test_pmf_is_normalised_trimmed_and_read_only() -> None:
    d = LengthDistribution([0.0, 2.0, 6.0, 0.0, 0.0])
    assert d.max == 3
    assert d.min == 2
    np.testing.assert_allclose(d.pmf, [0.0, 0.25, 0.75])
    assert d.mean == pytest.approx(2.75)
    assert d.std == pytest.approx(math.sqrt(0.25 * 0.75))
    with pytest.raises(ValueError):
        d.pmf[0] = 1.0


def test_truncated_normal_far_from_bounds_has_the_normal_moments() -> None:
    d = LengthDistribution.truncated_normal(500, 40, 2000)
    assert d.mean == pytest.approx(500, abs=1e-3)
    assert d.std == pytest.approx(math.sqrt(40**2 + 1 / 12), abs=1e-2)  # rounding adds 1/12
    assert d.percentile(50) == 500
    assert d.percentile(99) == pytest.approx(500 + 2.326 * 40, abs=1.5)


def test_percentiles_of_a_small_distribution() -> None:
    d = LengthDistribution.from_points([2, 5, 9], [1, 2, 1])
    assert d.percentile(0) == 2
    assert d.percentile(25) == 2
    assert d.percentile(26) == 5
    assert d.percentile(75) == 5
    assert d.percentile(76) == 9
    assert d.percentile(100) == 9
    assert d.survival(1) == 1.0
    assert d.survival(2) == pytest.approx(0.75)
    assert d.survival(9) == 0.0
    with pytest.raises(ValueError):
        d.percentile(101)


@pytest.mark.parametrize("n", [1, 4, 32, 256])
def test_expected_max_matches_monte_carlo(n: int) -> None:
    d = get_workload("G").output
    draws = d.sample(4000 * n, rng(n)).reshape(4000, n).max(axis=1)
    se = draws.std() / math.sqrt(draws.size)
    assert d.expected_max(n) == pytest.approx(draws.mean(), abs=4 * se + 0.5)
    if n == 1:
        assert d.expected_max(1) == pytest.approx(d.mean)
    assert d.expected_max(n) == d.expected_max(n)  # memoised, same value
    with pytest.raises(ValueError):
        d.expected_max(0)


def test_expected_max_is_increasing_and_bounded() -> None:
    d = get_workload("S").output
    values = [d.expected_max(n) for n in (1, 2, 8, 64, 4096)]
    assert values == sorted(values)
    assert values[-1] <= d.max


def test_inverse_cdf_never_returns_a_zero_probability_length() -> None:
    d = LengthDistribution.fixed(100)
    np.testing.assert_array_equal(d.quantile_of(np.array([0.0, 0.5, 1.0])), [100, 100, 100])


def test_sampling_is_deterministic_for_a_seeded_generator() -> None:
    d = get_workload("C1").input
    np.testing.assert_array_equal(d.sample(100, rng(7)), d.sample(100, rng(7)))
    w = get_workload("T")
    a = w.sample(100, rng(7))
    b = w.sample(100, rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], w.sample(100, rng(8))[0])


def test_samples_follow_the_distribution() -> None:
    d = get_workload("C2").output
    s = d.sample(50_000, rng(1))
    assert s.mean() == pytest.approx(d.mean, rel=0.01)
    assert s.std() == pytest.approx(d.std, rel=0.02)
    assert np.percentile(s, 99) == pytest.approx(d.percentile(99), abs=10)


@pytest.mark.parametrize("rho", [-0.5, 0.0, 0.15, 0.8])
def test_sampled_correlation_is_as_requested(rho: float) -> None:
    w = Workload(
        LengthDistribution.truncated_normal(300, 50, 1000),
        LengthDistribution.truncated_normal(200, 40, 1000),
        correlation=rho,
    )
    i, o = w.sample(40_000, rng(2))
    assert np.corrcoef(i, o)[0, 1] == pytest.approx(rho, abs=0.02)
    assert w.pearson == pytest.approx(rho, abs=0.01)


@pytest.mark.parametrize("name", ["T", "S", "chat"])
@pytest.mark.parametrize(("p", "q"), [(1, 1), (2, 1), (1, 2)])
def test_cross_moment_matches_monte_carlo(name: str, p: int, q: int) -> None:
    w = get_workload(name)
    i, o = w.sample(400_000, rng(5))
    mc = np.mean(i.astype(np.float64) ** p * o.astype(np.float64) ** q)
    assert w.cross_moment(p, q) == pytest.approx(mc, rel=0.01)
    assert w.input.moment(p) == pytest.approx(np.mean(i.astype(np.float64) ** p), rel=0.01)


def test_cross_moment_without_correlation_is_the_product_of_moments() -> None:
    w = get_workload("G").with_correlation(0.0)
    assert w.cross_moment(2, 1) == pytest.approx(w.input.moment(2) * w.mean_output)
    assert w.input.moment(1) == pytest.approx(w.mean_input)
    assert w.input.moment(2) == pytest.approx(w.input.std**2 + w.mean_input**2)


def test_pearson_of_the_copula_matches_monte_carlo_for_skewed_marginals() -> None:
    w = get_workload("chat")
    i, o = w.sample(100_000, rng(3))
    assert w.pearson == pytest.approx(np.corrcoef(i, o)[0, 1], abs=0.015)
    assert copula_pearson(w.input, w.output, 0.0) == 0.0


# -- histograms ------------------------------------------------------------------------
def test_bins_spread_their_weight_uniformly() -> None:
    d = LengthDistribution.histogram([1, 3, 7], [1.0, 2.0])  # bins [1,3) and [3,7)
    np.testing.assert_allclose(d.pmf, [1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 1 / 6])
    d = LengthDistribution.histogram([4, 6, 8], [3, 1])
    assert d.min == 4
    assert d.max == 7
    np.testing.assert_allclose(d.pmf[3:], [0.375, 0.375, 0.125, 0.125])
    np.testing.assert_allclose(d.pmf[:3], 0.0)


def test_points_are_point_masses() -> None:
    d = LengthDistribution.histogram([10, 3], [1, 3])
    assert d.max == 10
    assert d.pmf[2] == pytest.approx(0.75)
    assert d.pmf[9] == pytest.approx(0.25)
    assert d.pmf.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("values", "weights", "message"),
    [
        ([1, 2, 3, 4], [1, 1], "len\\(weights\\) \\+ 1 bin edges"),
        ([3, 2, 5], [1, 1], "strictly increasing"),
        ([1, 2, 3], [0, 0], "not all be zero"),
        ([1, 2], [1, -1], ">= 0"),
        ([2, 2], [1, 1], "distinct"),
        ([0, 2], [1, 1], ">= 1"),
        ([1.5, 2], [1, 1], "integers"),
    ],
)
def test_histogram_errors(values: list[float], weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LengthDistribution.histogram(values, weights)  # type: ignore[arg-type]


# -- fitting the truncated normal ------------------------------------------------------------
@pytest.mark.parametrize(
    ("mean", "std", "max_"), [(32, 13, 80), (128, 68, 320), (10, 7, 30), (50, 0.3, 100)]
)
def test_fit_truncated_normal_reproduces_the_moments(mean: float, std: float, max_: int) -> None:
    mu, sigma = fit_truncated_normal(mean, std, max_)
    m, s = truncated_normal_moments(mu, sigma, max_)
    assert (m, s) == pytest.approx((mean, std), abs=1e-3)
    d = LengthDistribution.with_moments(mean, std, max_)
    assert (d.mean, d.std) == pytest.approx((mean, std), abs=1e-3)


def test_fit_truncated_normal_explains_unreachable_moments() -> None:
    with pytest.raises(ValueError, match=r"at most about 147\.8.*lower std, or raise max"):
        fit_truncated_normal(256, 252, 512)
    with pytest.raises(ValueError, match="must lie in"):
        fit_truncated_normal(600, 10, 512)


# -- workloads ---------------------------------------------------------------------------
def test_workload_helpers() -> None:
    w = get_workload("S")
    assert w.mean_input == w.input.mean
    assert w.mean_output == pytest.approx(32, abs=1e-3)
    assert w.output_p99 == 63


def test_describe_is_json_friendly() -> None:
    d = get_workload("T").describe()
    again = json.loads(json.dumps(d))
    assert again["name"] == "translation"
    assert set(again["output"]) == {"mean", "std", "min", "p50", "p90", "p99", "max"}
    assert again["output"]["p99"] == 292
    assert again["correlation"] == 0.8
    assert 0.75 < again["pearson"] < 0.8
    assert again["sampling"] == "gaussian copula"


def test_scaled_scales_the_lengths() -> None:
    w = get_workload("C1")
    assert w.scaled() is w
    s = w.scaled(input_factor=0.5, output_factor=1.15)
    assert s.mean_input == pytest.approx(0.5 * w.mean_input, rel=0.005)
    assert s.mean_output == pytest.approx(1.15 * w.mean_output, rel=0.005)
    assert s.output.std == pytest.approx(1.15 * w.output.std, rel=0.01)
    assert abs(s.output.max - 1.15 * w.output.max) <= 1
    assert s.output_p99 == pytest.approx(1.15 * w.output_p99, abs=2)
    assert s.correlation == w.correlation
    assert "output x1.15" in s.name
    with pytest.raises(ValueError):
        w.scaled(output_factor=0)


def test_workload_rejects_bad_pairs() -> None:
    d = LengthDistribution.fixed(3)
    with pytest.raises(ValueError, match="same length"):
        Workload(d, d, pairs=(np.array([1, 2]), np.array([1])))
    with pytest.raises(ValueError, match=">= 1"):
        Workload(d, d, pairs=(np.array([0]), np.array([1])))


# -- traces ------------------------------------------------------------------------------
def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def small_trace(tmp_path: Path) -> Path:
    rows = [(0.0, 10, 5), (0.5, 20, 9), (1.0, 30, 12), (1.5, 40, 20), (2.0, 1000, 3), (2.5, 7, 0)]
    body = "".join(f"{a},{i},{o}\n" for a, i, o in rows)
    return write_csv(tmp_path / "t.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n" + body)


def test_load_trace_gives_marginals_pairs_and_pearson(small_trace: Path) -> None:
    w = load_trace(small_trace)
    inputs = np.array([10, 20, 30, 40, 1000])  # the row with 0 output tokens is dropped
    outputs = np.array([5, 9, 12, 20, 3])
    assert w.pairs is not None
    np.testing.assert_array_equal(w.pairs[0], inputs)
    np.testing.assert_array_equal(w.pairs[1], outputs)
    assert w.input.mean == pytest.approx(inputs.mean())
    assert w.output.percentile(100) == 20
    assert w.correlation == pytest.approx(np.corrcoef(inputs, outputs)[0, 1])
    assert w.pearson == pytest.approx(w.correlation)
    assert w.name == "t"
    i, o = w.sample(1000, rng())
    pairs = set(zip(inputs.tolist(), outputs.tolist(), strict=True))
    assert set(zip(i.tolist(), o.tolist(), strict=True)) <= pairs
    assert w.cross_moment(2, 1) == pytest.approx(np.mean(inputs**2 * outputs))
    assert w.describe()["sampling"] == "trace pairs"
    assert w.describe()["pairs"] == 5


def test_load_trace_truncates(small_trace: Path) -> None:
    w = load_trace(small_trace, max_input=100, max_output=15)
    assert w.pairs is not None
    np.testing.assert_array_equal(w.pairs[0], [10, 20, 30])
    t = read_trace(small_trace, max_input=100)
    assert t.rows == 6
    assert t.dropped == 2
    assert t.arrived_at is not None
    np.testing.assert_allclose(t.arrived_at, [0.0, 0.5, 1.0, 1.5])
    with pytest.raises(TraceError, match="raise max_input"):
        load_trace(small_trace, max_input=5)


def test_scaled_trace_workload_scales_its_pairs(small_trace: Path) -> None:
    w = load_trace(small_trace).scaled(output_factor=2.0)
    assert w.pairs is not None
    np.testing.assert_array_equal(w.pairs[1], [10, 18, 24, 40, 6])
    assert w.output.max == 40


def test_arrival_times(small_trace: Path) -> None:
    np.testing.assert_allclose(arrival_times(small_trace), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])


def test_trace_errors_name_the_problem(tmp_path: Path, small_trace: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match=r"no column 'prompt'.*num_prefill_tokens.*input_column="):
        load_trace(small_trace, input_column="prompt")
    with pytest.raises(TraceError, match=r"no column 'x'.*output_column="):
        load_trace(small_trace, output_column="x")
    with pytest.raises(TraceError, match="no column 'when'"):
        arrival_times(small_trace, column="when")
    with pytest.raises(TraceError, match="empty"):
        load_trace(write_csv(tmp_path / "e.csv", ""))
    with pytest.raises(TraceError, match="no rows"):
        load_trace(write_csv(tmp_path / "h.csv", "num_prefill_tokens,num_decode_tokens\n"))
    bad = write_csv(tmp_path / "b.csv", "num_prefill_tokens,num_decode_tokens\n3,4\n2.5,1\n")
    with pytest.raises(TraceError, match=r"line 3.*whole token counts"):
        load_trace(bad)
    text = write_csv(tmp_path / "s.csv", "num_prefill_tokens,num_decode_tokens\nabc,4\n")
    with pytest.raises(TraceError, match="non-numeric"):
        load_trace(text)


def test_derive_histogram_keeps_mean_and_tail() -> None:
    x = np.maximum(rng(4).lognormal(4.0, 1.0, 20_000).astype(np.int64), 1)
    h = derive_histogram(x)
    assert 32 <= len(h.counts) <= 64
    assert sum(h.counts) == x.size
    d = h.distribution()
    assert d.mean == pytest.approx(x.mean(), rel=0.02)
    assert d.percentile(99) == pytest.approx(np.percentile(x, 99), rel=0.02)
    assert d.max == x.max()


# -- presets -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PAPER_PRESETS, ids=lambda p: p.short)
def test_paper_presets_reproduce_the_table(preset: workload_presets.PaperPreset) -> None:
    w = get_workload(preset.short)
    t = preset.table
    assert w.name == preset.name
    assert w.input.max == t.input_max
    assert w.output.max == t.output_max
    assert w.output.mean == pytest.approx(t.output_mean, abs=1e-3)
    assert w.output.std == pytest.approx(t.output_std, abs=1e-3)
    assert abs(w.output_p99 - t.output_p99) <= 2
    if preset.short in ("S", "T"):
        # the table's input std is beyond any truncated normal on [1, max]: the
        # table's values are the underlying normal's parameters
        with pytest.raises(ValueError):
            fit_truncated_normal(t.input_mean, t.input_std, t.input_max)
        assert (preset.input.mu, preset.input.sigma) == (t.input_mean, t.input_std)
        assert w.input.mean == pytest.approx(t.input_mean, abs=1)
    else:
        assert w.input.mean == pytest.approx(t.input_mean, abs=1e-3)
        assert w.input.std == pytest.approx(t.input_std, abs=1e-3)
    assert w.correlation == (0.8 if preset.short == "T" else 0.15)


def test_preset_names_short_long_any_case() -> None:
    for short, long in [
        ("S", "summarization"),
        ("T", "translation"),
        ("G", "code-generation"),
        ("C1", "conversation-1"),
        ("C2", "conversation-2"),
    ]:
        assert canonical_name(short) == long
        assert canonical_name(short.lower()) == long
        assert canonical_name(long.upper()) == long
        assert get_workload(short).name == long
    assert get_workload("chat").name == "chat"
    assert get_workload("code").name == "code"
    assert len(preset_names()) == 12
    with pytest.raises(ValueError, match=r"unknown workload preset 'x'.*summarization"):
        get_workload("x")


@pytest.mark.parametrize("preset", TRACE_PRESETS, ids=lambda p: p.name)
def test_trace_presets_match_their_trace_statistics(
    preset: workload_presets.TracePreset,
) -> None:
    w = preset.workload()
    assert 32 <= len(preset.input.counts) <= 64
    assert 32 <= len(preset.output.counts) <= 64
    assert sum(preset.input.counts) == sum(preset.output.counts) == preset.kept
    assert w.input.mean == pytest.approx(preset.trace_input_mean, rel=0.01)
    assert w.output.mean == pytest.approx(preset.trace_output_mean, rel=0.01)
    assert abs(w.output_p99 - preset.trace_output_p99) <= 2
    assert w.pearson == pytest.approx(preset.pearson, abs=0.002)
    assert get_preset(preset.name) is preset


def _trace_file(name: str) -> Path:
    path = trace_data_dir() / name
    if not path.is_file():
        pytest.skip(f"trace data not available ({path}; set EXEGPT_TRACE_DATA)")
    return path


def test_trace_presets_rederive_from_the_traces(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/derive_trace_workloads.py --check re-derives CHAT and CODE from the
    traces and compares them with the committed constants."""
    for preset in TRACE_PRESETS:
        _trace_file(preset.source)
    spec = importlib.util.spec_from_file_location(
        "derive_trace_workloads", REPO / "benchmarks" / "derive_trace_workloads.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = module.main(["--check"])
    assert status == 0, capsys.readouterr().out


# -- the workload spec -----------------------------------------------------------------------
def test_spec_preset() -> None:
    w = WorkloadSpec.model_validate({"preset": "summarization"}).build()
    assert w.name == "summarization"
    assert WorkloadSpec.model_validate({"preset": "C2"}).build().name == "conversation-2"
    w = WorkloadSpec.model_validate({"preset": "T", "correlation": 0.6}).build()
    assert w.correlation == 0.6
    assert w.output_p99 == 292


def test_spec_normal_sides_have_the_declared_moments() -> None:
    spec = WorkloadSpec.model_validate(
        {
            "input": {"mean": 256, "std": 115, "max": 512},
            "output": {"mean": 64, "std": 30, "max": 160, "min": 2},
            "correlation": 0.2,
        }
    )
    w = spec.build()
    assert (w.input.mean, w.input.std) == pytest.approx((256, 115), abs=1e-3)
    assert (w.output.mean, w.output.std) == pytest.approx((64, 30), abs=1e-3)
    assert w.output.min == 2
    assert w.correlation == 0.2
    assert w.name == "custom"


def test_spec_histograms_and_mixed_sides() -> None:
    w = WorkloadSpec.model_validate(
        {
            "input": {"histogram": {"lengths": [100, 200], "weights": [1, 3]}},
            "output": {"histogram": {"edges": [1, 11, 21], "weights": [1, 1]}},
        }
    ).build()
    assert w.input.mean == pytest.approx(175)
    assert w.output.mean == pytest.approx(10.5)
    assert w.correlation == 0.0
    w = WorkloadSpec.model_validate(
        {
            "input": {"mean": 50, "std": 10, "max": 100},
            "output": {"histogram": {"lengths": [7], "weights": [1]}},
        }
    ).build()
    assert w.output.mean == 7


def test_spec_round_trips() -> None:
    data = {
        "input": {"histogram": {"edges": [1, 5, 9], "weights": [2.0, 1.0]}},
        "output": {"mean": 20.0, "std": 5.0, "max": 60},
        "correlation": 0.3,
    }
    spec = WorkloadSpec.model_validate(data)
    assert spec.model_dump(exclude_none=True) == data
    again = WorkloadSpec.model_validate_json(spec.model_dump_json(exclude_none=True))
    assert again == spec


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "workload: give a preset"),
        (
            {"preset": "S", "input": {"mean": 5, "std": 1, "max": 9}},
            "give either preset or input and output, not both",
        ),
        ({"input": {"mean": 5, "std": 1, "max": 9}}, "workload.output is missing"),
        (
            {"input": {"mean": 5, "std": 1, "max": 9}, "output": {"mean": 32, "std": 1, "max": 10}},
            "workload.output.max must be >= workload.output.mean",
        ),
        (
            {"input": {"mean": 5, "std": 1}, "output": {"mean": 5, "std": 1, "max": 9}},
            "workload.input.max is missing",
        ),
        (
            {"input": {"mean": 5, "max": 9}, "output": {"mean": 5, "std": 1, "max": 9}},
            "workload.input.std is missing",
        ),
        (
            {"input": {"mean": 5, "std": 1, "max": 9, "min": 6}, "output": {"preset": 1}},
            "extra",
        ),
        (
            {
                "input": {"mean": 5, "std": 1, "max": 9, "min": 6},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.min must be <= workload.input.mean",
        ),
        (
            {
                "input": {"mean": 256, "std": 252, "max": 512},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.std=252 is not reachable.*lower std, or raise max",
        ),
        (
            {
                "input": {
                    "mean": 5,
                    "std": 1,
                    "max": 9,
                    "histogram": {"lengths": [1], "weights": [1]},
                },
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input: give either workload.input.histogram or mean/std/max",
        ),
        (
            {"input": {"std": 1}, "output": {"mean": 3, "std": 0, "max": 3}},
            "workload.input.mean is missing",
        ),
        (
            {
                "input": {"histogram": {"lengths": [1, 2], "weights": [1]}},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.histogram.weights must have one entry per length",
        ),
        (
            {
                "input": {"histogram": {"edges": [1, 2], "weights": [1, 1]}},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.histogram.weights must have one entry per bin",
        ),
        (
            {
                "input": {"histogram": {"edges": [3, 2, 5], "weights": [1, 1]}},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.histogram.edges must be strictly increasing",
        ),
        (
            {
                "input": {"histogram": {"lengths": [1], "edges": [1, 2], "weights": [1]}},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "give either workload.input.histogram.lengths .* or workload.input.histogram.edges",
        ),
        (
            {
                "input": {"histogram": {"lengths": [1, 2], "weights": [0, 0]}},
                "output": {"mean": 3, "std": 0, "max": 3},
            },
            "workload.input.histogram.weights must not all be zero",
        ),
        ({"preset": "summary"}, "preset\n.*'summarization'"),
        ({"preset": "S", "extra": 1}, "extra\n.*Extra inputs are not permitted"),
        ({"preset": "S", "correlation": 1.5}, "correlation\n.*less than or equal to 1"),
        (
            {"input": {"mean": 5, "std": -1, "max": 9}, "output": {"mean": 3, "std": 0, "max": 3}},
            "input.std\n.*greater than or equal to 0",
        ),
    ],
)
def test_spec_errors_name_the_field_and_the_fix(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        WorkloadSpec.model_validate(data)


def test_spec_schema_is_crd_friendly() -> None:
    schema = WorkloadSpec.model_json_schema(by_alias=True)
    text = json.dumps(schema)
    assert "oneOf" not in text
    assert "discriminator" not in text
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"preset", "input", "output", "correlation"}
    assert schema["x-kubernetes-validations"]
    length = schema["$defs"]["LengthSpec"]
    assert length["additionalProperties"] is False
    assert length["x-kubernetes-validations"]
    histogram = schema["$defs"]["HistogramSpec"]
    assert histogram["properties"]["weights"]["maxItems"] > 0


# -- properties --------------------------------------------------------------------------------
weights_st = st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40).filter(
    lambda w: sum(w) > 0
)


@st.composite
def distributions(draw: st.DrawFn) -> LengthDistribution:
    kind = draw(st.sampled_from(["normal", "points", "bins"]))
    if kind == "normal":
        max_ = draw(st.integers(1, 3000))
        mean = draw(st.floats(1, max_))
        std = draw(st.floats(0, 2 * max_))
        return LengthDistribution.truncated_normal(mean, std, max_)
    w = draw(weights_st)
    if kind == "points":
        lengths = draw(
            st.lists(st.integers(1, 5000), min_size=len(w), max_size=len(w), unique=True)
        )
        return LengthDistribution.from_points(lengths, w)
    widths = draw(st.lists(st.integers(1, 200), min_size=len(w), max_size=len(w)))
    start = draw(st.integers(1, 100))
    return LengthDistribution.from_bins(np.cumsum([start, *widths]), w)


@settings(max_examples=60, deadline=None)
@given(distributions(), st.floats(0, 100), st.floats(0, 100))
def test_percentile_is_monotone_in_q(d: LengthDistribution, q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert d.min <= d.percentile(lo) <= d.percentile(hi) <= d.max
    assert d.pmf[d.percentile(hi) - 1] > 0


@settings(max_examples=60, deadline=None)
@given(distributions(), st.integers(0, 2**32 - 1))
def test_samples_lie_in_the_support(d: LengthDistribution, seed: int) -> None:
    s = d.sample(200, rng(seed))
    assert s.min() >= max(1, d.min)
    assert s.max() <= d.max
    assert (d.pmf[s - 1] > 0).all()


@settings(max_examples=40, deadline=None)
@given(distributions(), st.floats(0.2, 5.0))
def test_scaled_mean_scales(d: LengthDistribution, factor: float) -> None:
    s = d.scaled(factor)
    assert s.pmf.sum() == pytest.approx(1.0)
    # the mean scales up to the rounding to whole tokens (at most 1/2) and the mass
    # below length 1/2 that is folded up to length 1
    assert factor * d.mean - 0.5 - 1e-9 <= s.mean <= factor * d.mean + 1.0 + 1e-9


@settings(max_examples=40, deadline=None)
@given(distributions(), distributions(), st.floats(-1, 1), st.integers(0, 2**32 - 1))
def test_workload_samples_lie_in_the_support(
    a: LengthDistribution, b: LengthDistribution, rho: float, seed: int
) -> None:
    w = Workload(a, b, correlation=rho)
    i, o = w.sample(100, rng(seed))
    assert i.min() >= 1 and i.max() <= a.max
    assert o.min() >= 1 and o.max() <= b.max
    assert -1.0 <= w.pearson <= 1.0


# -- bounded work: what a spec costs does not grow with its numbers ---------------------------


@pytest.mark.parametrize(
    ("mean", "std", "lo", "hi"),
    [
        (1000.0, 1e12, 1, 1 << 20),
        (5872.58, 1.797e308, 2917, 5992),
        (300000.0, 300000.0, 1, 1 << 20),
        (1000.0, math.inf, 1, 1 << 20),
    ],
)
def test_unreachable_std_is_refused_quickly_with_a_message(
    mean: float, std: float, lo: int, hi: int
) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"std .*lower std, or raise max|must be finite"):
        fit_truncated_normal(mean, std, hi, lo)
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("std", [1e12, 1.797e308, 5000.0])
def test_a_spec_with_an_unreachable_std_is_invalid_and_names_it(std: float) -> None:
    side = {"mean": 5872.58, "std": std, "min": 2917, "max": 5992}
    with pytest.raises(ValidationError, match=r"std"):
        WorkloadSpec.model_validate({"input": side, "output": {"mean": 64, "std": 30, "max": 160}})


def test_a_wide_range_is_fitted_quickly_and_exactly() -> None:
    start = time.perf_counter()
    w = WorkloadSpec.model_validate(
        {
            "input": {"mean": 1000, "std": 500, "max": 1 << 20},
            "output": {"mean": 300000, "std": 200000, "max": 1 << 20},
        }
    )
    built = w.build()
    assert time.perf_counter() - start < 3.0
    assert built is w.build()  # built once, by the validator
    width = float(1 << 20)
    assert abs(built.input.mean - 1000) < 1e-6 * width
    assert abs(built.input.std - 500) < 1e-6 * width
    assert abs(built.output.mean - 300000) < 1e-6 * width
    assert abs(built.output.std - 200000) < 1e-6 * width


def test_moments_of_a_narrow_normal_on_a_wide_range_match_the_whole_pmf() -> None:
    mu, sigma, top = 5000.3, 17.0, 1 << 20
    whole = LengthDistribution.truncated_normal(mu, sigma, top)
    assert truncated_normal_moments(mu, sigma, top) == pytest.approx(
        (whole.mean, whole.std), rel=1e-12
    )
