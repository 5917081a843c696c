"""What a step costs the engine beyond the model's work (the profile's ``engine``
curve): the engine timed through a stand-in chain, the real chain it drives there, and
the line the XProfiler keeps."""

from __future__ import annotations

import time

import pytest
import torch
from tiny import tiny_config

from exegpt.runner import overhead
from exegpt.runner.model import Transformer
from exegpt.runner.overhead import (
    TOKEN,
    ChainDecode,
    StandInChain,
    local_chain,
    time_engine,
)
from exegpt.runner.profiler import affine_in_batch
from exegpt.runner.sampling import RowSampling, sample_rows
from exegpt.runner.weights import random_weights
from exegpt.runner.wire import Command, Op


def test_a_stand_in_chain_answers_every_sequence_and_times_its_steps() -> None:
    batches: list[int] = []
    resets: list[int] = []

    def work(batch: int) -> None:
        batches.append(batch)
        time.sleep(0.002)

    chain = StandInChain(work, lambda: resets.append(1))
    rows = [RowSampling()] * 2
    step = Command(Op.DECODE, [1, 2], [1, 1], rows)
    assert chain.run([(step, [5, 6]), (Command(Op.RELEASE, release=[3]), None)]) == [[1, 1]]
    assert chain.run([(Command(Op.RELEASE, release=[1]), None)]) == []
    assert (chain.steps, batches, resets) == (1, [2], [1])  # no step, no work, no reset
    assert chain.seconds >= 0.002


class StepClock:
    """A stand-in for ``time.perf_counter`` that moves only when told: what a step's
    work and reset "take" is then exact, whatever else the machine is doing."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_the_engine_is_timed_with_its_work_and_without_the_resets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = StepClock()
    monkeypatch.setattr(overhead, "time", clock)  # the timing of overhead.py only
    batches: list[int] = []

    def work(batch: int) -> None:
        batches.append(batch)
        clock.advance(0.002)

    timing = time_engine(4, 10, 100, work=work, reset=lambda: clock.advance(0.003))
    assert batches == [4] * 10  # one encode step of 4, then 9 decode steps of 4
    assert timing.steps == 10
    assert timing.work_seconds == pytest.approx(10 * 0.002)
    assert timing.per_step == pytest.approx(0.002)  # the work, not the 3 ms resets
    assert timing.outside == pytest.approx(0.0, abs=1e-12)  # the clock moved only in them


def test_the_engine_is_timed_with_real_work() -> None:
    # on the real clock: a step takes at least the 2 ms its work sleeps, and the time
    # outside the work is what is left (no upper window: a loaded machine stretches it)
    timing = time_engine(4, 10, 100, work=lambda _: time.sleep(0.002))
    assert timing.steps == 10
    assert timing.work_seconds >= 10 * 0.002
    assert timing.per_step >= 0.002
    assert timing.seconds >= timing.work_seconds  # the engine's clock spans its steps


def test_the_engines_own_time_grows_with_the_batch() -> None:
    # interleaved, so that a busy spell of the machine falls on both sizes alike
    small, large = [], []
    for _ in range(4):
        small.append(time_engine(1, 40, 100).outside)
        large.append(time_engine(64, 40, 100).outside)
    # each sequence's token is built, emitted and checked in Python every step
    assert min(large) > min(small)


def test_a_step_needs_a_batch_and_two_tokens() -> None:
    with pytest.raises(ValueError, match="batch must be >= 1"):
        time_engine(0, 10, 100)
    with pytest.raises(ValueError, match="steps >= 2"):
        time_engine(1, 1, 100)


@pytest.mark.parametrize("family", ["opt", "t5"])
def test_a_chain_decode_runs_the_model_and_rewinds_its_caches(family: str) -> None:
    model = random_weights(Transformer(tiny_config(family)), seed=2, std=0.2)
    decode = ChainDecode.prepared(model, batch=3, context=5, max_len=16)
    cache = decode.runner.cache
    before = [cache.length(s) for s in range(3)]
    assert len(decode.lengths) == 3 and list(decode.lengths) == before
    decode.step()
    assert [cache.length(s) for s in range(3)] == [n + 1 for n in before]
    decode.rewind()
    assert [cache.length(s) for s in range(3)] == before


def test_a_local_chain_samples_what_the_model_computes() -> None:
    model = random_weights(Transformer(tiny_config("llama")), seed=3, std=0.2)
    chain = local_chain(model, slots=2, max_len=16)
    rows = [RowSampling(1.0, 0, s, 0) for s in (0, 1)]
    prompts = [[TOKEN, 7, 9], [TOKEN, 4]]
    got = chain.run([(Command(Op.PREFILL, [0, 1], [3, 2], rows), prompts)])
    # the same prompts through the model alone, sampled with the same rows
    alone = random_weights(Transformer(tiny_config("llama")), seed=3, std=0.2)
    with torch.inference_mode():
        logits = torch.cat(
            [
                alone.prefill([s], [p], alone.new_cache(1, 16))
                for s, p in zip((0, 1), prompts, strict=True)
            ]
        )
    assert got == [sample_rows(logits, rows)]


def test_the_engine_curve_is_the_line_through_its_points_and_never_negative() -> None:
    assert affine_in_batch([1, 2, 4, 8], [1.0, 2.0, 4.0, 8.0]) == pytest.approx([1, 2, 4, 8])
    noisy = affine_in_batch([1, 4, 16], [2e-4, 1e-4, 4e-4])
    assert noisy[0] < noisy[1] < noisy[2]  # the trend, not the middle point's noise
    assert affine_in_batch([1, 2, 3], [3.0, 1.0, -1.0]) == pytest.approx([3.0, 1.0, 0.0])
    assert affine_in_batch([1, 4], [-1e-5, 2e-4]) == [0.0, 2e-4]  # two points: themselves
    # a point weighted down (a long step's noisy difference) moves the line less
    even = affine_in_batch([1, 4, 64], [1e-4, 1e-4, -5e-4])
    weighted = affine_in_batch([1, 4, 64], [1e-4, 1e-4, -5e-4], [1.0, 1.0, 0.05])
    assert abs(weighted[0] - 1e-4) < abs(even[0] - 1e-4)
    assert abs(weighted[1] - 1e-4) < abs(even[1] - 1e-4)
