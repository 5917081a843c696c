"""``exegpt bench runner``: the XRunner measured against the XSimulator's predictions.

On this machine the XProfiler measures a profile of a small OPT-like model (4 layers,
hidden 256, random weights, float32, one torch thread); the XScheduler plans a
high-variance workload on it under a latency bound, and the XRunner's engine runs the
plan, the best static-batching and continuous-batching configurations under the same
bound (the plan's ``baselines``) and, in the full run, the best WorkloadAware
configuration of two processes. Each configuration after the first is predicted from a
profile measured again just before it runs (a shared machine's speed drifts over
minutes). The simulator is asked about the requests the engine served (not new draws
from the workload, whose sampling noise would swamp its errors):

- **throughput**: completed requests per second under a closed loop of clients that
  keeps the engine saturated (``concurrency`` requests in flight: the plan's KV slots
  plus one encode batch, so a full encode batch always waits), counted between two
  completions of the steady part (the first 20 % of the completions, and at least
  ``concurrency`` of them, are warm-up; the window ends at the last completion that
  still had a successor submitted); predicted by the analytic mode for the empirical
  workload of the requests that finished in the window;
- **latency**: the paper's, the time to generate an output of the served requests' p99
  length, queueing excluded: ``last_token - encoded`` of the closed loop's steady
  requests whose output length is within 5 % (at least 2 tokens) of the p99 length,
  their median when there are at least 20; with fewer, a least-squares line of that
  time against the output length over the steady requests of the upper half of
  output lengths, evaluated at the p99 length (``latency_method`` says which);
- **p99 end-to-end latency**: the nearest-rank p99 of ``finished - arrival`` under
  Poisson arrivals at 50 % of the throughput measured in the closed loop (the first
  10 % of arrivals are warm-up); predicted by the discrete-event mode replaying the
  same requests at their arrival times;
- **time to first token**: ``first_token - arrival`` in the same Poisson run, median
  and p99 (measured only: the simulator does not predict it).

Prediction error is ``(predicted - measured) / measured`` per metric and configuration;
the summary gives the median and worst absolute error per metric (target < 10 %), and
the same for the simulator's predictions for the workload itself (new draws). The ratio
over static batching is the plan's measured throughput over the Static baseline's, both
run in this one run (target >= 2x), with whether each measured latency (at the
workload's p99 length) meets the bound.

The workload is the ``chat`` trace (Azure LLM inference 2023) with inputs scaled by
1/32 and outputs by 1/4 (output mean 53, p99 149, max 239 tokens; coefficient of
variation 0.77); the bound is the 30th percentile of the static-batching
configurations' predicted latencies, as in ``exegpt bench paper``. Request lengths,
prompt tokens and sampling seeds come from a seeded ``numpy.random.Generator``
(``--seed``); every request samples at temperature 1.

``--quick`` profiles a coarse grid and runs fewer requests of the plan and the Static
baseline only (under a minute on a 2-core machine); ``--json`` prints one JSON object
and nothing else. Also runnable as ``python -m exegpt.bench.runner``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import queue
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from exegpt.bench.device import BenchDevice, NoDevice
from exegpt.bench.paper import static_latency_percentiles, summarize_config
from exegpt.bench.profile import CPU_MODELS
from exegpt.bench.speed import SpeedProbe, at_speed, bench_profiler, priced, speed_ratio
from exegpt.planner.architecture import Architecture, get_architecture
from exegpt.planner.costs import Group
from exegpt.planner.events import EventSimulator
from exegpt.planner.plan import ExecutionConfig, Plan, PlanRequest, Prediction, StrategyChoice
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import schedule
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import Workload
from exegpt.planner.workload_presets import get_workload
from exegpt.runner.config import ModelConfig
from exegpt.runner.engine import Engine, Finished
from exegpt.runner.generate import Sampling
from exegpt.runner.heap import frozen_heap
from exegpt.runner.replica import ReplicaSpec, run_rank
from exegpt.runner.serving import GenerationRequest, TokenEvent
from exegpt.runner.wire import Op

TARGET_RATIO = 2.0
BOUND_PERCENTILE = 30  # of the static-batching configurations' latencies
# Poisson arrival rate, as a fraction of the saturated throughput the fresh profile
# predicts. Below saturation the batches are smaller and each request costs more steps,
# so at 50 % the engine is busy 70 to 90 % of the time (``busy_fraction``); at 75 %
# Continuous was 96 % busy, where the p99 of the waits multiplies any service-time error.
LOAD = 0.5
WARMUP_FRACTION = 0.2  # of a closed loop's completions
POISSON_WARMUP_FRACTION = 0.1  # of a Poisson run's arrivals
BAND_FRACTION = 0.05  # p99-length band: within 5 % of the p99 length ...
BAND_MIN_TOKENS = 2  # ... and at least 2 tokens
BAND_MIN_REQUESTS = 20  # fewer in the band (the median of a few is noise): the line fit
MIN_CLOSED_PER_CONCURRENCY = 4  # a closed loop runs at least 4x its concurrency
EVENTS_SEED = 0  # the discrete-event simulation's arrivals and lengths
SAMPLED = Sampling(greedy=False, temperature=1.0)  # every request's decoding

# A small OPT-like model: per-step compute well above the engine's Python overhead,
# yet fast enough on one CPU thread.
ARCHITECTURE: Architecture = Architecture.model_validate(
    {**CPU_MODELS["opt-small"].model_dump(), "name": "opt-bench", "hidden_size": 256,
     "ffn_size": 1024}
)  # fmt: skip
# On a GPU: a real model's shape (random weights, float16), whose decode steps are
# bound by reading its weights rather than by the engine's Python.
GPU_ARCHITECTURE: Architecture = get_architecture("llama-2-7b")


def default_architecture(device: BenchDevice) -> Architecture:
    return GPU_ARCHITECTURE if device.kind == "cuda" else ARCHITECTURE


def bench_workload() -> Workload:
    """The high-variance workload: the chat trace, inputs / 32 and outputs / 4."""
    return get_workload("chat").scaled(1 / 32, 1 / 4)


@dataclass(frozen=True)
class Mode:
    """How much to run."""

    name: str
    profile_seconds: float
    midpoints: bool
    passes: int
    closed_requests: int
    poisson_requests: int
    roles: tuple[str, ...]
    poisson_runs: int = 1  # the same requests at the same arrivals: the measurement's spread


QUICK = Mode("quick", 7.0, False, 2, 140, 40, ("plan", "static"))
FULL = Mode("full", 60.0, True, 3, 600, 1000, ("plan", "static", "continuous", "workload-aware"), 2)


# -- measurement: pure functions of the engine's records ------------------------------------


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
    n = len(records)
    done = sorted(r.finished for r in records)
    first = max(math.ceil(WARMUP_FRACTION * n), concurrency)
    last = n - concurrency
    if last - first < 2:
        raise ValueError(
            f"{n} requests at concurrency {concurrency} leave no steady window; run more"
        )
    return Window(done[first - 1], done[last - 1], last - first)


def in_window(records: Sequence[Record], w: Window) -> list[Record]:
    """The requests encoded and finished inside the window."""
    return [r for r in records if r.encoded >= w.start and r.finished <= w.end]


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


def error_pct(predicted: float, measured: float) -> float:
    """``(predicted - measured) / measured`` in percent (NaN without a measurement)."""
    if not (measured > 0 and math.isfinite(measured) and math.isfinite(predicted)):
        return math.nan
    return 100.0 * (predicted - measured) / measured


# -- steps, timed as the engine runs them ----------------------------------------------------


@dataclass(frozen=True)
class Step:
    at: float  # monotonic start
    op: str  # "encode" or "decode"
    batch: int
    seconds: float
    longest: int  # encode: the longest prompt (Static pads the batch to it)
    tokens: int  # encode: the prompts' tokens


class StepLog:
    """Times every encode and decode step the engine runs through its chains (a
    wrapper around each ``ChainClient.run``)."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    def attach(self, engine: Engine) -> None:
        for chain in engine.chains.values():
            run = chain.run

            def timed(items: Any, run: Callable[[Any], list[list[int]]] = run) -> list[list[int]]:
                at = time.monotonic()
                start = time.perf_counter()
                out = run(items)
                seconds = time.perf_counter() - start
                cmds = [c for c, _ in items]
                op = cmds[0].op if cmds else None
                if op in (Op.PREFILL, Op.DECODE):
                    batch = sum(c.batch for c in cmds)
                    new = [n for c in cmds for n in c.new]
                    name = "encode" if op == Op.PREFILL else "decode"
                    self.steps.append(Step(at, name, batch, seconds, max(new, default=0), sum(new)))
                return out

            setattr(chain, "run", timed)  # noqa: B010 (an instance attribute over the method)

    def summary(self, w: Window) -> dict[str, dict[str, float]]:
        """Mean batch, seconds, longest prompt and prompt of the steps inside ``w``."""
        out: dict[str, dict[str, float]] = {}
        for op in ("encode", "decode"):
            s = [x for x in self.steps if x.op == op and w.start <= x.at <= w.end]
            if s:
                out[op] = {
                    "steps": len(s),
                    "mean_batch": statistics.fmean(x.batch for x in s),
                    "mean_seconds": statistics.fmean(x.seconds for x in s),
                    "mean_longest_prompt": statistics.fmean(x.longest for x in s),
                    "mean_prompt": sum(x.tokens for x in s) / max(sum(x.batch for x in s), 1),
                }
        return out


