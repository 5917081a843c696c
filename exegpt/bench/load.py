"""Load generation for ``exegpt bench runner``: requests driven through an engine (a
Poisson run, then a closed loop), on a replica of one process or several, with every
step the engine runs timed."""

from __future__ import annotations

import math
import os
import queue
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exegpt.bench.device import BenchDevice
from exegpt.bench.records import Record, Window, steady_window
from exegpt.bench.speed import SpeedProbe
from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.workload import Workload
from exegpt.runner.engine import Engine
from exegpt.runner.generate import Sampling
from exegpt.runner.heap import frozen_heap
from exegpt.runner.replica import ReplicaSpec, run_rank
from exegpt.runner.serving import GenerationRequest, TokenEvent
from exegpt.runner.wire import Op

SAMPLED = Sampling(greedy=False, temperature=1.0)  # every request's decoding


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
    ranks: tuple[RankRun, ...] = ()  # the replica's processes, in rank order


@dataclass(frozen=True)
class RankRun:
    """One process of a replica as it ran: its rank, operating-system process id, the
    chain and pipeline stage it held, and the CPU seconds it spent from building its
    part to stopping (a stage that computed its layers spent seconds, not none)."""

    rank: int
    pid: int
    chain: str
    stage: int
    cpu_s: float

    @classmethod
    def here(cls, spec: ReplicaSpec, rank: int, cpu_since: float) -> RankRun:
        chain = spec.topology().chain_of(rank)
        stage, _ = chain.place(rank)
        return cls(rank, os.getpid(), chain.name, stage, time.process_time() - cpu_since)


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


def _drive_rank(rank: int, world: int, spec: ReplicaSpec, job: Job) -> Driven | RankRun:
    """One process of a multi-process replica (``launch``): rank 0 drives the job and
    returns what it measured; every other rank serves its stage until the driver stops
    the replica, and returns how it ran."""
    cpu = time.process_time()
    engine = run_rank(spec, rank, job.device.torch_device(rank), keep_finished=True, freeze=True)
    if engine is None:
        return RankRun.here(spec, rank, cpu)
    try:
        driven = drive(engine, job)
    finally:
        engine.stop()
    driven.ranks = (RankRun.here(spec, rank, cpu),)
    return driven


def run_replica(spec: ReplicaSpec, job: Job) -> Driven:
    """Run ``job`` on a replica of ``spec``: in this process, or in as many processes
    as the configuration needs (gloo, one torch thread each)."""
    world = spec.topology().world
    if world == 1:
        cpu = time.process_time()
        try:
            with frozen_heap():  # as a serving process: full collections scan only its objects
                engine = run_rank(spec, 0, job.device.torch_device(), keep_finished=True)
                assert engine is not None
                try:
                    driven = drive(engine, job)
                finally:
                    engine.stop()
        finally:
            job.device.release()
        driven.ranks = (RankRun.here(spec, 0, cpu),)
        return driven
    from exegpt.runner.distributed import launch

    first, *others = launch(
        _drive_rank, world, spec, job, backend=job.device.backend, threads=1,
        timeout_s=job.timeout_s * 3,
    )  # fmt: skip
    assert isinstance(first, Driven) and all(isinstance(r, RankRun) for r in others)
    first.ranks = (*first.ranks, *others)
    return first


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
