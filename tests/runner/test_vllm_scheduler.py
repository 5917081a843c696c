"""The ExeGPT schedule inside vLLM (``exegpt.runner.vllm_scheduler``), checked from vLLM's
own per-step scheduler output on a tiny Llama, against stock vLLM on the same requests.

One engine runs the ExeGPT scheduler (started with a RoundRobin schedule in its
``additional_config``; the Static and Continuous tests switch its schedule in place) and
one runs vLLM's stock scheduler."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("vllm")

import itertools

from vllm_tiny import InProcessEngine, in_process_engine, save_tiny_llama

from exegpt.planner.vllm_schedule import SCHEDULER_CLS, VllmSchedule

pytestmark = pytest.mark.slow

ROUND_ROBIN = VllmSchedule(
    mode="RoundRobin", encode_batch=2, decode_steps_per_encode=3, decode_batch=4
)
MAX_NUM_SEQS = 8


def _requests() -> tuple[list[list[int]], list[int]]:
    rng = np.random.default_rng(7)
    lengths = rng.integers(3, 24, size=12)
    prompts = [[int(t) for t in rng.integers(3, 250, size=n)] for n in lengths]
    max_tokens = [int(n) for n in rng.integers(3, 16, size=12)]
    return prompts, max_tokens


PROMPTS, MAX_TOKENS = _requests()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def stock(model: Path) -> Iterator[tuple[dict[str, list[int]], list[Any]]]:
    """Stock vLLM's greedy outputs and steps for the requests."""
    with in_process_engine(model, max_num_seqs=MAX_NUM_SEQS) as engine:
        out = engine.generate(PROMPTS, MAX_TOKENS)
        yield out, list(engine.steps)


@pytest.fixture(scope="module")
def exegpt(model: Path) -> Iterator[InProcessEngine]:
    with in_process_engine(
        model,
        max_num_seqs=MAX_NUM_SEQS,
        scheduler_cls=SCHEDULER_CLS,
        additional_config=ROUND_ROBIN.additional_config(),
    ) as engine:
        yield engine


@pytest.fixture
def schedule(exegpt: InProcessEngine, request: pytest.FixtureRequest) -> Iterator[VllmSchedule]:
    """Puts the test's schedule (``request.param``) on the ExeGPT engine, then restores
    the one it started with."""
    started_with = exegpt.scheduler.exegpt_schedule
    exegpt.scheduler.exegpt_schedule = request.param
    yield request.param
    exegpt.scheduler.exegpt_schedule = started_with


def test_the_engine_reads_its_schedule_from_vllm_config(exegpt: InProcessEngine) -> None:
    assert type(exegpt.scheduler).__name__ == "ExeGPTScheduler"
    assert exegpt.scheduler.exegpt_schedule == ROUND_ROBIN


def test_round_robin_starts_at_most_b_e_prefills_every_n_d_steps(
    exegpt: InProcessEngine, stock: tuple[dict[str, list[int]], list[Any]]
) -> None:
    out = exegpt.generate(PROMPTS, MAX_TOKENS)
    steps = exegpt.steps
    plan = ROUND_ROBIN

    assert sum(s.started for s in steps) == len(PROMPTS)
    assert max(s.started for s in steps) == plan.encode_batch
    assert max(s.batch for s in steps) == plan.decode_batch
    prefill_steps = [i for i, s in enumerate(steps) if s.started]
    for before, after in itertools.pairwise(prefill_steps):
        idle = steps[after].running_before == 0
        assert idle or after - before >= plan.decode_steps_per_encode, (before, after)
    # the cadence held waiting requests back while there was room in the decode batch
    assert any(
        s.waiting_before and s.running_before < plan.decode_batch and not s.started for s in steps
    )
    assert out == stock[0]


@pytest.mark.parametrize(
    "schedule", [VllmSchedule(mode="Static", encode_batch=3, decode_batch=3)], indirect=True
)
def test_static_admits_a_batch_only_when_nothing_runs(
    exegpt: InProcessEngine,
    schedule: VllmSchedule,
    stock: tuple[dict[str, list[int]], list[Any]],
) -> None:
    out = exegpt.generate(PROMPTS, MAX_TOKENS)
    steps = exegpt.steps

    assert sum(s.started for s in steps) == len(PROMPTS)
    batches = 0
    for s in steps:
        if s.started:
            batches += 1
            assert s.running_before == 0 and s.started <= schedule.encode_batch
        else:
            assert s.batch <= s.running_before  # the batch only shrinks
    assert batches == -(-len(PROMPTS) // schedule.encode_batch)
    assert out == stock[0]


@pytest.mark.parametrize("schedule", [VllmSchedule(mode="Continuous")], indirect=True)
def test_continuous_is_stock_vllm(
    exegpt: InProcessEngine,
    schedule: VllmSchedule,
    stock: tuple[dict[str, list[int]], list[Any]],
) -> None:
    out = exegpt.generate(PROMPTS, MAX_TOKENS)

    assert [(s.started, s.batch) for s in exegpt.steps] == [(s.started, s.batch) for s in stock[1]]
    assert max(s.batch for s in exegpt.steps) == MAX_NUM_SEQS
    assert out == stock[0]
