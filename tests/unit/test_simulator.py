"""The analytic XSimulator: throughput, latency and memory of one configuration."""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_builders import (
    bimodal_workload,
    config,
    fixed_workload,
    profile_for,
    request,
    simulator,
)

from exegpt.planner.costs import Group
from exegpt.planner.moments import Moments
from exegpt.planner.plan import ExecutionConfig, PlanRequest, Prediction, Strategy
from exegpt.planner.scheduler import BATCH_GRID, STEPS_GRID
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import Workload

SMALL = "llama-2-7b"
ALL_STRATEGIES: tuple[Strategy, ...] = ("RoundRobin", "WorkloadAware", "Static", "Continuous")


def _small(workload: str = "S", gpus: int = 8, **kw: Any) -> Simulator:
    return simulator(model=SMALL, gpus=gpus, workload=workload, **kw)


def _best(sim: Simulator, configs: list[ExecutionConfig]) -> Prediction:
    """The highest-throughput memory-feasible prediction among ``configs``."""
    feasible = [p for p in map(sim.evaluate, configs) if p.feasible]
    assert feasible, "no configuration fits"
    return max(feasible, key=lambda p: p.throughput_qps)


def _assert_sane(p: Prediction) -> None:
    numbers = [
        p.throughput_qps,
        p.throughput_tps,
        p.latency_s,
        p.e2e_p99_s,
        float(p.memory_per_gpu_bytes),
        p.decode_batch,
    ]
    assert all(math.isfinite(x) and x >= 0 for x in numbers), p
    assert p.throughput_qps > 0
    assert p.latency_s > 0
    assert p.e2e_p99_s >= p.latency_s


# -- RoundRobin ------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["S", "G", "C1"])
@pytest.mark.parametrize(("encode_batch", "steps"), [(1, 1), (8, 4), (48, 7), (128, 20), (512, 64)])
def test_round_robin_decode_batch_follows_littles_law(
    preset: str, encode_batch: int, steps: int
) -> None:
    sim = _small(preset)
    p = sim.evaluate(config("RoundRobin", encode_batch=encode_batch, decode_steps_per_encode=steps))
    mean_steps = Moments.of(sim.request.workload, sim.request.architecture).mean_steps
    assert p.decode_batch == pytest.approx(encode_batch * mean_steps / steps, rel=1e-12)


@pytest.mark.parametrize(
    "shape",
    [
        {},
        {"tensor_parallel": 2},
        {"tensor_parallel": 2, "tp_scope": "decode"},
        {"pipeline_stages": 4, "micro_batches": 4},
        {"pipeline_stages": 2, "tensor_parallel": 4, "tp_scope": "encode", "micro_batches": 2},
    ],
    ids=str,
)
@pytest.mark.parametrize("steps", [1, 4, 16, 64])
def test_round_robin_throughput_and_latency_grow_with_encode_batch(
    shape: dict[str, object], steps: int
) -> None:
    sim = _small("C1")
    ps = [
        sim.evaluate(config("RoundRobin", encode_batch=b, decode_steps_per_encode=steps, **shape))
        for b in BATCH_GRID
    ]
    qps = [p.throughput_qps for p in ps]
    lat = [p.latency_s for p in ps]
    mem = [p.memory_per_gpu_bytes for p in ps]
    assert all(b >= a for a, b in pairwise(qps))
    assert all(b > a for a, b in pairwise(lat))
    assert all(b >= a for a, b in pairwise(mem))
    assert qps[-1] > qps[0]


def test_round_robin_rarer_encoding_lowers_latency_at_a_fixed_encode_batch() -> None:
    sim = _small("S")
    lat = [
        sim.evaluate(config("RoundRobin", encode_batch=32, decode_steps_per_encode=n)).latency_s
        for n in STEPS_GRID
    ]
    assert all(b <= a for a, b in pairwise(lat))


def test_partial_tensor_parallelism_keeps_unsharded_weights() -> None:
    sim = _small("S")
    base = {"tensor_parallel": 4, "encode_batch": 16, "decode_steps_per_encode": 4}
    full = sim.evaluate(config("RoundRobin", tp_scope="all", **base))
    for scope in ("encode", "decode"):
        partial = sim.evaluate(config("RoundRobin", tp_scope=scope, **base))
        weights = sim.costs.weights_per_gpu(Group(1, 1), "both")
        assert partial.memory_per_gpu_bytes > weights
        assert partial.memory_per_gpu_bytes > full.memory_per_gpu_bytes + 0.5 * weights


