"""The ExeGPT schedule on a vLLM pipeline (``pipeline_parallel_size`` P > 1): the engine
keeps P batches in flight and calls the scheduler once for each, so the plan's N_D
decode iterations are N_D x P calls, and an admission joins the batch of the call it
falls on for the rest of its requests' lives.

vLLM's own scheduler needs an engine; here ``ExeGPTScheduler.schedule`` runs as it
does in vLLM, over a stand-in for the base class it extends that admits and schedules
as vLLM's does on a pipeline (a request whose last step is in flight has nothing to
schedule), and a stand-in engine core that returns each batch's tokens P calls later.
A server of two stages runs the same class in ``exegpt bench vllm``'s pipeline row."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("vllm")

from vllm.v1.core.sched.scheduler import Scheduler

from exegpt.planner.vllm_schedule import VllmSchedule
from exegpt.runner.vllm_scheduler import ExeGPTScheduler, waits_for_a_step


@dataclass
class Req:
    """The fields of a vLLM ``Request`` the schedule reads, and its output length."""

    num_tokens_with_spec: int
    output: int
    num_output_placeholders: int = 0
    num_computed_tokens: int = 0
    generated: int = 0


class PipelineScheduler(Scheduler):
    """vLLM's admission and scheduling on a pipeline, reduced to what the schedule sees:
    the running requests whose last token is back are scheduled; waiting requests are
    admitted while fewer than ``max_num_active_reqs`` run."""

    waiting: list[Req]
    running: list[Req]
    max_num_active_reqs: int
    batches: list[list[Req]]

    def schedule(self, throttle_prefills: bool = False) -> Any:
        batch = [r for r in self.running if waits_for_a_step(r)]
        new = []
        while self.waiting and len(self.running) < self.max_num_active_reqs:
            new.append(self.waiting.pop(0))
            self.running.append(new[-1])
        for r in batch + new:
            r.num_computed_tokens = r.num_tokens_with_spec
        self.batches.append(batch + new)
        return SimpleNamespace(scheduled_new_reqs=new)


class Emulated(ExeGPTScheduler, PipelineScheduler):
    pass


@dataclass
class Run:
    calls: list[int] = field(default_factory=list)  # requests scheduled on each call
    prefills: list[int] = field(default_factory=list)  # the calls that started requests


def run(schedule: VllmSchedule, stages: int, requests: int, output: int) -> Run:
    s = object.__new__(Emulated)
    s.exegpt_schedule = schedule
    s.waiting = [Req(8, output) for _ in range(requests)]
    s.running, s.batches = [], []
    s._stock_limit = s.max_num_active_reqs = 64
    s._calls_per_iteration = stages
    s._steps_since_prefill = 0
    out = Run()
    for call in itertools.count():
        if call >= stages:  # the batch of ``stages`` calls ago comes back
            for r in s.batches[call - stages]:
                r.num_tokens_with_spec += 1
                r.generated += 1
                if r.generated == r.output:
                    s.running.remove(r)
        if not s.running and not s.waiting:
            return out
        started = s.schedule().scheduled_new_reqs
        out.calls.append(len(s.batches[-1]))
        if started:
            out.prefills.append(call)
    raise AssertionError("unreachable")


ROUND_ROBIN = VllmSchedule(
    mode="RoundRobin", encode_batch=1, decode_steps_per_encode=4, decode_batch=64
)


def test_on_one_stage_a_prefill_comes_every_n_d_calls() -> None:
    got = run(ROUND_ROBIN, stages=1, requests=30, output=40)
    gaps = {b - a for a, b in itertools.pairwise(got.prefills)}
    assert gaps == {4}


@pytest.mark.parametrize("stages", [2, 3])
def test_on_a_pipeline_a_prefill_comes_every_n_d_iterations(stages: int) -> None:
    got = run(ROUND_ROBIN, stages=stages, requests=30, output=40)
    gaps = [b - a for a, b in itertools.pairwise(got.prefills)]
    # N_D iterations of ``stages`` calls each, and at most stages - 1 calls more
    # while the admission waits for the smaller batch
    assert min(gaps) >= 4 * stages
    assert max(gaps) <= 4 * stages + stages - 1
    assert sum(gaps) / len(gaps) < 4 * stages + 1


@pytest.mark.parametrize("stages", [2, 3])
def test_on_a_pipeline_the_batches_in_flight_stay_balanced(stages: int) -> None:
    got = run(ROUND_ROBIN, stages=stages, requests=40, output=60)
    # the steady part: the batches in flight together differ by at most one admission
    # and one departure (without the balance, every admission joined one batch and the
    # others ran empty)
    steady = got.calls[len(got.calls) // 4 : len(got.calls) // 2]
    for i in range(0, len(steady) - stages, stages):
        window = steady[i : i + stages]
        assert max(window) - min(window) <= 2 * ROUND_ROBIN.encode_batch, window
    assert min(steady) >= 0.7 * max(steady)
