"""vLLM's paged KV cache: blocks allocated as sequences grow, and the discrete-event
mode's stock-vLLM baseline run within a given capacity in blocks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_builders import config, fixed_workload, request, simulator

from exegpt.planner.events import EventSimulator
from exegpt.planner.paged import PagedKV


def test_blocks_are_allocated_as_a_sequence_grows_and_freed_when_it_leaves() -> None:
    kv = PagedKV(blocks=4, block_tokens=16)
    assert kv.admit(1, 17)  # 17 tokens: two blocks
    assert kv.free == 2
    assert kv.grow(1, 32)  # still two
    assert kv.free == 2
    assert kv.grow(1, 33)  # a third
    assert kv.free == 1
    assert not kv.admit(2, 20)  # needs two: nothing allocated
    assert kv.free == 1
    kv.release(1)
    assert kv.free == 4 and kv.used == 0


def test_a_cache_has_at_least_one_block() -> None:
    with pytest.raises(ValueError, match="kv_blocks must be at least 1"):
        PagedKV(0, 16)


def _vllm(gpus: int = 1) -> EventSimulator:
    req = request(model="opt-13b", gpus=gpus, workload="S", engine="vLLM")
    return EventSimulator(req, simulator(req).profile)


def _with_blocks(blocks: int) -> EventSimulator:
    plain = _vllm()
    return EventSimulator(plain.request, plain.analytic.profile, kv_blocks=blocks)


def test_an_ample_cache_changes_nothing() -> None:
    c = config("Continuous", decode_batch=64)
    free = _vllm().run(c, np.random.default_rng(1), queries=400)
    ample = _with_blocks(10**6).run(c, np.random.default_rng(1), queries=400)
    assert ample == free


def test_a_small_cache_holds_fewer_sequences_and_every_query_still_completes() -> None:
    c = config("Continuous", decode_batch=64)
    free = _vllm().run(c, np.random.default_rng(2), queries=400)
    # S: about 256 + 32 tokens a query, 9 blocks of 32: 200 blocks hold about 22 sequences
    small = _with_blocks(200).run(c, np.random.default_rng(2), queries=400)
    assert small.completed == small.queries == 400
    assert small.mean_decode_batch < 0.6 * free.mean_decode_batch
    assert small.throughput_qps < free.throughput_qps


def test_a_cache_too_small_for_one_sequence_says_so() -> None:
    c = config("Continuous", decode_batch=8)
    with pytest.raises(ValueError, match="kv_blocks is too small"):
        _with_blocks(2).run(c, np.random.default_rng(0), queries=20)


def test_the_paged_cache_is_vllms_only() -> None:
    req = request(model="opt-13b", gpus=1, workload=fixed_workload())
    with pytest.raises(ValueError, match="engine='vLLM'"):
        EventSimulator(req, simulator(req).profile, kv_blocks=100)


@settings(max_examples=20, deadline=None)
@given(
    blocks=st.integers(min_value=13, max_value=400),
    cap=st.integers(min_value=1, max_value=96),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_every_query_completes_in_any_cache_that_holds_one_sequence(
    blocks: int, cap: int, seed: int
) -> None:
    """Preemption never loses or stalls a query: 128 + 64 tokens need 12 blocks (13
    with the block the last token may open)."""
    req = request(model="opt-13b", gpus=1, workload=fixed_workload(128, 64), engine="vLLM")
    sim = EventSimulator(req, simulator(req).profile, kv_blocks=blocks)
    result = sim.run(
        config("Continuous", decode_batch=cap), np.random.default_rng(seed), queries=150
    )
    assert result.completed == result.queries == 150