def test_tensor_parallelism_and_stages_lower_memory_per_gpu() -> None:
    sim = _small("C1")
    common = {"encode_batch": 64, "decode_steps_per_encode": 8}
    by_tp = [
        sim.evaluate(config("RoundRobin", tensor_parallel=t, **common)).memory_per_gpu_bytes
        for t in (1, 2, 4, 8)
    ]
    by_stages = [
        sim.evaluate(
            config("RoundRobin", pipeline_stages=s, micro_batches=s, **common)
        ).memory_per_gpu_bytes
        for s in (1, 2, 4, 8)
    ]
    assert all(b < a for a, b in pairwise(by_tp))
    assert all(b < a for a, b in pairwise(by_stages))


# -- Static against RoundRobin ----------------------------------------------------------------
def _best_static_and_round_robin(sim: Simulator) -> tuple[Prediction, Prediction]:
    static = _best(sim, [config("Static", encode_batch=b) for b in BATCH_GRID])
    rr = _best(
        sim,
        [
            config("RoundRobin", encode_batch=b, decode_steps_per_encode=n)
            for b in BATCH_GRID
            for n in STEPS_GRID
        ],
    )
    return static, rr


@pytest.mark.parametrize(
    "wl", [pytest.param(bimodal_workload(), id="bimodal"), pytest.param("G", id="G")]
)
def test_static_batching_loses_to_round_robin_when_outputs_vary(wl: Workload | str) -> None:
    static, rr = _best_static_and_round_robin(simulator(model=SMALL, gpus=1, workload=wl))
    assert static.throughput_qps < 0.5 * rr.throughput_qps


def test_static_batching_matches_round_robin_when_outputs_do_not_vary() -> None:
    static, rr = _best_static_and_round_robin(
        simulator(model=SMALL, gpus=1, workload=fixed_workload(128, 64))
    )
    assert static.throughput_qps == pytest.approx(rr.throughput_qps, rel=0.1)


# -- memory ----------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["RoundRobin", "Static", "Continuous"])
def test_a_model_that_cannot_fit_is_flagged_infeasible(strategy: Strategy) -> None:
    sim = simulator(model="gpt3-175b", gpus=1)
    p = sim.evaluate(config(strategy))
    assert not p.feasible
    assert "GiB" in p.reason
    assert p.memory_per_gpu_bytes > sim.capacity
    assert p.memory_per_gpu_bytes > 300 * 2**30  # 175 B parameters in fp16, on one GPU


def test_workload_aware_memory_is_flagged_per_group() -> None:
    p = simulator(model="gpt3-175b", gpus=2).evaluate(config("WorkloadAware"))
    assert not p.feasible
    assert "GiB" in p.reason


def test_kv_cache_beyond_memory_is_flagged() -> None:
    sim = _small("C2", gpus=1)
    fits = sim.evaluate(config("RoundRobin", encode_batch=2, decode_steps_per_encode=16))
    huge = sim.evaluate(config("RoundRobin", encode_batch=1024, decode_steps_per_encode=1))
    assert fits.feasible
    assert not huge.feasible
    assert "GiB" in huge.reason


def test_memory_headroom_lowers_the_usable_capacity() -> None:
    cfg = config("RoundRobin", encode_batch=16, decode_steps_per_encode=8)
    loose = simulator(model=SMALL, gpus=1, workload="C1").evaluate(cfg)
    assert loose.feasible
    tight = simulator(model=SMALL, gpus=1, workload="C1", memory_headroom=0.2).evaluate(cfg)
    assert not tight.feasible
    assert tight.memory_per_gpu_bytes == loose.memory_per_gpu_bytes


# -- WorkloadAware ---------------------------------------------------------------------------
def _waa(encode_batch: int, decode_batch: int, **shape: int) -> ExecutionConfig:
    fields = {"tensor_parallel": 4, "encode_tp": 1, **shape}
    return config("WorkloadAware", encode_batch=encode_batch, decode_batch=decode_batch, **fields)


