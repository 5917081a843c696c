"""Pipeline stages on a timeline, prefill pricing by engine, and the strategies in a
multi-stage pipeline in both simulator modes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from planner_builders import config, fixed_workload, request, simulator

from exegpt.planner.costs import Group
from exegpt.planner.engines import OWN_ENGINE, VLLM, VLLM_MAX_NUM_BATCHED_TOKENS, engine_model
from exegpt.planner.events import EventSimulator
from exegpt.planner.pipeline import StageClock, fill_drain, steady
from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.prefill import PrefillLengths
from exegpt.planner.strategies import STRATEGIES, strategy_model
from exegpt.planner.workload import LengthDistribution, Workload

# -- the timeline ------------------------------------------------------------------------------


def test_a_step_of_equal_micro_batches_fills_and_drains_the_pipeline() -> None:
    clock = StageClock(4)
    ends = [clock.pass_through(0.0, 1.0, 0.25) for _ in range(3)]
    # the first leaves after 4 stages and 3 hand-overs; each later one a stage later
    assert ends == [4.75, 5.75, 6.75]
    assert ends[-1] == fill_drain(1.0, 3 * 0.25, 3, 4)


def test_a_micro_batch_waits_for_a_stage_still_busy_with_a_slower_one() -> None:
    clock = StageClock(2)
    slow = clock.pass_through(0.0, 5.0, 0.0)
    fast = clock.pass_through(0.0, 1.0, 0.0)
    assert slow == 10.0
    assert fast == 11.0  # behind the slow one on both stages


def test_overlapped_steps_are_stage_bound_when_the_pipeline_is_full() -> None:
    assert steady(1.0, 0.0, 8, 4) == 8.0  # 8 micro-batches keep 4 stages busy
    assert steady(1.0, 0.5, 2, 4) == 4.5  # 2 cannot: one traversal per step
    assert fill_drain(1.0, 0.5, 8, 4) == 11.5


def test_a_pipeline_has_at_least_one_stage() -> None:
    with pytest.raises(ValueError, match="at least one stage"):
        StageClock(0)


# -- prefill lengths ---------------------------------------------------------------------------


def _spread() -> Workload:
    return Workload(
        LengthDistribution.from_points([16, 1024], [0.5, 0.5]),
        LengthDistribution.fixed(32),
    )


def test_a_packed_batch_keeps_the_mean_length_and_costs_more_than_the_mean() -> None:
    lengths = PrefillLengths(_spread().input, padded=False)
    xs, ws = lengths.expected(8)
    assert sum(x * w for x, w in zip(xs, ws, strict=True)) == pytest.approx(520.0)
    costs = simulator(workload=_spread(), model="llama-2-7b", gpus=1).costs
    g = Group(1, 1)
    packed = costs.prefill_stage(g, 8, xs, ws)
    at_mean = costs.encode_stage(g, 8, 520.0)
    padded = costs.encode_stage(g, 8, PrefillLengths(_spread().input, True).expected(8)[0][0])
    # attention's quadratic part: the mixture costs more than its mean; padding more still
    assert at_mean < packed < padded


def test_a_padded_batch_is_priced_at_its_expected_longest_prompt() -> None:
    lengths = PrefillLengths(_spread().input, padded=True)
    (x,), (w,) = lengths.expected(8)
    assert x == pytest.approx(16 + (1024 - 16) * (1 - 0.5**8))
    assert w == 1.0
    (xe,), _ = lengths.of(np.array([16.0, 300.0, 20.0]))
    assert xe == 300.0


def test_the_engine_decides_whether_prompts_are_padded() -> None:
    own, vllm = engine_model("ExeGPT"), engine_model("vLLM")
    t5 = simulator(model="t5-11b", gpus=8).costs.arch
    opt = simulator(model="opt-13b", gpus=8).costs.arch
    assert own.pads_prefill(t5) and not own.pads_prefill(opt)
    assert not vllm.pads_prefill(t5) and not vllm.pads_prefill(opt)
    assert engine_model("Auto") is OWN_ENGINE and vllm is VLLM


def test_vllm_chunks_a_prefill_over_its_token_budget() -> None:
    assert VLLM.prefill_steps(VLLM_MAX_NUM_BATCHED_TOKENS) == 1
    assert VLLM.prefill_steps(VLLM_MAX_NUM_BATCHED_TOKENS + 1) == 2
    assert OWN_ENGINE.prefill_steps(10**6) == 1


# -- the registry ------------------------------------------------------------------------------


def test_every_strategy_has_one_model_and_an_unknown_one_is_named() -> None:
    assert set(STRATEGIES) == {"RoundRobin", "WorkloadAware", "Static", "Continuous"}
    assert all(strategy_model(name).name == name for name in STRATEGIES)
    with pytest.raises(ValueError, match="unknown strategy 'Orca'"):
        strategy_model("Orca")  # type: ignore[arg-type]


# -- strategies in a multi-stage pipeline ---------------------------------------------------------


def _rr(stages: int, micro: int, **kw: Any) -> ExecutionConfig:
    fields: dict[str, Any] = {
        "pipeline_stages": stages,
        "micro_batches": micro,
        "encode_batch": 32,
        "decode_steps_per_encode": 8,
    }
    return config("RoundRobin", **{**fields, **kw})


def test_a_round_robin_encoding_passes_through_every_stage_in_the_cycle() -> None:
    """The cycle holds the encoding's whole pass (fill and drain), not one stage's
    share of it: throughput is at most B_E over N_D iterations plus that pass."""
    sim = simulator(model="opt-13b", gpus=16)
    c = _rr(4, 4)
    enc, dec, _ = sim.round_robin_groups(c)
    p = sim.evaluate(c)
    k, m = sim.costs, sim.m
    t_iter = k.iteration(dec, p.decode_batch, m.mean_context, 4)
    stage = k.prefill_stage(enc, 8, *sim.prefill.expected(32))
    one_stage_cycle = 8 * t_iter + stage
    full_pass = 8 * t_iter + (4 + 4 - 1) * stage
    assert p.throughput_qps <= 32 / full_pass * 1.0001
    assert p.throughput_qps < 0.9 * 32 / one_stage_cycle


@pytest.mark.parametrize(
    ("strategy", "fields"),
    [
        ("RoundRobin", {"pipeline_stages": 2, "micro_batches": 2}),
        ("RoundRobin", {"pipeline_stages": 4, "micro_batches": 4}),
        ("RoundRobin", {"pipeline_stages": 4, "micro_batches": 8, "encode_batch": 16}),
        ("Static", {"pipeline_stages": 2, "micro_batches": 2, "encode_batch": 32}),
        ("Continuous", {"pipeline_stages": 2, "micro_batches": 2, "decode_batch": 128}),
        (
            "WorkloadAware",
            {"encode_stages": 2, "pipeline_stages": 2, "tensor_parallel": 2, "micro_batches": 2},
        ),
    ],
)
@pytest.mark.parametrize("task", ["S", "C1"])
def test_the_event_mode_agrees_on_multi_stage_pipelines_of_the_own_engine(
    strategy: str, fields: dict[str, Any], task: str
) -> None:
    """The event mode runs every micro-batch through the stages on the timeline; the
    analytic mode's closed forms agree with it within 5 % on throughput."""
    base: dict[str, Any] = {"encode_batch": 32, "decode_steps_per_encode": 8, "decode_batch": 128}
    c = config(strategy, **{**base, **fields})  # type: ignore[arg-type]
    req = request(model="opt-13b", workload=task)
    events = EventSimulator(req, simulator(req).profile)
    predicted = events.analytic.evaluate(c)
    for seed in (0, 1):
        measured = events.run(c, np.random.default_rng(seed))
        assert measured.throughput_qps == pytest.approx(predicted.throughput_qps, rel=0.05)
        assert measured.latency_s == pytest.approx(predicted.latency_s, rel=0.12)


