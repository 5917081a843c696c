"""Each engine's KV capacity: what the simulator prices is what the engine allocates."""

from __future__ import annotations

import math

import pytest
from planner_builders import config, preset, profile_for, request, simulator

from exegpt.planner.architecture import get_architecture
from exegpt.planner.costs import Group
from exegpt.planner.engines import VLLM_MAX_NUM_BATCHED_TOKENS
from exegpt.planner.kvcapacity import (
    VLLM_BLOCK_SIZE,
    encoder_kv_capacity,
    kv_capacity,
    reserved_tokens,
    steady_sequences,
)
from exegpt.planner.moments import Moments
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.scheduler import schedule

MOMENTS = Moments.of(preset("S"), get_architecture("opt-13b"))
SLOT = MOMENTS.max_input + MOMENTS.max_output

RR = config("RoundRobin", encode_batch=8, decode_steps_per_encode=4)
WAA = config("WorkloadAware", encode_batch=4, decode_batch=48)
STATIC = config("Static", encode_batch=12)
CONTINUOUS = config("Continuous", decode_batch=40)


def test_round_robin_holds_its_steady_batch_with_room_and_one_encoding() -> None:
    assert steady_sequences(RR, 16.0) == 16 + 12 + 8  # 3 sigma of room: 3 * sqrt(16)
    assert steady_sequences(RR, 10.0) == math.ceil(10 + 3 * math.sqrt(10)) + 8
    # no prediction (or a tiny one): room for one sequence, plus the encoding
    assert steady_sequences(RR, 0.0) == 1 + 3 + 8


@pytest.mark.parametrize(("cfg", "held"), [(WAA, 48), (STATIC, 12), (CONTINUOUS, 40)])
def test_other_strategies_hold_their_batch_cap(cfg: ExecutionConfig, held: int) -> None:
    assert steady_sequences(cfg, 1000.0) == held


@pytest.mark.parametrize("cfg", [RR, WAA, STATIC, CONTINUOUS], ids=lambda c: c.strategy)
def test_own_engine_gives_each_sequence_a_slot_of_the_longest_request(
    cfg: ExecutionConfig,
) -> None:
    kv = kv_capacity(cfg, MOMENTS, "ExeGPT", 20.0)
    assert kv.engine == "ExeGPT"
    assert kv.block_size == SLOT
    assert kv.blocks == kv.sequences == steady_sequences(cfg, 20.0)
    assert kv.tokens == kv.sequences * SLOT


def test_vllm_pages_the_reserved_tokens_plus_a_block_per_sequence() -> None:
    kv = kv_capacity(RR, MOMENTS, "vLLM", 20.0)
    reserved = reserved_tokens(20.0, MOMENTS) + RR.encode_batch * MOMENTS.mean_input
    assert kv.block_size == VLLM_BLOCK_SIZE
    assert kv.blocks == math.ceil(reserved / VLLM_BLOCK_SIZE) + kv.sequences
    assert kv.tokens == kv.blocks * VLLM_BLOCK_SIZE
    assert kv.tokens >= reserved + kv.sequences  # every sequence's last block rounds up
    # paging needs far less than a worst-case slot per sequence
    assert kv.tokens < kv_capacity(RR, MOMENTS, "ExeGPT", 20.0).tokens / 2


def test_workload_aware_encoders_hold_one_encoding() -> None:
    own = encoder_kv_capacity(WAA, MOMENTS, "ExeGPT")
    assert (own.sequences, own.block_size, own.tokens) == (4, SLOT, 4 * SLOT)
    paged = encoder_kv_capacity(WAA, MOMENTS, "vLLM")  # encoding + one in transfer
    assert paged.sequences == 8 and paged.block_size == VLLM_BLOCK_SIZE
    assert paged.blocks == math.ceil(8 * MOMENTS.mean_input / VLLM_BLOCK_SIZE) + 8


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine must be ExeGPT or vLLM"):
        kv_capacity(RR, MOMENTS, "TGI", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="engine must be ExeGPT or vLLM"):
        encoder_kv_capacity(WAA, MOMENTS, "TGI")  # type: ignore[arg-type]


