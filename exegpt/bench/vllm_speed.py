"""The machine's speed against a row's profile, read on the row's own servers right
before its load starts and right after it ends.

A shared machine's speed moves by 10 to 40 % within minutes and hours (other tenants,
the CPU's clock): the same configuration served twice in one run of the bench moved its
throughput by up to 20 % and its p99-length latency by up to 28 %, and a profile
measured two hours earlier priced the steps of the same servers 25 % slow. A profile
measured at the start of a 30-minute run then prices a row served 20 minutes later at
the machine's speed of 20 minutes before, and the row's error is the machine's drift
as much as the simulator's.

Nor does the model's step alone say how fast a server runs: when the machine sped up,
the in-process engine's decode steps took 0.6x their profiled time while the servers'
steps took 0.8x (the server's processes and the client share the two cores, and their
share did not shrink with the model's). Nor does one batch say it for another: at one
time a request served alone read 0.74x to 0.80x the profile's step while steps of 40
sequences ran at 1.01x to 1.06x of it. So the speed is read where the row runs and at
the batch each of its loads runs: once the row's servers are up and warm, ``batch``
requests of ``PROMPT_TOKENS`` prompt tokens and ``OUTPUT_TOKENS`` output tokens are sent
at once, ``REPEATS`` times after one untimed run, and their decode step (first token to
last, as ``vllm_overhead.decode_step`` times the server's overhead) is set against the
row's profile's price of that step (the model's decode step at ``batch`` through the
row's decode stages, with what serving adds). :func:`Reading.factor` above 1: the
machine is slower than profiled. A row reads a lone request first, then the batch of
its Poisson run right before that run, then the batch of its closed loop right before
that loop (:class:`Readings`), and the closed loop's batch again after it.

The row is also predicted from its profile at those speeds (``exegpt.bench.speed.
at_speed``: every compute table and the engine curve scaled; :func:`at_readings`), each
load at the speed read right before it, at its batch: a prediction made before the
load runs, beside the judged one from the profile as measured at the start of the run;
the reading after the closed loop says how far the machine moved while it ran. A
reading is seconds of a machine whose speed moves within seconds, and in the bench's
records it has explained the drift less often than it has added its own (docs/vllm.md,
step 5), so it stands beside the judged prediction and does not replace it.

The lone request's end-to-end latency, less what the profile at its speed prices for
it (its steps, replayed alone through the row's configuration), is what the server adds
to a request outside the engine's steps: the API server's handling of it before the
engine sees it, and the delivery of its stream. The prediction at the speeds read carries it
as its profile's ``engine.request_s`` (:func:`at_readings`), which every request's
end-to-end latency carries; the judged profile carries the same measured on the probe's
lone requests with the server's steps (:func:`served_request`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

from exegpt.bench.openai_load import Client
from exegpt.bench.speed import at_speed
from exegpt.bench.vllm_overhead import (
    OUTPUT_TOKENS,
    PROMPT_TOKENS,
    decode_step,
    probe_requests,
    with_engine,
)
from exegpt.planner.events import EventSimulator
from exegpt.planner.plan import ExecutionConfig, PlanRequest
from exegpt.planner.profile import Profile

REPEATS = 5  # the request served alone this many times (after one untimed); the median kept
CONTEXT = PROMPT_TOKENS + OUTPUT_TOKENS // 2  # the mean context of its decode steps


@dataclass(frozen=True)
class Reading:
    """One reading: the server's decode step of ``batch`` requests decoding together
    (median seconds over the repeats), the row's profile's price of it, and a request's
    end-to-end latency as the client saw it (median seconds: sent to the end of its
    stream; a lone request's where ``batch`` is 1)."""

    seconds: float
    priced: float
    e2e_s: float = math.nan
    batch: int = 1

    @property
    def factor(self) -> float:
        """How many times as slow as profiled the machine is now."""
        return self.seconds / self.priced


def read_speed(
    client: Client,
    price: float,
    rng: np.random.Generator,
    vocab: int,
    repeats: int = REPEATS,
    batch: int = 1,
) -> Reading:
    """Serve ``batch`` requests at once through ``client``, ``repeats`` times; their
    decode step beside ``price`` (the profile's step at ``batch`` and context
    ``CONTEXT``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if price <= 0:
        raise ValueError(f"the priced step must be positive, got {price}")
    steps, e2e = [], []
    for i in range(repeats + 1):  # the first, untimed: a server's first long request is slow
        requests = probe_requests(batch, rng, vocab)
        timed = client.closed_loop(requests, batch)
        if i:
            steps.append(decode_step(timed))
            e2e.append(statistics.median(t.finished - t.arrival for t in timed))
    return Reading(statistics.median(steps), price, statistics.median(e2e), batch)


@dataclass(frozen=True)
class Readings:
    """A row's readings at one time, on its own servers: a request served alone (its
    end-to-end latency: what the server adds to a request), and the decode steps of as
    many requests at once as the row's Poisson load and its closed loop keep running
    (``reading_batches``): the machine's speed at the batch each load runs."""

    lone: Reading
    poisson: Reading
    closed: Reading