def test_vllm_overlaps_pipeline_steps_and_the_event_mode_sees_the_encoding_bubble() -> None:
    """With overlapped steps a decode iteration costs its busiest stage's share; the
    heavy encode micro-batches still hold the ring up, within 10 % of the analytic
    cycle that charges their whole pass."""
    own = simulator(model="opt-13b", workload="S")
    vllm = simulator(model="opt-13b", workload="S", engine="vLLM")
    c = _rr(4, 4, encode_batch=64, decode_steps_per_encode=16)
    assert vllm.evaluate(c).throughput_qps > own.evaluate(c).throughput_qps
    events = EventSimulator(vllm.request, vllm.profile)
    measured = events.run(c, np.random.default_rng(0))
    assert measured.throughput_qps == pytest.approx(vllm.evaluate(c).throughput_qps, rel=0.10)


def test_vllm_continuous_batching_is_held_to_its_token_budget() -> None:
    """Long prompts: the tokens that must join each step to keep 512 running exceed
    the budget, so the running batch settles lower; the event mode, chunking prompts
    over steps, agrees."""
    long_prompts = fixed_workload(input_length=2048, output_length=64)
    sim = simulator(model="opt-13b", gpus=1, workload=long_prompts, engine="vLLM")
    c = config("Continuous", decode_batch=512)
    p = sim.evaluate(c)
    iters = sim.m.mean_steps + 1
    assert p.decode_batch == pytest.approx(VLLM_MAX_NUM_BATCHED_TOKENS / (1 + 2048 / iters))
    measured = EventSimulator(sim.request, sim.profile).run(c, np.random.default_rng(0))
    assert measured.completed == measured.queries
    assert measured.throughput_qps == pytest.approx(p.throughput_qps, rel=0.10)
