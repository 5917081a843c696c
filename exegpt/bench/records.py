"""Measurement for ``exegpt bench runner``: pure functions of the engine's records of
finished requests (the steady window of a closed loop, the latency at a length, the
percentiles after a warm-up, the error of a prediction)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exegpt.planner.workload import Workload
from exegpt.runner.engine import Finished

WARMUP_FRACTION = 0.2  # of a closed loop's completions
POISSON_WARMUP_FRACTION = 0.1  # of a Poisson run's arrivals
BAND_FRACTION = 0.05  # p99-length band: within 5 % of the p99 length ...
BAND_MIN_TOKENS = 2  # ... and at least 2 tokens
BAND_MIN_REQUESTS = 20  # fewer in the band (the median of a few is noise): the line fit


@dataclass(frozen=True)
class Record:
    """One finished request: its lengths and timings (monotonic seconds)."""

    input_tokens: int
    output_tokens: int
    arrival: float
    encoded: float
    first_token: float
    last_token: float
    finished: float

    @classmethod
    def of(cls, f: Finished) -> Record:
        t = f.timings
        if t.encoded is None or t.first_token is None or t.last_token is None:
            raise ValueError(f"request {f.id} finished ({f.reason}) without its timings")
        if t.finished is None:
            raise ValueError(f"request {f.id} has no finish time")
        return cls(
            f.input_tokens, f.output_tokens, t.arrival, t.encoded, t.first_token,
            t.last_token, t.finished,
        )  # fmt: skip

    @property
    def generation(self) -> float:
        """From being encoded to the last token: the paper's latency, queueing excluded."""
        return self.last_token - self.encoded

    @property
    def e2e(self) -> float:
        return self.finished - self.arrival

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival


@dataclass(frozen=True)
class Window:
    """The steady part of a closed loop: completions in ``(start, end]``."""

    start: float
    end: float
    completions: int

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def throughput(self) -> float:
        return self.completions / self.seconds if self.seconds > 0 else math.nan


def steady_window(records: Sequence[Record], concurrency: int) -> Window:
    """The steady window of a closed loop of ``len(records)`` requests with
    ``concurrency`` in flight: from the completion that ends the warm-up (the first 20 %
    of completions, at least ``concurrency``) to the last completion that was followed
    by a new submission (the ``n - concurrency``-th); both ends are completion times,
    so that a strategy finishing requests in bursts (Static) is counted in whole bursts."""
    return window_of([r.finished for r in records], concurrency)


def window_of(finished: Sequence[float], concurrency: int) -> Window:
    """:func:`steady_window` of a closed loop whose requests finished at ``finished``
    (a real run's or a replay's)."""
    n = len(finished)
    done = sorted(finished)
    first = max(math.ceil(WARMUP_FRACTION * n), concurrency)
    last = n - concurrency
    if window_size(n, concurrency) < 2:
        raise ValueError(
            f"{n} requests at concurrency {concurrency} leave no steady window; run more"
        )
    return Window(done[first - 1], done[last - 1], last - first)


def requests_for_window(completions: float, concurrency: int) -> int:
    """The fewest requests a closed loop of ``concurrency`` in flight needs for its
    steady window (``window_of``) to hold ``completions`` completions."""
    need = max(completions, 2.0)  # window_of needs two
    # the warm-up is WARMUP_FRACTION of the requests, or the concurrency where larger
    n = max(
        math.ceil((need + concurrency) / (1.0 - WARMUP_FRACTION)),
        math.ceil(need) + 2 * concurrency,
    )
    while window_size(n, concurrency) < need:
        n += 1
    return n


def window_size(n: int, concurrency: int) -> int:
    """Completions in the steady window of ``n`` requests at ``concurrency``."""
    return n - concurrency - max(math.ceil(WARMUP_FRACTION * n), concurrency)


def in_window(records: Sequence[Record], w: Window) -> list[Record]:
    """The requests encoded and finished inside the window."""
    return [r for r in records if r.encoded >= w.start and r.finished <= w.end]


def served_in_window(records: Sequence[Record], w: Window) -> list[Record]:
    """The closed loop's requests that finished in the steady window: the work its
    throughput counts."""
    return [r for r in records if w.start < r.finished <= w.end]


@dataclass(frozen=True)
class Latency:
    seconds: float
    method: str  # "band median" or "line fit"
    requests: int  # the requests it is computed from
    band: tuple[int, int]  # the output lengths of the band


def p99_length_latency(records: Sequence[Record], p99_length: int) -> Latency:
    """The generation time of an output of ``p99_length`` tokens: the median over the
    requests within the band around it, or (fewer than ``BAND_MIN_REQUESTS`` there) a
    least-squares line of generation time against output length over the upper half
    of the output lengths, at ``p99_length``."""
    half = max(BAND_MIN_TOKENS, round(BAND_FRACTION * p99_length))
    band = (p99_length - half, p99_length + half)
    near = [r.generation for r in records if band[0] <= r.output_tokens <= band[1]]
    if len(near) >= BAND_MIN_REQUESTS:
        return Latency(statistics.median(near), "band median", len(near), band)
    if not records:
        return Latency(math.nan, "none", 0, band)
    median_length = statistics.median(r.output_tokens for r in records)
    upper = [r for r in records if r.output_tokens >= median_length]
    x = np.array([r.output_tokens for r in upper], dtype=np.float64)
    y = np.array([r.generation for r in upper], dtype=np.float64)
    if len(upper) < 3 or float(np.ptp(x)) == 0.0:
        return Latency(math.nan, "none", len(upper), band)
    slope, intercept = np.polyfit(x, y, 1)
    return Latency(float(intercept + slope * p99_length), "line fit", len(upper), band)


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values``, nearest rank (a value that occurred)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(math.ceil(q / 100.0 * len(s)), 1) - 1]


def after_warmup(records: Sequence[Record], fraction: float) -> list[Record]:
    """The requests of an open-loop run but the first ``fraction`` of the arrivals."""
    s = sorted(records, key=lambda r: r.arrival)
    return s[math.ceil(fraction * len(s)) :]


def open_loop_e2e_p99(records: Sequence[Record]) -> float:
    """A Poisson run's p99 end-to-end latency, after its warm-up."""
    return nearest_rank([r.e2e for r in after_warmup(records, POISSON_WARMUP_FRACTION)], 99)


def error_pct(predicted: float, measured: float) -> float:
    """``(predicted - measured) / measured`` in percent (NaN without a measurement)."""
    if not (measured > 0 and math.isfinite(measured) and math.isfinite(predicted)):
        return math.nan
    return 100.0 * (predicted - measured) / measured


def served_fields(
    requests: int, served: Workload, latency: Latency, workload: Workload
) -> dict[str, Any]:
    """What a bench row says of the requests it served (``served``: their lengths) and of
    how its p99-length latency was measured on them."""
    return {
        "served": {
            "requests": requests,
            "mean_input": served.mean_input,
            "mean_output": served.mean_output,
            "output_p99": served.output_p99,
        },
        "latency_measurement": {
            "method": latency.method,
            "requests": latency.requests,
            "band_tokens": list(latency.band),
            "p99_length": served.output_p99,
            "workload_p99_length": workload.output_p99,
        },
    }
