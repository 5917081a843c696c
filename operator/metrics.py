"""Reading the workers' request-length histograms, for drift checks.

Each replica's driver pod (stage 0 of the entry StatefulSet: ``worker`` for RoundRobin,
``encoder`` for WorkloadAware) serves Prometheus text on ``GET /metrics`` of the
runner port, with two histograms of length buckets: ``exegpt_input_tokens``
(prompt lengths of admitted requests) and ``exegpt_output_tokens`` (new tokens of
finished requests). The counters start at zero with the pod, and every new plan rolls
the pods, so the counts are those served since the running plan started.

The reading goes through :class:`MetricsReader` (``HttpMetricsReader`` in a cluster, a
fake in tests); everything else here is pure: choosing the driver pods, parsing the
text, summing the drivers' counts.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from .answers import TooLarge, read_limited

INPUT_METRIC = "exegpt_input_tokens"
OUTPUT_METRIC = "exegpt_output_tokens"
VLLM_INPUT_METRIC = "vllm:request_prompt_tokens"
VLLM_OUTPUT_METRIC = "vllm:request_generation_tokens"
"""vLLM's request-length histograms: the same meaning, from vLLM's ``/metrics``."""
READ_TIMEOUT_SECONDS = 5.0
MAX_BYTES = 1 << 20  # a worker's whole exposition is a few kB


class MetricsError(Exception):
    """The metrics could not be read or do not hold the length histograms."""


class MetricsReader(Protocol):
    """What a drift check needs: the ``/metrics`` text of one pod."""

    async def read(self, namespace: str, pod: str, ip: str, port: int) -> str:
        """The Prometheus text of ``pod`` (at ``ip``:``port``); raises ``MetricsError``."""
        ...


class HttpMetricsReader:
    """``GET http://<podIP>:<port>/metrics`` on the event loop (``aiohttp``), with a
    total deadline: a worker that answers slowly, byte by byte, or not in HTTP at all
    costs at most ``timeout_seconds`` and ends in a ``MetricsError``.

    The operator needs network access to the worker pods' runner port (a NetworkPolicy
    that isolates the workers must admit the operator's pod).
    """

    def __init__(self, timeout_seconds: float = READ_TIMEOUT_SECONDS) -> None:
        self.timeout_seconds = timeout_seconds

    async def _get(self, url: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=self.timeout_seconds)
        # Straight to the pod: never through a proxy from the environment.
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.get(url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise MetricsError(f"GET {url}: HTTP {resp.status} {resp.reason or ''}".strip())
            return await read_limited(resp, MAX_BYTES)

    async def read(self, namespace: str, pod: str, ip: str, port: int) -> str:
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{port}/metrics"
        try:
            async with asyncio.timeout(self.timeout_seconds):
                data = await self._get(url)
        except MetricsError:
            raise
        except TooLarge as exc:
            raise MetricsError(f"GET {url}: {exc}") from None
        except TimeoutError:
            raise MetricsError(f"GET {url}: no answer within {self.timeout_seconds:g} s") from None
        except Exception as exc:  # whatever a worker sends: not HTTP, cut short, refused
            raise MetricsError(f"GET {url}: {type(exc).__name__}: {exc}"[:500]) from exc
        return data.decode("utf-8", errors="replace")


# -- which pods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DriverPod:
    name: str
    ip: str


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def driver_pods(
    pods: Iterable[Mapping[str, Any]], statefulset: str, stages: int
) -> list[DriverPod]:
    """The ready pods of ``statefulset`` that drive a replica, by name: pod ordinal
    ``o`` is stage ``o % stages`` of replica ``o // stages``, and stage 0 drives."""
    out: list[DriverPod] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name", ""))
        prefix, _, ordinal = name.rpartition("-")
        if prefix != statefulset or not ordinal.isdigit() or int(ordinal) % max(stages, 1):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if meta.get("deletionTimestamp") or not ip or not _ready(pod):
            continue
        out.append(DriverPod(name, str(ip)))
    return sorted(out, key=lambda p: p.name)


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LengthHistograms:
    """Both sides' per-bucket (not cumulative) counts over the same upper ``bounds``
    (the last +Inf)."""

    bounds: tuple[float, ...]
    input: tuple[int, ...]
    output: tuple[int, ...]

    def __add__(self, other: LengthHistograms) -> LengthHistograms:
        if other.bounds != self.bounds:
            raise MetricsError("the workers' length histograms have different buckets")
        return LengthHistograms(
            self.bounds,
            tuple(a + b for a, b in zip(self.input, other.input, strict=True)),
            tuple(a + b for a, b in zip(self.output, other.output, strict=True)),
        )


_SAMPLE_RE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<v>\S+)"
)
_LE_RE = re.compile(r'(?:^|,)\s*le\s*=\s*"(?P<le>[^"]*)"')


def _bound(text: str) -> float:
    if text in ("+Inf", "Inf", "inf", "+inf"):
        return math.inf
    return float(text)


def _histogram(text: str, metric: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    cumulative: dict[float, float] = {}
    for line in text.splitlines():
        if not line.startswith(metric + "_bucket"):
            continue
        m = _SAMPLE_RE.match(line)
        if m is None or m["name"] != metric + "_bucket":
            continue
        le = _LE_RE.search(m["labels"] or "")
        if le is None:
            raise MetricsError(f"{metric}: a bucket without 'le': {line[:200]!r}")
        try:
            bound, value = _bound(le["le"]), float(m["v"])
        except ValueError as exc:
            raise MetricsError(f"{metric}: unreadable bucket line {line[:200]!r}") from exc
        if not math.isfinite(value) or value < 0:
            raise MetricsError(f"{metric}: bucket count {m['v']} is not a count")
        # Series with other labels (none today) add up per bound.
        cumulative[bound] = cumulative.get(bound, 0.0) + value
    if not cumulative:
        raise MetricsError(f"no {metric} histogram in the metrics")
    bounds = tuple(sorted(cumulative))
    if not math.isinf(bounds[-1]):
        raise MetricsError(f"{metric}: no +Inf bucket")
    counts: list[int] = []
    previous = 0.0
    for b in bounds:
        step = cumulative[b] - previous
        if step < 0:
            raise MetricsError(f"{metric}: bucket counts are not cumulative")
        counts.append(round(step))
        previous = cumulative[b]
    return bounds, tuple(counts)


def parse_length_histograms(text: str) -> LengthHistograms:
    """The input and output length histograms in Prometheus text (cumulative
    ``_bucket{le=...}`` lines turned into per-bucket counts); ``MetricsError`` when
    either is missing or malformed, or their buckets differ.

    The own engine's workers export ``exegpt_input_tokens``/``exegpt_output_tokens``;
    vLLM exports ``vllm:request_prompt_tokens``/``vllm:request_generation_tokens`` (one
    series per engine, added up)."""
    inputs, outputs = INPUT_METRIC, OUTPUT_METRIC
    if f"{INPUT_METRIC}_bucket" not in text and f"{VLLM_INPUT_METRIC}_bucket" in text:
        inputs, outputs = VLLM_INPUT_METRIC, VLLM_OUTPUT_METRIC
    bounds_in, counts_in = _histogram(text, inputs)
    bounds_out, counts_out = _histogram(text, outputs)
    if bounds_in != bounds_out:
        raise MetricsError(f"{inputs} and {outputs} have different buckets")
    return LengthHistograms(bounds_in, counts_in, counts_out)


__all__ = [
    "DriverPod",
    "HttpMetricsReader",
    "LengthHistograms",
    "MetricsError",
    "MetricsReader",
    "driver_pods",
    "parse_length_histograms",
]
