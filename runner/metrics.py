"""Prometheus metrics of the serving engine: a small thread-safe registry (counters,
gauges and histograms with labels) rendered in the text exposition format 0.0.4, and
:class:`ServingMetrics`, the series the engine and the server record.

The engine records from its own thread and the server renders from its event loop;
every metric holds a lock, so both may run at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :meth:`Registry.render`'s text."""

LabelValues = tuple[str, ...]

POWERS_OF_TWO_1K: tuple[float, ...] = tuple(float(2**i) for i in range(11))
"""1, 2, 4, ..., 1024: batch sizes."""

TOKEN_LENGTHS_32K: tuple[float, ...] = tuple(
    float(b) for b in sorted({round(2 ** (k / 4)) for k in range(61)})
)
"""1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 16, 19, ..., 32768: token counts, four buckets per
doubling above 8 (each bound about 19 % above the last; every power of two is one).
The request-length histograms are the observed workload the operator replans for, so
a length is known to within a bucket of that width, not to within a factor of two."""

LATENCY_SECONDS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
"""1 ms to 10 min: step times, time to first token, request latency."""


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape_label(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class _Metric:
    """What every metric shares: a name, a help text, label names, a lock."""

    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names: tuple[str, ...] = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[name]) for name in self.label_names)

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        """The metric's sample lines."""
        raise NotImplementedError

    def render(self) -> str:
        """``# HELP``, ``# TYPE`` and the sample lines, newline-terminated."""
        return "\n".join(self._header() + self.samples()) + "\n"


class _Scalar(_Metric):
    """One number per combination of label values (counters and gauges)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0

    def value(self, **labels: str) -> float:
        """The current value (0 for label values never seen)."""
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [
            f"{self.name}{_labels_text(self.label_names, key)} {_format_value(value)}"
            for key, value in items
        ]


class Counter(_Scalar):
    """A value that only goes up, one per combination of label values."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down ({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Scalar):
    """A value that goes up and down, one per combination of label values."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        """Set to ``value``."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class _Series:
    """One histogram's counts for one combination of label values."""

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0