def test_workload_aware_settles_below_the_target_when_encoding_is_the_bottleneck() -> None:
    sim = _small("S")
    target = 1024
    p = sim.evaluate(_waa(encode_batch=1, decode_batch=target))
    assert p.decode_batch < 0.5 * target
    # Throughput is the encoders' rate: a larger decode target adds nothing ...
    enc, _ = sim.workload_aware_groups(_waa(1, target))
    m = sim.m
    # one-stage encoders, packed prompts: the mean of the per-prompt costs
    encode_rate = 1 / max(
        sim.costs.prefill_stage(enc, 1, *sim.prefill.expected(1)),
        sim.costs.kv_transfer(1, m.mean_input, 1, False),
    )
    assert p.throughput_qps == pytest.approx(encode_rate, rel=1e-9)
    assert sim.evaluate(_waa(1, target // 2)).throughput_qps == pytest.approx(p.throughput_qps)
    # ... while a larger encode batch raises it.
    assert sim.evaluate(_waa(8, target)).throughput_qps > 1.2 * p.throughput_qps


def test_workload_aware_keeps_the_target_when_decoding_is_the_bottleneck() -> None:
    # Four encoder GPUs (TP 4) feed a single decoder GPU.
    sim = _small("S")
    cfg = _waa(encode_batch=64, decode_batch=16, tensor_parallel=1, encode_tp=4)
    p = sim.evaluate(cfg)
    assert p.decode_batch == 16
    _, dec = sim.workload_aware_groups(cfg)
    iteration = sim.costs.iteration(dec, 16, sim.m.mean_context, 1)
    assert p.throughput_qps == pytest.approx(16 / (sim.m.mean_steps * iteration), rel=1e-9)


@pytest.mark.parametrize("encode_batch", [1, 4, 16, 64])
def test_workload_aware_throughput_grows_with_decode_target(encode_batch: int) -> None:
    sim = _small("C1")
    ps = [sim.evaluate(_waa(encode_batch, b)) for b in BATCH_GRID]
    qps = [p.throughput_qps for p in ps]
    lat = [p.latency_s for p in ps]
    assert all(b >= a * (1 - 1e-9) for a, b in pairwise(qps))
    # Latency grows too, up to the bisection's tolerance once the batch settles.
    assert all(b >= a * (1 - 1e-4) for a, b in pairwise(lat))
    assert all(p.decode_batch <= b for p, b in zip(ps, BATCH_GRID, strict=True))


def test_workload_aware_holds_a_second_copy_of_the_weights() -> None:
    # One encoder GPU and one decoder GPU each hold every layer; RoundRobin on the same
    # two GPUs stores each layer once (a paged KV cache: the weights dominate).
    sim = _small("S", gpus=2, engine="vLLM")
    model = sim.costs.weights_per_gpu(Group(1, 1), "both")
    waa = sim.evaluate(config("WorkloadAware", encode_batch=4, decode_batch=16))
    rra = sim.evaluate(
        config(
            "RoundRobin",
            pipeline_stages=2,
            micro_batches=2,
            encode_batch=4,
            decode_steps_per_encode=8,
        )
    )
    assert waa.memory_per_gpu_bytes > model
    assert rra.memory_per_gpu_bytes < 0.75 * model


# -- end-to-end latency ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        config("RoundRobin", tensor_parallel=8, encode_batch=1, decode_steps_per_encode=64),
        config("RoundRobin", pipeline_stages=2, micro_batches=4, encode_batch=64),
        config("WorkloadAware", tensor_parallel=4, encode_batch=1, decode_batch=1),
        config("WorkloadAware", pipeline_stages=4, encode_batch=32, decode_batch=256),
        config("Continuous", tensor_parallel=8, decode_batch=1),
        config("Continuous", pipeline_stages=4, micro_batches=8, decode_batch=256),
        config("Static", encode_batch=256),
        config("Static", tensor_parallel=8, encode_batch=1),
        config("Static", encode_batch=4),
    ],
    ids=lambda c: f"{c.strategy}-{c.encode_batch}-{c.decode_batch}",
)
def test_end_to_end_latency_includes_the_generation_latency(cfg: ExecutionConfig) -> None:
    p = _small("C1").evaluate(cfg)
    _assert_sane(p)
    assert p.e2e_p99_s >= p.latency_s


# -- replicas --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        config("RoundRobin", tensor_parallel=2, encode_batch=8, decode_steps_per_encode=8),
        config("WorkloadAware", encode_batch=8, decode_batch=64),
        config("Static", encode_batch=32),
        config("Continuous", tensor_parallel=2, decode_batch=64),
    ],
    ids=lambda c: c.strategy,
)
def test_replicas_scale_throughput_linearly(cfg: ExecutionConfig) -> None:
    sim = _small("C1")
    one = sim.evaluate(cfg)
    for n in (2, 4):
        many = sim.evaluate(cfg.model_copy(update={"replicas": n}))
        assert many.feasible, many.reason
        assert many.throughput_qps == pytest.approx(n * one.throughput_qps, rel=1e-12)
        assert many.throughput_tps == pytest.approx(n * one.throughput_tps, rel=1e-12)
        assert many.latency_s == one.latency_s
        assert many.memory_per_gpu_bytes == one.memory_per_gpu_bytes
        assert many.decode_batch == one.decode_batch


