"""The operator's own Prometheus metrics: reconcile passes and their failures, plan and
replan durations, profiling Jobs; rendered in the text exposition format 0.0.4 and served
on ``GET /metrics`` of ``settings.metrics_port`` (the chart annotates the pod for
scraping, as the workers' pods are).

The metrics are recorded from the event loop only (handlers and the reconciler), so they
need no locks. (The workers' metrics are in ``exegpt.runner.metrics``; the operator does
not import the runner.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a pass takes milliseconds, a plan search up to ``plan_time_limit_seconds``."""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


@dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    values: dict[tuple[str, ...], float] = field(default_factory=dict)

    def inc(self, *label_values: str, by: float = 1.0) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {label_values}")
        if by < 0:
            raise ValueError(f"{self.name}: a counter only goes up")
        self.values[label_values] = self.values.get(label_values, 0.0) + by

    def value(self, *label_values: str) -> float:
        return self.values.get(label_values, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key in sorted(self.values):
            out.append(f"{self.name}{_labels(self.labels, key)} {_number(self.values[key])}")
        return out


@dataclass
class _Series:
    buckets: list[int]
    count: int = 0
    total: float = 0.0


@dataclass
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    bounds: tuple[float, ...] = DURATION_BUCKETS
    series: dict[tuple[str, ...], _Series] = field(default_factory=dict)

    def observe(self, value: float, *label_values: str) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {label_values}")
        s = self.series.setdefault(label_values, _Series([0] * len(self.bounds)))
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                s.buckets[i] += 1
        s.count += 1
        s.total += value

    def count(self, *label_values: str) -> int:
        s = self.series.get(label_values)
        return s.count if s else 0

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key in sorted(self.series):
            s = self.series[key]
            for bound, n in zip(self.bounds, s.buckets, strict=True):
                le = f'le="{_number(bound)}"'
                out.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {n}")
            inf = _labels(self.labels, key, 'le="+Inf"')
            out.append(f"{self.name}_bucket{inf} {s.count}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_number(s.total)}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {s.count}")
        return out


@dataclass
class OperatorMetrics:
    """The series the operator records (one instance per process, in kopf's memo)."""

    passes: Counter = field(
        default_factory=lambda: Counter(
            "exegpt_operator_passes_total",
            "Reconcile passes by handler and result (ok, failed, stopped).",
            ("handler", "result"),
        )
    )
    failures: Counter = field(
        default_factory=lambda: Counter(
            "exegpt_operator_failures_total",
            "Failed reconcile passes by handler and error type.",
            ("handler", "error"),
        )
    )
    pass_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "exegpt_operator_pass_seconds", "Duration of reconcile passes.", ("handler",)
        )
    )
    plan_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "exegpt_operator_plan_seconds",
            "Duration of plan searches: kind=plan (a first plan) or replan.",
            ("kind",),
        )
    )
    profiling_jobs: Counter = field(
        default_factory=lambda: Counter(
            "exegpt_operator_profiling_jobs_total",
            "Profiling Jobs by event: created, failed (retries exhausted), deleted.",
            ("event",),
        )
    )

    def render(self) -> str:
        lines: list[str] = []
        for metric in (
            self.passes, self.failures, self.pass_seconds, self.plan_seconds,
            self.profiling_jobs,
        ):  # fmt: skip
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


async def start_server(metrics: OperatorMetrics, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``GET /metrics`` on ``host``:``port`` until the returned runner's
    ``cleanup()`` is awaited."""
    from aiohttp import web

    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