class Histogram(_Metric):
    """Observations counted into buckets by upper bound (``le``), with their sum and
    count, one series per combination of label values."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Iterable[float],
        labels: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{self.name}: buckets must be distinct and not empty")
        if "le" in self.label_names:
            raise ValueError(f"{self.name}: 'le' is reserved for buckets")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._series: dict[LabelValues, _Series] = {}
        if not self.label_names:
            self._series[()] = _Series(len(self.bounds))

    def observe(self, value: float, **labels: str) -> None:
        """Count ``value`` into its bucket (the first whose bound is >= it)."""
        key = self._key(labels)
        index = len(self.bounds)
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                index = i
                break
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _Series(len(self.bounds))
            series.counts[index] += 1
            series.sum += value
            series.count += 1

    def counts(self, **labels: str) -> tuple[list[float], list[int], float]:
        """The upper bounds (ending with +Inf), the per-bucket (not cumulative) counts
        and the sum of one series."""
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            counts = list(series.counts) if series else [0] * (len(self.bounds) + 1)
            total = series.sum if series else 0.0
        return [*self.bounds, math.inf], counts, total

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((key, list(s.counts), s.sum, s.count) for key, s in self._series.items())
        lines: list[str] = []
        for key, counts, total, count in items:
            cumulative = 0
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                cumulative += n
                labels = _labels_text((*self.label_names, "le"), (*key, _format_value(bound)))
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            labels = _labels_text(self.label_names, key)
            lines.append(f"{self.name}_sum{labels} {_format_value(total)}")
            lines.append(f"{self.name}_count{labels} {count}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """Metrics rendered together, in registration order."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._names: set[str] = set()
        self._lock = threading.Lock()

    def register(self, metric: _M) -> _M:
        """Add ``metric``; its name must be new. Returns it."""
        with self._lock:
            if metric.name in self._names:
                raise ValueError(f"metric {metric.name} is already registered")
            self._names.add(metric.name)
            self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The text exposition format 0.0.4 of every metric."""
        with self._lock:
            metrics = list(self._metrics)
        return "".join(metric.render() for metric in metrics)


class ServingMetrics:
    """The serving engine's series: queue and batch, step times, request lengths and
    latencies, outcomes and rejections."""

    def __init__(self) -> None:
        self.registry = Registry()
        reg = self.registry.register
        self._queue = reg(
            Gauge("exegpt_queue_length", "Requests waiting to be admitted into a batch.")
        )
        self._running = reg(Gauge("exegpt_running_requests", "Requests admitted and generating."))
        self._batch = reg(
            Histogram(
                "exegpt_batch_size",
                "Requests in one engine step, by phase (encode or decode).",
                POWERS_OF_TWO_1K,
                labels=("phase",),
            )
        )
        self._step = reg(
            Histogram(
                "exegpt_step_seconds",
                "Duration of one engine step, by phase (encode or decode).",
                LATENCY_SECONDS,
                labels=("phase",),
            )
        )
        self._input = reg(
            Histogram(
                "exegpt_input_tokens", "Prompt length of admitted requests.", TOKEN_LENGTHS_32K
            )
        )
        self._admitted = reg(
            Counter("exegpt_requests_admitted_total", "Requests admitted into a batch.")
        )
        self._ttft = reg(
            Histogram(
                "exegpt_time_to_first_token_seconds",
                "Time from submission to a request's first new token.",
                LATENCY_SECONDS,
            )
        )
        self._finished = reg(
            Counter(
                "exegpt_requests_total",
                "Requests finished, by outcome (length, stop, error, cancelled).",
                labels=("outcome",),
            )
        )
        self._output = reg(
            Histogram(
                "exegpt_output_tokens",
                "New tokens of finished requests.",
                TOKEN_LENGTHS_32K,
            )
        )
        self._latency = reg(
            Histogram(
                "exegpt_request_latency_seconds",
                "Time from submission to a request's last event.",
                LATENCY_SECONDS,
            )
        )
        self._generated = reg(
            Counter("exegpt_generated_tokens_total", "New tokens generated, all requests.")
        )
        self._rejected = reg(
            Counter(
                "exegpt_requests_rejected_total",
                "Requests refused before running, by reason (invalid, not_accepting).",
                labels=("reason",),
            )
        )

    def queue_length(self, n: int) -> None:
        """Requests waiting to be admitted now."""
        self._queue.set(n)

    def running(self, n: int) -> None:
        """Requests running now."""
        self._running.set(n)

    def batch(self, phase: str, size: int) -> None:
        """One step of ``phase`` ran ``size`` requests."""
        self._batch.observe(size, phase=phase)

    def step(self, phase: str, seconds: float) -> None:
        """One step of ``phase`` took ``seconds``."""
        self._step.observe(seconds, phase=phase)

    def admitted(self, input_tokens: int) -> None:
        """A request of ``input_tokens`` prompt tokens was admitted."""
        self._input.observe(input_tokens)
        self._admitted.inc()

    def first_token(self, seconds: float) -> None:
        """A request got its first new token ``seconds`` after submission."""
        self._ttft.observe(seconds)

    def finished(self, outcome: str, output_tokens: int, seconds: float) -> None:
        """A request ended (``outcome``: length, stop, error or cancelled) with
        ``output_tokens`` new tokens, ``seconds`` after submission."""
        self._finished.inc(outcome=outcome)
        self._output.observe(output_tokens)
        self._latency.observe(seconds)
        self._generated.inc(output_tokens)

    def rejected(self, reason: str) -> None:
        """A request was refused (``reason``: invalid or not_accepting)."""
        self._rejected.inc(reason=reason)

    def render(self) -> str:
        """Every series in the text exposition format 0.0.4."""
        return self.registry.render()

    def length_histograms(self) -> dict[str, tuple[list[float], list[int]]]:
        """The observed request lengths, ``"input"`` (prompt tokens of admitted
        requests) and ``"output"`` (new tokens of finished requests): bucket upper
        bounds (the last +Inf) and per-bucket, not cumulative, counts."""
        out: dict[str, tuple[list[float], list[int]]] = {}
        for key, histogram in (("input", self._input), ("output", self._output)):
            bounds, counts, _ = histogram.counts()
            out[key] = (bounds, counts)
        return out

    def snapshot(self) -> dict[str, float]:
        """Current values of the gauges and counters, keyed by series name with
        labels, as they appear in :meth:`render`."""
        out: dict[str, float] = {}
        for metric in (
            self._queue,
            self._running,
            self._admitted,
            self._finished,
            self._generated,
            self._rejected,
        ):
            for line in metric.samples():
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out