# -- shapes that cannot run ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("req", "cfg", "words"),
    [
        (
            request(model=SMALL, gpus=8),
            config("RoundRobin", tensor_parallel=4, pipeline_stages=4),
            "budget",
        ),
        (
            request(model=SMALL, gpus=8),
            config("RoundRobin", replicas=3, tensor_parallel=4),
            "budget",
        ),
        (request(model=SMALL, gpus=8), config("RoundRobin", tensor_parallel=3), "TP degree 3"),
        (request(model=SMALL, gpus=16), config("Continuous", tensor_parallel=16), "TP degree"),
        (
            request(model=SMALL, gpus=8, gpus_per_node=4),
            config("Static", tensor_parallel=8),
            "GPUs of a node",
        ),
        (
            request(model=SMALL, gpus=64),
            config("RoundRobin", pipeline_stages=33),
            "stages than layers",
        ),
        (
            request(model="t5-11b", gpus=64),
            config("WorkloadAware", encode_stages=25, pipeline_stages=2),
            "stages than layers",
        ),
        (
            request(model=SMALL, gpus=8),
            config("WorkloadAware", encode_tp=3, encode_gpus=3),
            "TP degree 3",
        ),
        (
            request(model=SMALL, gpus=8),
            config("WorkloadAware", encode_tp=2, encode_gpus=1),
            "encode_gpus",
        ),
        (
            request(model=SMALL, gpus=8),
            config("WorkloadAware", tensor_parallel=2, decode_gpus=4),
            "decode_gpus",
        ),
    ],
)
def test_shapes_that_cannot_run_are_infeasible_with_a_reason(
    req: PlanRequest, cfg: ExecutionConfig, words: str
) -> None:
    p = simulator(req).evaluate(cfg)
    assert not p.feasible
    assert words in p.reason
    assert p.throughput_qps == 0


def test_the_profile_must_match_the_request() -> None:
    with pytest.raises(ValueError, match="opt-13b"):
        Simulator(request(model=SMALL), profile_for("opt-13b"))


# -- every strategy, every family ----------------------------------------------------------
@pytest.mark.parametrize("model", [SMALL, "opt-13b", "t5-11b"])
@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_every_strategy_gives_a_sane_prediction(model: str, strategy: Strategy) -> None:
    shape = {"tensor_parallel": 2, "pipeline_stages": 2, "micro_batches": 2}
    p = simulator(model=model, gpus=8).evaluate(
        config(strategy, encode_batch=8, decode_batch=32, decode_steps_per_encode=4, **shape)
    )
    _assert_sane(p)
    assert p.feasible


# -- properties over random configurations (llama-2-7b on up to 8 GPUs) ----------------------
TPS = (1, 2, 4, 8)
STAGES = (1, 2, 4, 8)
WORKLOADS = ("S", "C1", "G")


@st.composite
def _pipeline(draw: st.DrawFn, budget: int = 8) -> dict[str, int]:
    tp = draw(st.sampled_from([t for t in TPS if t <= budget]))
    stages = draw(st.sampled_from([s for s in STAGES if s * tp <= budget]))
    micro = draw(st.integers(1, 2 * stages))
    return {"tensor_parallel": tp, "pipeline_stages": stages, "micro_batches": micro}


@st.composite
def _round_robin(draw: st.DrawFn) -> ExecutionConfig:
    shape = draw(_pipeline())
    scope = (
        "all"
        if shape["tensor_parallel"] == 1
        else draw(st.sampled_from(["all", "encode", "decode"]))
    )
    return config(
        "RoundRobin",
        tp_scope=scope,
        encode_batch=draw(st.integers(1, 256)),
        decode_steps_per_encode=draw(st.integers(1, 64)),
        **shape,
    )


@st.composite
def _workload_aware(draw: st.DrawFn) -> ExecutionConfig:
    e_tp = draw(st.sampled_from((1, 2, 4)))
    e_s = draw(st.sampled_from([s for s in (1, 2, 4) if s * e_tp < 8]))
    shape = draw(_pipeline(budget=8 - e_tp * e_s))
    return config(
        "WorkloadAware",
        encode_tp=e_tp,
        encode_stages=e_s,
        encode_batch=draw(st.integers(1, 128)),
        decode_batch=draw(st.integers(1, 512)),
        **shape,
    )