def speed_fields(before: Readings, after: Reading | None) -> dict[str, float | None]:
    """A row's readings for the report: the factor read before each load at its batch
    (the one its prediction at the speeds read is priced at) and the lone request's,
    the factor after the row at the closed loop's batch, and how far the machine moved
    while the closed loop ran (per cent)."""
    fields: dict[str, float | None] = {
        "request_e2e_before_s": before.lone.e2e_s,
        "factor_before": before.closed.factor,
        "factor_after": None if after is None else after.factor,
        "moved_pct": None if after is None else 100.0 * (after.factor / before.closed.factor - 1),
    }
    for name in ("lone", "poisson", "closed"):
        r = getattr(before, name)
        fields[f"{name}_batch"] = r.batch
        fields[f"{name}_step_s"] = r.seconds
        fields[f"{name}_priced_step_s"] = r.priced
        fields[f"{name}_factor"] = r.factor
    return fields


def with_request_overhead(profile: Profile, seconds: float) -> Profile:
    """``profile`` with ``seconds`` as what the server adds to every request outside the
    engine's steps (``engine.request_s``)."""
    return with_engine(profile, request_s=seconds)


def lone_request_e2e(profile: Profile, request: PlanRequest, config: ExecutionConfig) -> float:
    """What ``profile`` prices the reading's request alone through ``config``: its steps,
    replayed (without what the server adds to a request)."""
    bare = with_request_overhead(profile, 0.0)
    timeline = EventSimulator(request, bare).replay(config, [0.0], [PROMPT_TOKENS], [OUTPUT_TOKENS])
    return float(timeline.e2e[0])


def at_readings(
    profile: Profile, readings: Readings, request: PlanRequest, config: ExecutionConfig
) -> tuple[Profile, Profile]:
    """``profile`` at the speed read at the closed loop's batch and at the Poisson
    load's (``at_speed``), each with what the server added to the lone request beyond
    its steps priced at the lone request's speed as every request's
    ``engine.request_s`` (never below zero; the profile's own where the lone reading
    has no end-to-end latency)."""
    lone = served_request(
        at_speed(profile, readings.lone.factor), readings.lone.e2e_s, request, config
    )
    request_s = lone.engine.request_s if lone.engine is not None else 0.0
    return (
        with_request_overhead(at_speed(profile, readings.closed.factor), request_s),
        with_request_overhead(at_speed(profile, readings.poisson.factor), request_s),
    )


def served_request(
    profile: Profile, e2e_s: float, request: PlanRequest, config: ExecutionConfig
) -> Profile:
    """``profile`` with what the server added to the reading's request (``e2e_s``: its
    end-to-end latency, served alone through ``config``) beyond the steps ``profile``
    prices for it as every request's ``engine.request_s``: never below zero; the
    profile as it is where there is no such latency (NaN)."""
    if not math.isfinite(e2e_s):
        return profile
    extra = e2e_s - lone_request_e2e(profile, request, config)
    return with_request_overhead(profile, max(extra, 0.0))