# -- load generation --------------------------------------------------------------------------


def make_requests(
    workload: Workload, n: int, rng: np.random.Generator, vocab_size: int
) -> list[GenerationRequest]:
    """``n`` requests with lengths drawn from ``workload`` and random prompt tokens,
    each sampling (temperature 1, the OpenAI default, and a seed of its own): the
    tokens the profile's head prices."""
    inputs, outputs = workload.sample(n, rng)
    seeds = rng.integers(0, 2**31, n)
    return [
        GenerationRequest(
            tuple(int(t) for t in rng.integers(1, vocab_size, int(i))), int(o), SAMPLED, int(s)
        )
        for i, o, s in zip(inputs, outputs, seeds, strict=True)
    ]


@dataclass(frozen=True)
class Job:
    """What to drive through one engine: the Poisson run's requests, unit-rate
    inter-arrival gaps and rate, then the closed loop's requests and concurrency."""

    closed: list[GenerationRequest]
    concurrency: int
    poisson: list[GenerationRequest]
    gaps: list[float]  # exponential(1): divided by the rate
    rate: float  # Poisson arrivals per second
    timeout_s: float = 600.0
    poisson_runs: int = 1  # the Poisson run, repeated as it was (same requests, same gaps)
    probe: SpeedProbe | None = None  # read right before and right after the (first) Poisson run
    device: BenchDevice = field(default_factory=BenchDevice.cpu)


@dataclass
class Driven:
    """What one engine did: the closed loop's and the Poisson run's records, the
    steady window and the steps inside it."""

    closed: list[Record]
    window: Window
    poisson: list[Record]
    rate: float
    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    poisson_steps: dict[str, dict[str, float]] = field(default_factory=dict)  # its run's
    busy_fraction: float = math.nan  # of the Poisson run's time, in steps
    again: list[list[Record]] = field(default_factory=list)  # the Poisson run's repeats
    probed: tuple[tuple[float, ...], ...] = ()  # the probe's seconds: before, after the run