@st.composite
def _baseline(draw: st.DrawFn, strategy: Strategy) -> ExecutionConfig:
    field = "encode_batch" if strategy == "Static" else "decode_batch"
    return config(strategy, **{field: draw(st.integers(1, 256))}, **draw(_pipeline()))


def _grow(cfg: ExecutionConfig, name: str, by: int) -> ExecutionConfig:
    return cfg.model_copy(update={name: getattr(cfg, name) + by})


def _weights_share(sim: Simulator, cfg: ExecutionConfig) -> float:
    k = sim.costs
    if cfg.strategy == "RoundRobin":
        return k.weights_per_gpu(sim.round_robin_groups(cfg)[2], "both")
    if cfg.strategy == "WorkloadAware":
        enc, dec = sim.workload_aware_groups(cfg)
        return max(k.weights_per_gpu(enc, "encode"), k.weights_per_gpu(dec, "decode"))
    return k.weights_per_gpu(Group(cfg.pipeline_stages, cfg.tensor_parallel), "both")


def _check_general(sim: Simulator, cfg: ExecutionConfig) -> Prediction:
    p = sim.evaluate(cfg)
    _assert_sane(p)
    assert p.memory_per_gpu_bytes > _weights_share(sim, cfg)
    assert p.throughput_tps == pytest.approx(p.throughput_qps * sim.m.mean_output)
    assert p.feasible == (p.memory_per_gpu_bytes <= sim.capacity)
    assert p.e2e_p99_s >= p.latency_s
    return p


def _check_grows(
    sim: Simulator,
    cfg: ExecutionConfig,
    name: str,
    by: int,
    qps_tol: float = 1e-9,
    lat_tol: float = 0.0,
) -> None:
    """Raising ``name`` by ``by`` raises (or keeps) throughput, latency and memory."""
    a, b = sim.evaluate(cfg), sim.evaluate(_grow(cfg, name, by))
    assert b.throughput_qps >= a.throughput_qps * (1 - qps_tol), (name, a, b)
    assert b.latency_s >= a.latency_s * (1 - lat_tol), (name, a, b)
    assert b.memory_per_gpu_bytes >= a.memory_per_gpu_bytes, (name, a, b)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cfg=_round_robin(), preset=st.sampled_from(WORKLOADS), by=st.integers(1, 256))
def test_round_robin_properties(cfg: ExecutionConfig, preset: str, by: int) -> None:
    sim = _small(preset)
    p = _check_general(sim, cfg)
    assert p.decode_batch == pytest.approx(
        cfg.encode_batch * sim.m.mean_steps / cfg.decode_steps_per_encode
    )
    _check_grows(sim, cfg, "encode_batch", by)
    a, b = sim.evaluate(cfg), sim.evaluate(_grow(cfg, "encode_batch", by))
    assert b.latency_s > a.latency_s


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cfg=_workload_aware(), preset=st.sampled_from(WORKLOADS), by=st.integers(1, 512))
def test_workload_aware_properties(cfg: ExecutionConfig, preset: str, by: int) -> None:
    sim = _small(preset)
    p = _check_general(sim, cfg)
    assert p.decode_batch <= cfg.decode_batch
    _check_grows(sim, cfg, "decode_batch", by, lat_tol=1e-4)
    _check_grows(sim, cfg, "encode_batch", by)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), preset=st.sampled_from(WORKLOADS), by=st.integers(1, 256))
def test_static_properties(data: st.DataObject, preset: str, by: int) -> None:
    cfg = data.draw(_baseline("Static"))
    sim = _small(preset)
    p = _check_general(sim, cfg)
    assert p.decode_batch == cfg.encode_batch
    # Near-monotone: a larger batch also waits for a longer longest output.
    _check_grows(sim, cfg, "encode_batch", by, qps_tol=0.01)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data(), preset=st.sampled_from(WORKLOADS), by=st.integers(1, 256))
def test_continuous_properties(data: st.DataObject, preset: str, by: int) -> None:
    cfg = data.draw(_baseline("Continuous"))
    sim = _small(preset)
    p = _check_general(sim, cfg)
    assert p.decode_batch == cfg.decode_batch
    _check_grows(sim, cfg, "decode_batch", by)
