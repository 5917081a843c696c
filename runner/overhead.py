"""What a step costs the serving engine beyond the model's work as the profile's tables
price it (the profile's ``engine`` curve).

The real :class:`~exegpt.runner.engine.Engine` decodes a batch of requests through a
chain whose every step does the work it is given. The XProfiler gives it a decode
step of the bench model through a real one-stage chain (:func:`local_chain`): the
command, the token tensors, the slot order and the sampling the workers run. The
engine's wall clock per step, less the same model step timed alone, is what serving
adds to a step: the engine's loop choosing the batch, building each command, handing
every sequence its token (to a sink that keeps the events, as a client does),
settling finished requests and keeping its metrics; the chain's handling of a
command; and what the model's step loses to the caches that all this leaves behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from exegpt.planner.plan import ExecutionConfig

from .chain import ChainClient, Member
from .engine import Engine
from .model import Transformer
from .sampling import RowSampling
from .serving import GenerationRequest, Limits, TokenEvent
from .stage import StageRunner
from .topology import MAIN, ChainSpec, Topology
from .wire import Command, Op

TOKEN = 1  # the token every stand-in step answers with (no request stops on it)
SAMPLED = RowSampling(temperature=1.0)  # every row samples, as the profile's head is timed


class StandInChain(ChainClient):
    """A one-stage chain whose steps do ``work(batch)`` (nothing by default) and answer
    every sequence with a token. It counts its steps and the seconds ``work`` took;
    ``reset`` runs after each step's work (to restore what the work changed), its
    seconds counted apart."""

    def __init__(
        self,
        work: Callable[[int], object] | None = None,
        reset: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(ChainSpec(MAIN, 1, 1), torch.device("cpu"))
        self.work, self.reset = work, reset
        self.steps = 0
        self.seconds = 0.0
        self.reset_seconds = 0.0

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
        if out and self.reset is not None:
            start = time.perf_counter()
            self.reset()
            self.reset_seconds += time.perf_counter() - start
        return out


@dataclass(frozen=True)
class EngineTiming:
    """One engine run through a stand-in chain."""

    steps: int
    seconds: float  # the engine's wall clock, the chain's resets left out
    work_seconds: float  # in the chain's work

    @property
    def per_step(self) -> float:
        """Wall-clock seconds per step, the work included."""
        return self.seconds / self.steps

    @property
    def outside(self) -> float:
        """Seconds per step outside the chain's work: the engine's own loop."""
        return max(self.seconds - self.work_seconds, 0.0) / self.steps


def time_engine(
    batch: int,
    steps: int,
    vocab_size: int,
    work: Callable[[int], object] | None = None,
    reset: Callable[[], object] | None = None,
    timeout_s: float = 60.0,
) -> EngineTiming:
    """Time the engine decoding ``batch`` requests of ``steps`` tokens each (one encode
    step, then ``steps - 1`` decode steps of the whole batch), each step doing
    ``work(batch)`` and then ``reset()``."""
    if batch < 1 or steps < 2:
        raise ValueError("batch must be >= 1 and steps >= 2")
    chain = StandInChain(work, reset)
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
    return EngineTiming(chain.steps, elapsed - chain.reset_seconds, chain.seconds)


def local_chain(model: Transformer, slots: int, max_len: int) -> ChainClient:
    """A real one-stage chain over ``model`` (a whole model: embedding to head), run in
    this process as a one-process replica's driver runs its chain."""
    spec = ChainSpec(MAIN, 1, 1)
    runner = StageRunner(model, slots=slots, max_len=max_len)
    member = Member(Topology((spec,)), spec, 0, 0, runner, None, [])
    return ChainClient(spec, model.device, member)


@dataclass(frozen=True)
class ChainDecode:
    """A decode step of a batch of sequences through a real chain (:func:`local_chain`):
    ``step`` runs it, ``rewind`` puts the caches back. The step's command is built once,
    as the engine builds it (outside the chain, where its time is the engine's)."""

    chain: ChainClient
    command: Command
    lengths: tuple[int, ...]  # each sequence's cached tokens after its encoding

    @classmethod
    def prepared(cls, model: Transformer, batch: int, context: int, max_len: int) -> ChainDecode:
        """The chain, with ``batch`` sequences of ``context`` prompt tokens encoded."""
        chain = local_chain(model, batch, max_len)
        ids = list(range(batch))
        prefill = Command(Op.PREFILL, ids, [context] * batch, [SAMPLED] * batch)
        chain.run([(prefill, [[TOKEN] * context for _ in ids])])
        rows = [RowSampling(1.0, 0, s, context) for s in ids]
        decode = Command(Op.DECODE, ids, [1] * batch, rows)
        cache = cls._runner_of(chain).cache
        return cls(chain, decode, tuple(cache.length(s) for s in ids))

    @staticmethod
    def _runner_of(chain: ChainClient) -> StageRunner:
        assert chain.local is not None
        return chain.local.runner

    @property
    def runner(self) -> StageRunner:
        return self._runner_of(self.chain)

    def step(self) -> None:
        self.chain.run([(self.command, [TOKEN] * self.command.batch)])

    def work(self, _batch: int) -> None:
        """The step, as a stand-in chain's work (its batch is this one's)."""
        self.step()

    def rewind(self) -> None:
        cache = self.runner.cache
        for s, n in enumerate(self.lengths):
            cache.set_length(s, n)
