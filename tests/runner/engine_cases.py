"""Driving an engine with concurrent requests, in one process or as rank 0 of a spawned
world (functions at module level so that spawned processes can run them)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from exegpt.planner.plan import ExecutionConfig
from exegpt.runner.generate import Sampling
from exegpt.runner.replica import ReplicaSpec, run_rank
from exegpt.runner.serving import GenerationRequest, TokenEvent

PROMPTS = [
    [5, 6, 7, 8, 9, 10, 11],
    [3],
    [20, 21, 22, 23],
    [1, 2],
    [9] * 10,
    [4, 4, 4],
    [30, 31, 32, 33, 34, 35],
    [7, 8],
]
LENGTHS = [6, 3, 8, 2, 5, 7, 1, 4]


@dataclass(frozen=True)
class Outcome:
    tokens: list[list[int]]
    reasons: list[str | None]


class _Collector:
    """The tokens and end of ``n`` requests, from their sinks (the engine's thread)."""

    def __init__(self, n: int) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.reasons: list[str | None] = [None] * n
        self._done = threading.Semaphore(0)

    def sink(self, i: int) -> Any:
        def sink(ev: TokenEvent) -> None:
            if ev.token is not None:
                self.tokens[i].append(ev.token)
            if ev.finished is not None:
                self.reasons[i] = ev.finished
                self._done.release()

        return sink

    def wait(self, threads: list[threading.Thread]) -> Outcome:
        """Run the client ``threads``, then wait until every request has ended."""
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for _ in self.reasons:
            if not self._done.acquire(timeout=60):
                raise TimeoutError("requests did not finish")
        return Outcome(self.tokens, self.reasons)


def drive(
    spec: ReplicaSpec,
    *,
    sampled: bool = False,
    stagger_s: float = 0.002,
    seed: int = 0,
) -> Outcome:
    """Submit every prompt from its own thread (staggered, in a shuffled order) to a
    one-process replica or, on rank 0, to the driver; wait for all."""
    engine = run_rank(spec, 0, torch.device("cpu"))
    assert engine is not None
    try:
        return _submit_all(engine, sampled, stagger_s, seed)
    finally:
        engine.stop()


def _submit_all(engine: Any, sampled: bool, stagger_s: float = 0.002, seed: int = 0) -> Outcome:
    order = list(range(len(PROMPTS)))
    random.Random(seed).shuffle(order)
    sampling = Sampling(greedy=False, temperature=0.8, top_k=20) if sampled else Sampling()
    got = _Collector(len(PROMPTS))

    def submit(i: int, delay: float) -> None:
        time.sleep(delay)
        req = GenerationRequest(tuple(PROMPTS[i]), LENGTHS[i], sampling, seed=100 + i)
        engine.submit(req, got.sink(i))

    return got.wait(
        [threading.Thread(target=submit, args=(i, k * stagger_s)) for k, i in enumerate(order)]
    )


def _each_spec(rank: int, specs: list[ReplicaSpec], run: Callable[[Any], Outcome]) -> Any:
    """Every rank of a spawned world: each spec's replica in turn; rank 0 drives it
    with ``run(engine)``."""
    torch.set_num_threads(1)
    results: list[Outcome | None] = []
    for spec in specs:
        engine = run_rank(spec, rank, torch.device("cpu"))
        if engine is None:
            results.append(None)
            continue
        try:
            results.append(run(engine))
        finally:
            engine.stop()
    if dist.is_initialized():
        # every rank leaves together: a rank that exits (closing its connections) while
        # another still waits on its last message fails that one with "closed by peer"
        dist.barrier()
    return results


def world_worker(rank: int, world: int, specs: list[ReplicaSpec], sampled: bool) -> Any:
    """The prompts above, on every spec's replica in turn."""
    return _each_spec(rank, specs, lambda engine: _submit_all(engine, sampled))


def config(strategy: str, **kw: Any) -> ExecutionConfig:
    return ExecutionConfig(strategy=strategy, **kw)  # type: ignore[arg-type]


def stress_requests(seed: int, n: int = 60) -> list[tuple[tuple[int, ...], int, bool]]:
    """Random prompts and lengths within the tests' limits; about one in seven is to
    be cancelled (those ask for the most tokens, so that they are still running)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = tuple(rng.randrange(1, 120) for _ in range(rng.randint(1, 14)))
        cancel = rng.random() < 0.15
        out.append((prompt, 16 if cancel else rng.randint(1, 14), cancel))
    return out


def stress(engine: Any, requests: list[tuple[tuple[int, ...], int, bool]]) -> Outcome:
    """Four client threads submit ``requests`` (cancelling the marked ones a moment
    later); wait until every one has ended and the engine is idle."""
    got = _Collector(len(requests))

    def client(k: int) -> None:
        rng = random.Random(k)
        for i in range(k, len(requests), 4):
            prompt, length, cancel = requests[i]
            rid = engine.submit(GenerationRequest(prompt, length), got.sink(i))
            if cancel:
                time.sleep(0.003)
                engine.cancel(rid)
            time.sleep(rng.random() * 0.004)

    out = got.wait([threading.Thread(target=client, args=(k,)) for k in range(4)])
    if not engine.wait_idle(10):
        raise TimeoutError("the engine did not become idle")
    return out


def stress_worker(rank: int, world: int, specs: list[ReplicaSpec], seed: int) -> Any:
    """``stress_requests(seed)`` on every spec's replica in turn."""
    return _each_spec(rank, specs, lambda engine: stress(engine, stress_requests(seed)))


def _slow_admissions(delay_s: float) -> None:
    """Make this rank take its admitted caches ``delay_s`` late (a busy decoder)."""
    from exegpt.runner import chain

    admit = chain._admit_kv

    def late(*args: Any) -> None:
        time.sleep(delay_s)
        admit(*args)

    chain._admit_kv = late  # type: ignore[assignment]


def one_token_late_admission_worker(rank: int, world: int, spec: ReplicaSpec) -> Any:
    """A request that ends at its prefill (one output token) while the decoder rank
    (the last) admits its caches late: the engine stops before the decoder takes them."""
    if rank == world - 1:
        _slow_admissions(0.5)

    def one(engine: Any) -> Outcome:
        got = _Collector(1)
        engine.submit(GenerationRequest(tuple(PROMPTS[6]), 1), got.sink(0))
        return got.wait([])

    return _each_spec(rank, [spec], one)