def _finished_since(engine: Engine, start: int) -> list[Record]:
    assert engine.finished is not None
    got = engine.finished[start:]
    bad = [f for f in got if f.reason != "length"]
    if bad:
        raise RuntimeError(f"request {bad[0].id} ended with {bad[0].reason!r}")
    return [Record.of(f) for f in got]


def _wait_idle(engine: Engine, timeout: float) -> None:
    if not engine.wait_idle(timeout):
        raise RuntimeError(f"the engine did not finish its requests in {timeout:g} s")


def closed_loop(
    engine: Engine, requests: Sequence[GenerationRequest], concurrency: int, timeout: float
) -> list[Record]:
    """Keep ``concurrency`` requests in flight: a new one as each finishes."""
    assert engine.finished is not None
    start = len(engine.finished)
    done: queue.SimpleQueue[bool] = queue.SimpleQueue()

    def sink(ev: TokenEvent) -> None:
        if ev.finished is not None:
            done.put(True)

    sent = min(concurrency, len(requests))
    for request in requests[:sent]:
        engine.submit(request, sink)
    while sent < len(requests):
        try:
            done.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"no request finished in {timeout:g} s") from None
        engine.submit(requests[sent], sink)
        sent += 1
    _wait_idle(engine, timeout)
    return _finished_since(engine, start)


def poisson_run(
    engine: Engine,
    requests: Sequence[GenerationRequest],
    gaps: Sequence[float],
    rate: float,
    timeout: float,
) -> list[Record]:
    """Submit ``requests`` at Poisson arrivals of ``rate`` per second."""
    assert engine.finished is not None
    start = len(engine.finished)
    at = time.monotonic()
    for request, gap in zip(requests, gaps, strict=True):
        at += gap / rate
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        engine.submit(request, lambda _ev: None)
    _wait_idle(engine, timeout)
    return _finished_since(engine, start)


def drive(engine: Engine, job: Job) -> Driven:
    """Poisson arrivals at ``job.rate`` (``job.poisson_runs`` times, the same requests
    at the same gaps), then the closed loop. The Poisson run comes first, nearest the
    profile measured before it: its p99 end-to-end latency is the figure that drift in
    the machine's speed moves most (a p99 of waits multiplies a service-time error).
    Its repeats say how far the measurement itself moves between two runs; the
    probe, read right before and right after it, how fast the machine ran then."""
    log = StepLog()
    log.attach(engine)
    probed = [job.probe.measure()] if job.probe is not None else []
    start = time.monotonic()
    poisson = poisson_run(engine, job.poisson, job.gaps, job.rate, job.timeout_s)
    during = Window(start, time.monotonic(), len(poisson))
    if job.probe is not None:
        probed.append(job.probe.measure())
    busy = sum(x.seconds for x in log.steps if during.start <= x.at <= during.end)
    again = [
        poisson_run(engine, job.poisson, job.gaps, job.rate, job.timeout_s)
        for _ in range(job.poisson_runs - 1)
    ]
    closed = closed_loop(engine, job.closed, job.concurrency, job.timeout_s)
    window = steady_window(closed, job.concurrency)
    return Driven(
        closed, window, poisson, job.rate, log.summary(window), log.summary(during),
        busy / during.seconds if during.seconds > 0 else math.nan, again, tuple(probed),
    )  # fmt: skip


def _drive_rank(rank: int, world: int, spec: ReplicaSpec, job: Job) -> Driven | None:
    """One process of a multi-process replica (``launch``): rank 0 drives the job."""
    engine = run_rank(spec, rank, job.device.torch_device(rank), keep_finished=True, freeze=True)
    if engine is None:
        return None
    try:
        return drive(engine, job)
    finally:
        engine.stop()


def run_replica(spec: ReplicaSpec, job: Job) -> Driven:
    """Run ``job`` on a replica of ``spec``: in this process, or in as many processes
    as the configuration needs (gloo, one torch thread each)."""
    world = spec.topology().world
    if world == 1:
        with frozen_heap():  # as a serving process: full collections scan only the run's objects
            engine = run_rank(spec, 0, job.device.torch_device(), keep_finished=True)
            assert engine is not None
            try:
                return drive(engine, job)
            finally:
                engine.stop()
    from exegpt.runner.distributed import launch

    result = launch(
        _drive_rank, world, spec, job, backend=job.device.backend, threads=1,
        timeout_s=job.timeout_s * 3,
    )[0]  # fmt: skip
    assert isinstance(result, Driven)
    return result


# -- one configuration ------------------------------------------------------------------------


def concurrency_for(config: ExecutionConfig, spec: ReplicaSpec) -> int:
    """Requests in flight that keep the engine saturated, so that whenever it admits
    there are as many waiting as it can take: RoundRobin, its KV slots plus one encode
    batch; Static and Continuous, twice their batch (a whole batch, or every request of
    one that ended in the same iteration, can be replaced at once); WorkloadAware, the
    decoders' batch plus two encodings on their way."""
    if config.strategy == "WorkloadAware":
        return int(config.decode_batch + 2 * config.encode_batch)
    if config.strategy == "RoundRobin":
        return int(spec.slots("main") + config.encode_batch)
    return int(2 * spec.slots("main"))


