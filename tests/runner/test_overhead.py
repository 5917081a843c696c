"""The engine's own time per step (the profile's ``engine`` curve): measured outside
the steps of a stand-in chain, whatever those steps take."""

from __future__ import annotations

import time

import pytest

from exegpt.runner.overhead import StandInChain, step_seconds
from exegpt.runner.sampling import RowSampling
from exegpt.runner.wire import Command, Op


def test_a_stand_in_chain_answers_every_sequence_and_times_its_steps() -> None:
    batches: list[int] = []

    def work(batch: int) -> None:
        batches.append(batch)
        time.sleep(0.002)

    chain = StandInChain(work)
    rows = [RowSampling()] * 2
    step = Command(Op.DECODE, [1, 2], [1, 1], rows)
    assert chain.run([(step, [5, 6]), (Command(Op.RELEASE, release=[3]), None)]) == [[1, 1]]
    assert chain.run([(Command(Op.RELEASE, release=[1]), None)]) == []
    assert (chain.steps, batches) == (1, [2])
    assert chain.seconds >= 0.002


def test_the_time_the_steps_take_is_not_the_engines() -> None:
    batches: list[int] = []

    def work(batch: int) -> None:
        batches.append(batch)
        time.sleep(0.002)

    overhead = step_seconds(4, 10, 100, work=work)
    assert batches == [4] * 10  # one encode step of 4, then 9 decode steps of 4
    assert 0 < overhead < 0.002  # the 2 ms each step sleeps is the chain's


def test_the_engines_time_grows_with_the_batch() -> None:
    small = min(step_seconds(1, 40, 100) for _ in range(3))
    large = min(step_seconds(64, 40, 100) for _ in range(3))
    # each sequence's token is built, emitted and checked in Python every step
    assert large > small


def test_a_step_needs_a_batch_and_two_tokens() -> None:
    with pytest.raises(ValueError, match="batch must be >= 1"):
        step_seconds(0, 10, 100)
    with pytest.raises(ValueError, match="steps >= 2"):
        step_seconds(1, 1, 100)
