"""The serving engine's own time per step, for the XProfiler's profile (its ``engine``
curve).

The engine runs its steps through a chain that answers every sequence with a token and
does, for each step, the work it is given (the profiler gives it a model step of the
batch, so that the engine's loop runs with the caches a model step leaves behind, as it
does when serving). The time outside the chain's steps is the engine's own work: its
loop choosing the batch, building each step's command, handing every sequence its token
(a sink that keeps the events, as a client does), settling finished requests and
keeping its metrics. The model's steps and the head are what the rest of the profile
prices.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from exegpt.planner.plan import ExecutionConfig

from .chain import ChainClient
from .engine import Engine
from .serving import GenerationRequest, Limits, TokenEvent
from .topology import MAIN, ChainSpec
from .wire import Command, Op

TOKEN = 1  # the token every idle step answers with (no request stops on it)


class StandInChain(ChainClient):
    """A one-stage chain whose steps do ``work(batch)`` (nothing by default) and answer
    every sequence with a token; it counts its steps and the seconds they took."""

    def __init__(self, work: Callable[[int], object] | None = None) -> None:
        super().__init__(ChainSpec(MAIN, 1, 1), torch.device("cpu"))
        self.work = work
        self.steps = 0
        self.seconds = 0.0

    def run(
        self, items: Sequence[tuple[Command, Sequence[Sequence[int]] | Sequence[int] | None]]
    ) -> list[list[int]]:
        start = time.perf_counter()
        out = [[TOKEN] * cmd.batch for cmd, _ in items if cmd.op in (Op.PREFILL, Op.DECODE)]
        if out:
            self.steps += 1
            if self.work is not None:
                self.work(sum(len(o) for o in out))
        self.seconds += time.perf_counter() - start
        return out


def step_seconds(
    batch: int,
    steps: int,
    vocab_size: int,
    work: Callable[[int], object] | None = None,
    timeout_s: float = 60.0,
) -> float:
    """The engine's own seconds per step, outside the chain's steps, while it decodes
    ``batch`` requests of ``steps`` tokens each (one encode step, then ``steps - 1``
    decode steps of the whole batch), each step doing ``work(batch)``."""
    if batch < 1 or steps < 2:
        raise ValueError("batch must be >= 1 and steps >= 2")
    chain = StandInChain(work)
    engine = Engine(
        ExecutionConfig(strategy="Continuous", decode_batch=batch),
        {MAIN: chain},
        limits=Limits(1, steps + 1, vocab_size),
        slots=batch,
    )
    events: list[TokenEvent] = []
    for _ in range(batch):
        engine.submit(GenerationRequest((TOKEN,), steps), events.append)
    start = time.perf_counter()
    engine.start()
    try:
        if not engine.wait_idle(timeout_s):
            raise RuntimeError(
                f"the engine did not finish {batch} idle requests in {timeout_s:g} s"
            )
        elapsed = time.perf_counter() - start
    finally:
        engine.stop()
    if len(events) != batch * (steps + 1):  # every token, and each request's end
        raise RuntimeError(f"the engine emitted {len(events)} events for {batch}x{steps} tokens")
    return max(elapsed - chain.seconds, 0.0) / chain.steps