@pytest.mark.parametrize("cfg", [RR, WAA, CONTINUOUS], ids=lambda c: c.strategy)
def test_the_simulator_prices_each_engines_capacity(cfg: ExecutionConfig) -> None:
    """The memory two engines are priced at differs by exactly their KV capacities."""
    own, paged = simulator(gpus=4), simulator(gpus=4, engine="vLLM")
    a, b = own.evaluate(cfg), paged.evaluate(cfg)
    assert a.decode_batch == pytest.approx(b.decode_batch)  # timing is the same
    group = (
        own.workload_aware_groups(cfg)[1]
        if cfg.strategy == "WorkloadAware"
        else own.round_robin_groups(cfg)[1]
    )
    kv_own = own.costs.kv_per_gpu(group, own.kv(cfg, a.decode_batch).tokens)
    kv_paged = own.costs.kv_per_gpu(group, paged.kv(cfg, b.decode_batch).tokens)
    assert a.memory_per_gpu_bytes - b.memory_per_gpu_bytes == pytest.approx(
        kv_own - kv_paged, abs=2
    )


@pytest.mark.parametrize(("model", "task"), [("opt-13b", "S"), ("opt-13b", "C1"), ("t5-11b", "S")])
def test_a_chosen_plan_fits_as_its_engine_allocates(model: str, task: str) -> None:
    """The plan's own-engine KV cache (its slots of the longest request), with the
    weights, fits in the usable memory of every GPU."""
    req = request(model=model, gpus=8, workload=task, executable_only=True)
    sim = simulator(req)
    result = schedule(req, profile_for(model))
    assert isinstance(result, Plan)
    c, p = result.config, result.predicted
    kv = sim.kv(c, p.decode_batch)
    if c.strategy == "WorkloadAware":
        _, group = sim.workload_aware_groups(c)
    else:
        _, group, _ = sim.round_robin_groups(c)
    allocated = sim.costs.kv_per_gpu(group, kv.tokens)
    assert kv.engine == "ExeGPT" and kv.block_size == sim.m.max_input + sim.m.max_output
    assert allocated < p.memory_per_gpu_bytes <= sim.capacity


def test_static_memory_per_engine_is_its_kv_and_its_encoding() -> None:
    """Static's memory differs between the engines by their KV capacities and by the
    encoding in flight: padded to the longest prompt on the own engine, packed within
    the token budget on vLLM."""
    own, paged = simulator(gpus=4), simulator(gpus=4, engine="vLLM")
    a, b = own.evaluate(STATIC), paged.evaluate(STATIC)
    k, m, n = own.costs, own.m, STATIC.encode_batch
    g = Group(STATIC.pipeline_stages, STATIC.tensor_parallel)
    kv_own = k.kv_per_gpu(g, own.kv(STATIC, n).tokens)
    kv_paged = k.kv_per_gpu(g, paged.kv(STATIC, n).tokens)
    act_own = k.activations_per_gpu(g, n * m.input.expected_max(n))
    act_paged = k.activations_per_gpu(g, min(n * m.mean_input, VLLM_MAX_NUM_BATCHED_TOKENS))
    assert a.memory_per_gpu_bytes - b.memory_per_gpu_bytes == pytest.approx(
        kv_own + act_own - kv_paged - act_paged, abs=2
    )


def test_vllm_pages_a_static_batch_at_what_its_sequences_hold() -> None:
    kv = kv_capacity(STATIC, MOMENTS, "vLLM", 0.0)
    m = MOMENTS
    expected = 12 * (m.mean_input + m.mean_output)
    margin = 3 * math.sqrt(12) * (m.input.std + m.output.std)
    assert kv.blocks == math.ceil((expected + margin) / VLLM_BLOCK_SIZE) + 12
    # paging needs far less than a worst-case slot per sequence
    assert kv.tokens < kv_capacity(STATIC, MOMENTS, "ExeGPT", 0.0).tokens


def test_a_static_batch_never_pages_more_than_its_worst_case() -> None:
    one = config("Static", encode_batch=1)
    kv = kv_capacity(one, MOMENTS, "vLLM", 0.0)
    assert kv.blocks == math.ceil(SLOT / VLLM_BLOCK_SIZE) + 1
