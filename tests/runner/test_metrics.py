"""The serving metrics: the registry's text exposition and ServingMetrics' series."""

from __future__ import annotations

import math
import re
import threading

import pytest

from exegpt.runner.metrics import (
    LATENCY_SECONDS,
    TOKEN_LENGTHS_32K,
    Counter,
    Gauge,
    Histogram,
    Registry,
    ServingMetrics,
)

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text: str) -> dict[str, float]:
    """Sample lines of an exposition by ``name{labels}``; every other line must be a
    ``# HELP`` or ``# TYPE`` comment."""
    samples: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* \S", line), line
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def test_counter_and_gauge_render_with_labels() -> None:
    registry = Registry()
    counter = registry.register(Counter("c_total", "A counter.", labels=("kind",)))
    gauge = registry.register(Gauge("g", "A gauge."))
    counter.inc(kind="a")
    counter.inc(2.5, kind='q"uo\\te\n')
    gauge.set(7)
    gauge.set(3)
    text = registry.render()
    assert "# HELP c_total A counter.\n# TYPE c_total counter\n" in text
    assert "# TYPE g gauge\ng 3\n" in text
    assert 'c_total{kind="a"} 1\n' in text
    assert 'c_total{kind="q\\"uo\\\\te\\n"} 2.5\n' in text
    assert counter.value(kind="a") == 1
    assert gauge.value() == 3


def test_counter_refuses_to_go_down_and_wrong_labels() -> None:
    counter = Counter("c_total", "A counter.", labels=("kind",))
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc(-1, kind="a")
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(other="a")
    registry = Registry()
    registry.register(Gauge("x", "x"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Gauge("x", "x"))


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    histogram = Histogram("h", "A histogram.", [1, 2, 4], labels=("phase",))
    for value in (0.5, 1, 1.5, 3, 100):
        histogram.observe(value, phase="decode")
    samples = parse(histogram.render())
    assert samples['h_bucket{phase="decode",le="1"}'] == 2  # le is inclusive
    assert samples['h_bucket{phase="decode",le="2"}'] == 3
    assert samples['h_bucket{phase="decode",le="4"}'] == 4
    assert samples['h_bucket{phase="decode",le="+Inf"}'] == 5
    assert samples['h_count{phase="decode"}'] == 5
    assert samples['h_sum{phase="decode"}'] == pytest.approx(106)
    bounds, counts, total = histogram.counts(phase="decode")
    assert bounds == [1, 2, 4, math.inf]
    assert counts == [2, 1, 1, 1]
    assert total == pytest.approx(106)
    # a label value never observed has no series, and empty counts
    assert "encode" not in histogram.render()
    assert histogram.counts(phase="encode")[1] == [0, 0, 0, 0]


def test_histogram_rejects_bad_buckets() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Histogram("h", "h", [1, 1])
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", [1], labels=("le",))


def test_concurrent_updates_are_all_counted() -> None:
    metrics = ServingMetrics()

    def work() -> None:
        for _ in range(1000):
            metrics.finished("length", 3, 0.01)
            metrics.batch("decode", 4)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = parse(metrics.render())
    assert samples['exegpt_requests_total{outcome="length"}'] == 8000
    assert samples["exegpt_generated_tokens_total"] == 24000
    assert samples['exegpt_batch_size_count{phase="decode"}'] == 8000
    assert samples['exegpt_batch_size_bucket{phase="decode",le="4"}'] == 8000


def test_serving_metrics_series() -> None:
    metrics = ServingMetrics()
    metrics.queue_length(3)
    metrics.running(5)
    metrics.batch("encode", 2)
    metrics.step("encode", 0.02)
    metrics.admitted(100)
    metrics.admitted(3000)
    metrics.first_token(0.05)
    metrics.finished("stop", 10, 1.5)
    metrics.finished("cancelled", 0, 0.2)
    metrics.rejected("invalid")
    metrics.rejected("not_accepting")
    metrics.rejected("not_accepting")
    samples = parse(metrics.render())
    assert samples["exegpt_queue_length"] == 3
    assert samples["exegpt_running_requests"] == 5
    assert samples['exegpt_batch_size_bucket{phase="encode",le="2"}'] == 1
    assert samples['exegpt_batch_size_bucket{phase="encode",le="1"}'] == 0
    assert samples['exegpt_step_seconds_sum{phase="encode"}'] == pytest.approx(0.02)
    assert samples["exegpt_requests_admitted_total"] == 2
    assert samples['exegpt_input_tokens_bucket{le="128"}'] == 1
    assert samples['exegpt_input_tokens_bucket{le="4096"}'] == 2
    assert samples['exegpt_input_tokens_bucket{le="32768"}'] == 2
    assert samples["exegpt_time_to_first_token_seconds_count"] == 1
    assert samples['exegpt_requests_total{outcome="stop"}'] == 1
    assert samples['exegpt_requests_total{outcome="cancelled"}'] == 1
    assert samples["exegpt_output_tokens_count"] == 2
    assert samples['exegpt_request_latency_seconds_bucket{le="2.5"}'] == 2
    assert samples['exegpt_request_latency_seconds_bucket{le="1"}'] == 1
    assert samples["exegpt_generated_tokens_total"] == 10
    assert samples['exegpt_requests_rejected_total{reason="invalid"}'] == 1
    assert samples['exegpt_requests_rejected_total{reason="not_accepting"}'] == 2
    assert metrics.snapshot()['exegpt_requests_rejected_total{reason="not_accepting"}'] == 2


def test_every_series_is_declared_once() -> None:
    text = ServingMetrics().render()
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE)
    names = [name for name, _ in types]
    assert len(names) == len(set(names))
    assert dict(types) == {
        "exegpt_queue_length": "gauge",
        "exegpt_running_requests": "gauge",
        "exegpt_batch_size": "histogram",
        "exegpt_step_seconds": "histogram",
        "exegpt_input_tokens": "histogram",
        "exegpt_requests_admitted_total": "counter",
        "exegpt_time_to_first_token_seconds": "histogram",
        "exegpt_requests_total": "counter",
        "exegpt_output_tokens": "histogram",
        "exegpt_request_latency_seconds": "histogram",
        "exegpt_generated_tokens_total": "counter",
        "exegpt_requests_rejected_total": "counter",
    }


def test_length_histograms_are_per_bucket() -> None:
    metrics = ServingMetrics()
    for n in (1, 2, 3, 4, 70000):
        metrics.admitted(n)
    metrics.finished("length", 16, 1.0)
    lengths = metrics.length_histograms()
    bounds, counts = lengths["input"]
    assert bounds == [*TOKEN_LENGTHS_32K, math.inf]
    assert counts[:4] == [1, 1, 1, 1]  # 1 | 2 | 3 | 4: a bucket per length up to 8
    assert counts[-1] == 1  # beyond 32768
    assert sum(counts) == 5
    out_bounds, out_counts = lengths["output"]
    assert out_counts[out_bounds.index(16)] == 1
    assert sum(out_counts) == 1


def test_latency_buckets_span_a_millisecond_to_ten_minutes() -> None:
    assert LATENCY_SECONDS[0] == 0.001
    assert LATENCY_SECONDS[-1] == 600
    assert list(LATENCY_SECONDS) == sorted(LATENCY_SECONDS)