def measure_config(
    role: str,
    config: ExecutionConfig,
    sim: Simulator,
    workload: Workload,
    mode: Mode,
    rng: np.random.Generator,
    bound: float,
    profile: Profile | None = None,
    device: BenchDevice | None = None,
) -> dict[str, Any]:
    """Run ``config`` (as ``sim``'s profile plans it) on ``device`` (default: this CPU)
    and compare it with the simulator's predictions from ``profile`` (default: the
    same) for the requests it served, and, beside them, for the workload."""
    device = device or BenchDevice.cpu()
    planned = sim.evaluate(config)
    sim = Simulator(sim.request, profile) if profile is not None else sim
    predicted = sim.evaluate(config)
    spec = ReplicaSpec(
        ModelConfig.from_architecture(sim.request.architecture),
        config,
        max_input_tokens=workload.input.max,
        max_output_tokens=workload.output.max,
        steady_decode_batch=planned.decode_batch,
        dtype=device.dtype,
        seed=1,
    )
    vocab = sim.request.architecture.vocab_size
    probe = SpeedProbe(sim.request.architecture, mode.passes, device=device)
    concurrency = concurrency_for(config, spec)
    # at least 4x the concurrency: 40 % of the completions or more in the steady window
    closed = max(mode.closed_requests, MIN_CLOSED_PER_CONCURRENCY * concurrency)
    job = Job(
        closed=make_requests(workload, closed, rng, vocab),
        concurrency=concurrency,
        poisson=make_requests(workload, mode.poisson_requests, rng, vocab),
        gaps=[float(g) for g in rng.exponential(1.0, mode.poisson_requests)],
        rate=LOAD * predicted.throughput_qps,
        poisson_runs=mode.poisson_runs,
        probe=probe if probe.whole_model else None,
        device=device,
    )
    start = time.monotonic()
    driven = run_replica(spec, job)
    seconds = time.monotonic() - start
    # what the simulator is asked: the requests the engine served, not new draws
    steady = served_in_window(driven.closed, driven.window)
    served = Workload.from_pairs(
        [r.input_tokens for r in steady], [r.output_tokens for r in steady],
        f"the {len(steady)} requests of the steady window",
    )  # fmt: skip
    replayed = Simulator(sim.request.model_copy(update={"workload": served}), sim.profile)
    events = EventSimulator(sim.request, sim.profile)
    predicted_served = replayed.evaluate(config)
    window_records = in_window(driven.closed, driven.window)
    latency = p99_length_latency(window_records, served.output_p99)
    at_bound = p99_length_latency(window_records, workload.output_p99)
    open_loop = after_warmup(driven.poisson, POISSON_WARMUP_FRACTION)
    e2e = open_loop_e2e_p99(driven.poisson)
    ttft = [r.ttft for r in open_loop]
    measured = {
        "throughput_qps": driven.window.throughput,
        "latency_s": latency.seconds,
        "e2e_p99_s": e2e,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p99_s": nearest_rank(ttft, 99),
        "latency_at_workload_p99_s": at_bound.seconds,
    }
    pred = {
        "throughput_qps": predicted_served.throughput_qps,
        "latency_s": predicted_served.latency_s,
        "e2e_p99_s": replay_e2e_p99(events, config, driven.poisson),
    }
    # the plan's own figures, for the workload's distribution (new draws: sampling noise)
    drawn = events.run(config, np.random.default_rng(EVENTS_SEED), arrival_rate=driven.rate)
    pred_workload = {
        "throughput_qps": predicted.throughput_qps,
        "latency_s": predicted.latency_s,
        "e2e_p99_s": drawn.e2e_p99_s,
    }
    measured_workload = {**measured, "latency_s": at_bound.seconds}
    return {
        "role": role,
        "strategy": config.strategy,
        "config": config.model_dump(exclude_defaults=True),
        "summary": summarize_config(config),
        "processes": spec.topology().world,
        "predicted": {**pred, "decode_batch": predicted_served.decode_batch},
        "measured": measured,
        "error_pct": {k: error_pct(v, measured[k]) for k, v in pred.items()},
        "workload_prediction": {
            "predicted": {
                **pred_workload,
                "decode_batch": predicted.decode_batch,
                "e2e_p99_s_analytic": predicted.e2e_p99_s,
            },
            "error_pct": {k: error_pct(v, measured_workload[k]) for k, v in pred_workload.items()},
        },
        "meets_bound": bool(at_bound.seconds <= bound),
        "served": {
            "requests": len(steady),
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
        "closed_loop": {
            "requests": len(driven.closed),
            "concurrency": job.concurrency,
            "window_s": driven.window.seconds,
            "window_completions": driven.window.completions,
        },
        "poisson": {
            "requests": len(driven.poisson),
            "rate_qps": driven.rate,
            "load": LOAD,
            "busy_fraction": driven.busy_fraction,
            "counted": len(open_loop),
        },
        "poisson_again": [
            repeat_row(events, config, again, e2e, pred["e2e_p99_s"]) for again in driven.again
        ],
        "machine_speed": speed_row(sim.request, sim.profile, config, driven, e2e, job.probe),
        "steps": _steps_check(
            driven.steps, config, replayed, predicted_served, driven.window.seconds
        ),
        # the Poisson run's steps against the same profile: whether the machine kept pace
        "poisson_steps": _steps_check(
            driven.poisson_steps, config, replayed, predicted_served, None
        ),
        "seconds": seconds,
    }


def speed_row(
    request: PlanRequest,
    profile: Profile,
    config: ExecutionConfig,
    driven: Driven,
    e2e: float,
    probe: SpeedProbe | None,
) -> dict[str, Any] | None:
    """The probe's reading of the machine around the Poisson run against ``profile``'s
    tables (``ratio`` above 1: slower than priced), and the Poisson run replayed with
    every timing scaled to the mean of the two readings (``at_speed``): what the
    prediction would have been, had the profile been measured at the run's speed."""
    if probe is None or not driven.probed:
        return None
    prices = priced(profile, probe.points)
    ratios = [speed_ratio(seconds, prices) for seconds in driven.probed]
    factor = statistics.fmean(ratios)
    events = EventSimulator(request, at_speed(profile, factor))
    replayed = replay_e2e_p99(events, config, driven.poisson)
    return {
        "points": [list(p) for p in probe.points],
        "priced_s": list(prices),
        "probed_s": [list(seconds) for seconds in driven.probed],
        "ratio_before": ratios[0],
        "ratio_after": ratios[-1],
        "factor": factor,
        "predicted_e2e_p99_s": replayed,
        "error_pct": error_pct(replayed, e2e),
    }


def open_loop_e2e_p99(records: Sequence[Record]) -> float:
    """A Poisson run's p99 end-to-end latency, after its warm-up."""
    return nearest_rank([r.e2e for r in after_warmup(records, POISSON_WARMUP_FRACTION)], 99)


def repeat_row(
    events: EventSimulator,
    config: ExecutionConfig,
    records: Sequence[Record],
    first_e2e: float,
    first_predicted: float,
) -> dict[str, float]:
    """A repeat of the Poisson run (the same requests at the same gaps) beside the
    first: how far its measured e2e p99 moved (``moved_pct``), and the replay's
    error for it."""
    measured = open_loop_e2e_p99(records)
    predicted = replay_e2e_p99(events, config, records)
    return {
        "e2e_p99_s": measured,
        "predicted_e2e_p99_s": predicted,
        "error_pct": error_pct(predicted, measured),
        "moved_pct": error_pct(measured, first_e2e),
        "predicted_moved_pct": error_pct(predicted, first_predicted),
    }


def served_in_window(records: Sequence[Record], w: Window) -> list[Record]:
    """The closed loop's requests that finished in the steady window: the work its
    throughput counts."""
    return [r for r in records if w.start < r.finished <= w.end]


def replay_e2e_p99(
    events: EventSimulator, config: ExecutionConfig, records: Sequence[Record]
) -> float:
    """The simulator's p99 end-to-end latency for a Poisson run's own requests: each
    arriving when it did, with its lengths, counted after the same warm-up."""
    order = sorted(records, key=lambda r: r.arrival)
    timeline = events.replay(
        config,
        [r.arrival for r in order],
        [r.input_tokens for r in order],
        [r.output_tokens for r in order],
    )
    skip = math.ceil(POISSON_WARMUP_FRACTION * len(order))
    return nearest_rank([float(v) for v in timeline.e2e[skip:]], 99)


def _steps_check(
    steps: dict[str, dict[str, float]],
    config: ExecutionConfig,
    sim: Simulator,
    predicted: Prediction,
    window_s: float | None,
) -> dict[str, Any]:
    """The steady window's steps as measured, beside the profile's tables for a step of
    the same mean batch (the model's work, without what serving adds to a step): decode
    at the workload's mean context (Static: the mean input plus half the batch's
    expected longest output); encode at the steps' mean prompt (packed encodings cost
    their tokens) or, for Static, at their mean longest prompt (it pads a batch to its
    longest). Then, given the steady window (``window_s``), what serving added: the
    window's seconds beyond the tables' steps, per step, beside the profile's
    ``engine`` curve, and of it the seconds between the steps (the engine's loop; the
    rest is the chain's handling of a command and the step's slowdown in the engine).
    Where a prediction misses, this says whether the steps, the engine or the batching
    differ."""
    k, m = sim.costs, sim.m
    if config.strategy == "WorkloadAware":
        enc, dec = sim.workload_aware_groups(config)
    else:
        enc = dec = Group(config.pipeline_stages, config.tensor_parallel)
    out: dict[str, Any] = {"predicted_decode_batch": predicted.decode_batch}
    engine = 0.0  # the profile's engine seconds of the window's steps
    tables = 0.0  # the tables' seconds of the window's steps
    if "decode" in steps:
        d = steps["decode"]
        context = m.mean_context
        if config.strategy == "Static":  # every slot decodes until the batch's longest ends
            context = m.mean_input + m.expected_max_steps(config.encode_batch) / 2
        own = k.engine_step(d["mean_batch"])
        model = k.iteration(dec, d["mean_batch"], context, config.micro_batches) - own
        engine += own * d["steps"]
        tables += model * d["steps"]
        out["decode"] = {
            **d,
            "model_seconds": model,
            "error_pct": error_pct(model, d["mean_seconds"]),
        }
    if "encode" in steps:
        e = steps["encode"]
        padded = config.strategy == "Static"
        length = e["mean_longest_prompt"] if padded else e["mean_prompt"]
        own = k.engine_step(e["mean_batch"])
        model = k.encode_latency(enc, e["mean_batch"], length) - own * enc.stages
        engine += own * e["steps"]
        tables += model * e["steps"]
        out["encode"] = {
            **e,
            "model_seconds": model,
            "model_at": "mean longest prompt" if padded else "mean prompt",
            "error_pct": error_pct(model, e["mean_seconds"]),
        }
    count = sum(x["steps"] for x in steps.values())
    busy = sum(x["steps"] * x["mean_seconds"] for x in steps.values())
    if count and window_s is not None and config.strategy != "WorkloadAware":
        # (WorkloadAware: two loops, whose steps overlap)
        beyond = (window_s - tables) / count
        out["engine"] = {
            "seconds_per_step": beyond,
            "between_steps_s": (window_s - busy) / count,
            "model_seconds": engine / count,
            "error_pct": error_pct(engine / count, beyond),
        }
    return out


# -- the bench --------------------------------------------------------------------------------


def measure_profile(
    architecture: Architecture,
    mode: Mode,
    seconds: float,
    log: Callable[[str], None],
    device: BenchDevice | None = None,
) -> Profile:
    """The XProfiler's profile of ``architecture`` on ``device`` (default: this CPU,
    one thread)."""
    return bench_profiler(
        architecture, seconds=seconds, midpoints=mode.midpoints, passes=mode.passes, log=log,
        device=device,
    ).run()  # fmt: skip


def plan_request(
    architecture: Architecture,
    workload: Workload,
    gpus: int = 1,
    bound: float | None = None,
    strategy: StrategyChoice = "Auto",
    device: BenchDevice | None = None,
) -> PlanRequest:
    """The planner's request for ``device``: on the CPU, one process per "GPU"."""
    device = device or BenchDevice.cpu()
    return PlanRequest(
        architecture=architecture, gpu=device.gpu, gpus=gpus, gpus_per_node=gpus,
        dtype=device.dtype, workload=workload, latency_bound_s=bound, strategy=strategy,
    )  # fmt: skip


def _configs(
    mode: Mode,
    architecture: Architecture,
    workload: Workload,
    profile: Profile,
    bound: float,
    device: BenchDevice,
) -> tuple[list[tuple[str, ExecutionConfig, Simulator]], list[str]]:
    """(role, configuration, its simulator) to run, and notes on what was left out."""
    notes: list[str] = []
    request = plan_request(architecture, workload, 1, bound, device=device)
    plan = schedule(request, profile)
    if not isinstance(plan, Plan):
        raise RuntimeError(f"no plan meets the {bound:.3f} s bound: {plan.message}")
    sim = Simulator(request, profile)
    out = [("plan", plan.config, sim)]
    for role, key in (("static", "Static"), ("continuous", "Continuous")):
        base = plan.baselines.get(key)
        if role not in mode.roles:
            continue
        if base is None:
            notes.append(f"no {key} configuration meets the bound")
            continue
        out.append((role, base.config, sim))
    if "workload-aware" in mode.roles and not device.fits(2):
        notes.append(f"WorkloadAware needs two GPUs (one process each); {device.gpus} here")
    elif "workload-aware" in mode.roles:
        two = plan_request(architecture, workload, 2, bound, "WorkloadAware", device)
        waa = schedule(two, profile)
        if isinstance(waa, Plan):
            out.append(("workload-aware", waa.config, Simulator(two, profile)))
        else:
            notes.append(f"no WorkloadAware configuration meets the bound: {waa.message}")
    return out, notes


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [abs(v) for v in values if math.isfinite(v)]
    if not finite:
        return {"median_abs_pct": math.nan, "worst_abs_pct": math.nan}
    return {"median_abs_pct": statistics.median(finite), "worst_abs_pct": max(finite)}


def summarize(
    configs: Sequence[dict[str, Any]], bound: float, target_error_pct: float
) -> dict[str, Any]:
    """Errors per metric over the configurations (against ``target_error_pct``), and
    the ratio over static batching."""
    metrics = ("throughput_qps", "latency_s", "e2e_p99_s")
    errors = {m: _stats([c["error_pct"][m] for c in configs]) for m in metrics}
    every = [c["error_pct"][m] for c in configs for m in metrics]
    overall = _stats(every)
    one = [c for c in configs if c.get("processes", 1) == 1]
    one_process = {m: _stats([c["error_pct"][m] for c in one]) for m in metrics}
    # the plan's figures for the workload against the same measurements (sampling noise in)
    of_workload = [c["workload_prediction"]["error_pct"] for c in one if "workload_prediction" in c]
    workload_one_process = {m: _stats([e[m] for e in of_workload]) for m in metrics}
    # the Poisson run repeated: how far its measured e2e p99 moved, and the replay's errors
    again = [a for c in one for a in c.get("poisson_again", [])]
    repeats = {
        "runs": len(again),
        "moved_pct": _stats([a["moved_pct"] for a in again]),
        "error_pct": _stats([a["error_pct"] for a in again]),
    }
    # the machine around each Poisson run, and the e2e p99 replayed at that speed
    probed = [c["machine_speed"] for c in one if c.get("machine_speed")]
    speed = {
        "ratio_before": _stats([100 * (p["ratio_before"] - 1) for p in probed]),
        "ratio_after": _stats([100 * (p["ratio_after"] - 1) for p in probed]),
        "e2e_error_pct_at_probed_speed": _stats([p["error_pct"] for p in probed]),
    }
    by_role = {c["role"]: c for c in configs}
    ratio: dict[str, Any] = {"target": TARGET_RATIO, "bound_s": bound}
    plan, static = by_role.get("plan"), by_role.get("static")
    if plan is not None and static is not None:
        mp, ms = plan["measured"]["throughput_qps"], static["measured"]["throughput_qps"]
        # the planner's ratio: its predictions for the workload
        pp = plan["workload_prediction"]["predicted"]["throughput_qps"]
        ps = static["workload_prediction"]["predicted"]["throughput_qps"]
        ratio.update(
            plan_qps=mp, static_qps=ms, measured=mp / ms, predicted=pp / ps,
            plan_latency_s=plan["measured"]["latency_at_workload_p99_s"],
            static_latency_s=static["measured"]["latency_at_workload_p99_s"],
            plan_meets_bound=plan["meets_bound"], static_meets_bound=static["meets_bound"],
        )  # fmt: skip
        ratio["target_met"] = bool(mp / ms >= TARGET_RATIO)
    return {
        "errors_pct": errors,
        "overall_pct": overall,
        "errors_pct_one_process": one_process,
        "errors_pct_workload_one_process": workload_one_process,
        "target_error_pct": target_error_pct,
        # the target is for the profile's setting: one process (one thread) per replica
        "error_target_met": {
            m: bool(one_process[m]["worst_abs_pct"] < target_error_pct) for m in metrics
        },
        "ratio_over_static": ratio,
        "poisson_repeats_one_process": repeats,
        "machine_speed_one_process": speed,
    }


def bench(
    mode: Mode,
    *,
    seed: int,
    profile_seconds: float | None = None,
    log: Callable[[str], None] = lambda _m: None,
    architecture: Architecture | None = None,
    workload: Workload | None = None,
    device: BenchDevice | None = None,
) -> dict[str, Any]:
    """Profile, plan, run every configuration on ``device`` (default: this CPU); the
    report."""
    start = time.monotonic()
    device = device or BenchDevice.cpu()
    architecture = architecture or default_architecture(device)
    workload = workload or bench_workload()
    budget = profile_seconds or mode.profile_seconds
    profile = measure_profile(architecture, mode, budget, log, device)
    profiled = time.monotonic() - start
    request = plan_request(architecture, workload, device=device)
    (bound,) = static_latency_percentiles(request, profile, (BOUND_PERCENTILE,))
    configs, notes = _configs(mode, architecture, workload, profile, bound, device)
    rng = np.random.default_rng(seed)
    rows = []
    for index, (role, config, sim) in enumerate(configs):
        # each configuration is predicted from a profile measured just before it runs (the
        # first: the planning one): a shared machine's speed drifts over minutes
        fresh, fresh_s = profile, profiled
        if index > 0:
            at = time.monotonic()
            fresh = measure_profile(architecture, mode, budget, log, device)
            fresh_s = time.monotonic() - at
        log(f"running {role}: {summarize_config(config)}")
        try:
            row = measure_config(role, config, sim, workload, mode, rng, bound, fresh, device)
            rows.append({**row, "profile_seconds": fresh_s})
        except Exception as exc:  # a multi-process replica that fails is reported, not fatal
            if config.strategy != "WorkloadAware":
                raise
            notes.append(f"{role} ({summarize_config(config)}) failed: {exc}")
    if device.kind == "cpu" and any(r["processes"] > 1 for r in rows) and _cpus() <= 2:
        notes.append(
            f"the {max(r['processes'] for r in rows)}-process replica shares {_cpus()} cores "
            "with the driver's engine and client threads, and every step goes through gloo: "
            "the profile (one process, one thread, the other core idle) sees neither"
        )
    keys = ("name", "family", "num_layers", "hidden_size", "num_heads", "ffn_size", "vocab_size")
    return {
        "mode": mode.name,
        "model": architecture.model_dump(include=set(keys)),
        "workload": workload.describe(),
        "latency_bound_s": bound,
        "bound_rule": f"p{BOUND_PERCENTILE} of the static-batching configurations' latencies",
        "configs": rows,
        "summary": summarize(rows, bound, device.target_error_pct),
        "notes": notes,
        "environment": {
            "device": device.describe(),
            "gpu_type": device.gpu.name,
            "dtype": device.dtype,
            "machine": platform.machine(),
            "cpus": _cpus(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seed": seed,
        },
        "profile_seconds": profiled + sum(r["profile_seconds"] for r in rows[1:]),
        "seconds": time.monotonic() - start,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# -- output -----------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    """``x`` with NaN and infinities as null (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _steps_line(steps: dict[str, Any]) -> str:
    parts = []
    d, e = steps.get("decode"), steps.get("encode")
    if d:
        parts.append(
            f"decode {1e3 * d['mean_seconds']:.2f} ms at batch {d['mean_batch']:.1f} "
            f"(model {1e3 * d['model_seconds']:.2f} ms)"
        )
    if e:
        parts.append(
            f"encode {1e3 * e['mean_seconds']:.1f} ms at batch {e['mean_batch']:.1f} "
            f"(model {1e3 * e['model_seconds']:.1f} ms at the {e['model_at']})"
        )
    g = steps.get("engine")
    if g:
        parts.append(
            f"engine {1e6 * g['seconds_per_step']:.0f} us per step, "
            f"{1e6 * g['between_steps_s']:.0f} between steps "
            f"(profile {1e6 * g['model_seconds']:.0f} us)"
        )
    return "steps: " + "; ".join(parts)


def format_table(report: dict[str, Any]) -> str:
    w = 48
    lines = [
        f"{report['model']['name']} on {report['environment']['cpus']} CPU core(s), "
        f"workload {report['workload']['name']}, bound {report['latency_bound_s']:.3f} s "
        f"({report['bound_rule']})",
        "",
        f"{'role':15} {'configuration':{w - 16}} {'metric':17} {'predicted':>10} "
        f"{'measured':>10} {'error %':>8}",
    ]
    names = (("throughput_qps", "throughput q/s", ".2f"), ("latency_s", "p99-len latency s",
             ".3f"), ("e2e_p99_s", "e2e p99 s", ".3f"))  # fmt: skip
    for c in report["configs"]:
        summary = c["summary"] if len(c["summary"]) <= w - 16 else c["summary"][: w - 18] + ".."
        for i, (key, label, fmt) in enumerate(names):
            head = f"{c['role']:15} {summary:{w - 16}}" if i == 0 else " " * w
            lines.append(
                f"{head} {label:17} {_num(c['predicted'][key], fmt):>10} "
                f"{_num(c['measured'][key], fmt):>10} {_num(c['error_pct'][key], '+.1f'):>8}"
            )
        m = c["measured"]
        lat = c["latency_measurement"]
        wp = c["workload_prediction"]
        lines.append(
            f"{'':{w}} for the workload (new draws): "
            + ", ".join(
                f"{_num(wp['predicted'][key], fmt)} ({_num(wp['error_pct'][key], '+.1f')} %)"
                for key, _, fmt in names
            )
        )
        lines.append(
            f"{'':{w}} {'TTFT median/p99 s':17} {'':>10} "
            f"{_num(m['ttft_median_s'], '.3f')}/{_num(m['ttft_p99_s'], '.3f')}"
        )
        lines.append(
            f"{'':{w}} latency at {lat['p99_length']} tokens (the served p99): {lat['method']} "
            f"of {lat['requests']} requests; at {lat['workload_p99_length']} tokens "
            f"{_num(m['latency_at_workload_p99_s'], '.3f')} s "
            f"{'meets' if c['meets_bound'] else 'misses'} the bound; "
            f"{c['processes']} process(es)"
        )
        lines.append(f"{'':{w}} {_steps_line(c['steps'])}")
        lines.append(f"{'':{w}} Poisson run's {_steps_line(c['poisson_steps'])}")
        for a in c.get("poisson_again", []):
            lines.append(
                f"{'':{w}} the Poisson run again: e2e p99 {_num(a['e2e_p99_s'], '.3f')} s "
                f"({_num(a['moved_pct'], '+.1f')} % from the first), predicted "
                f"{_num(a['predicted_e2e_p99_s'], '.3f')} s ({_num(a['error_pct'], '+.1f')} %)"
            )
        speed = c.get("machine_speed")
        if speed:
            lines.append(
                f"{'':{w}} the machine against the profile's steps: "
                f"{_num(100 * (speed['ratio_before'] - 1), '+.1f')} % before the Poisson run, "
                f"{_num(100 * (speed['ratio_after'] - 1), '+.1f')} % after; e2e p99 replayed "
                f"at that speed {_num(speed['predicted_e2e_p99_s'], '.3f')} s "
                f"({_num(speed['error_pct'], '+.1f')} %)"
            )
    s = report["summary"]
    lines.append("")
    for key, label, _ in names:
        e, one = s["errors_pct"][key], s["errors_pct_one_process"][key]
        lines.append(
            f"{label:18} error: median {_num(e['median_abs_pct'], '.1f')} %, worst "
            f"{_num(e['worst_abs_pct'], '.1f')} %; one-process configurations: median "
            f"{_num(one['median_abs_pct'], '.1f')} %, worst {_num(one['worst_abs_pct'], '.1f')} % "
            f"(target < {s['target_error_pct']:g} %: "
            f"{'met' if s['error_target_met'][key] else 'missed'}); "
            f"the workload's prediction: worst "
            f"{_num(s['errors_pct_workload_one_process'][key]['worst_abs_pct'], '.1f')} %"
        )
    rp = s["poisson_repeats_one_process"]
    if rp["runs"]:
        lines.append(
            f"the Poisson runs repeated ({rp['runs']}): measured e2e p99 moved by "
            f"{_num(rp['moved_pct']['median_abs_pct'], '.1f')} % (median), "
            f"{_num(rp['moved_pct']['worst_abs_pct'], '.1f')} % (worst); their prediction "
            f"error: worst {_num(rp['error_pct']['worst_abs_pct'], '.1f')} %"
        )
    ms = s["machine_speed_one_process"]["e2e_error_pct_at_probed_speed"]
    if math.isfinite(ms["worst_abs_pct"]):
        lines.append(
            f"e2e p99 replayed at the speed the probe read around each Poisson run: error "
            f"median {_num(ms['median_abs_pct'], '.1f')} %, worst "
            f"{_num(ms['worst_abs_pct'], '.1f')} % (a diagnostic; the target is judged above)"
        )
    r = s["ratio_over_static"]
    if "measured" in r:
        lines.append(
            f"plan / static throughput: {r['measured']:.2f}x measured "
            f"({r['plan_qps']:.2f} / {r['static_qps']:.2f} q/s), {r['predicted']:.2f}x "
            f"predicted; target >= {r['target']:g}x: {'met' if r['target_met'] else 'missed'}; "
            f"measured latency {r['plan_latency_s']:.3f} s (plan) and "
            f"{r['static_latency_s']:.3f} s (static) against the {r['bound_s']:.3f} s bound"
        )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append(
        f"({report['seconds']:.0f} s, of which profiling {report['profile_seconds']:.0f} s)"
    )
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exegpt bench runner", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="the plan and Static, fewer requests")
    parser.add_argument("--seed", type=int, default=0, help="request lengths and prompts")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, metavar="S", help="profiling budget"
    )
    parser.add_argument(
        "--requests", type=int, default=None, metavar="N",
        help="requests of each closed loop (the Poisson run gets half)",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu",
        help="cpu: the small model on one thread (target < 10 %%); cuda: llama-2-7b's shape "
        "(random float16 weights) on this node's GPU (target < 5 %%)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        device = BenchDevice.cuda() if args.device == "cuda" else BenchDevice.cpu()
    except NoDevice as exc:
        print(f"error: --device cuda: {exc}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    mode = QUICK if args.quick else FULL
    if args.requests:
        mode = replace(mode, closed_requests=args.requests, poisson_requests=args.requests // 2)
    report = bench(
        mode, seed=args.seed, profile_seconds=args.profile_seconds, log=log, device=device
    )
    if args.json:
        print(json.dumps(_jsonable(report)))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
