"""What handing a query over to a WorkloadAware decode instance costs its steps
(``engine.handover_s``): charged once per query, to the decode step it joins, in the
analytic and the discrete-event modes alike."""

from __future__ import annotations

import numpy as np
import pytest

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.events import EventSimulator
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import ExecutionConfig, PlanRequest
from exegpt.planner.profile import Curve, EngineOverhead, Profile
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload_presets import get_workload

WAA = ExecutionConfig(
    strategy="WorkloadAware", encode_gpus=1, decode_gpus=1, encode_batch=8, decode_batch=16
)


def _request() -> PlanRequest:
    return PlanRequest(
        architecture=get_architecture("llama-2-7b"),
        gpu=get_gpu("nvidia-a100-80gb"),
        gpus=2,
        workload=get_workload("S"),
    )


def _profile(handover_s: float) -> Profile:
    base = analytic_profile(get_architecture("llama-2-7b"), get_gpu("nvidia-a100-80gb"))
    engine = EngineOverhead(step=Curve(x=[1.0], seconds=[0.0]), handover_s=handover_s)
    return base.model_copy(update={"engine": engine})


def test_the_profile_carries_no_hand_over_unless_measured() -> None:
    assert EngineOverhead(step=Curve(x=[1.0], seconds=[0.0])).handover_s == 0.0


def test_each_query_costs_the_decode_instance_its_hand_over() -> None:
    free = Simulator(_request(), _profile(0.0))
    paid = Simulator(_request(), _profile(0.004))
    a, b = free.evaluate(WAA), paid.evaluate(WAA)
    assert a.feasible and b.feasible
    # decode-bound at the full decode batch in both: seconds per query grow by exactly
    # one hand-over
    assert a.decode_batch == b.decode_batch == WAA.decode_batch
    assert 1.0 / b.throughput_qps == pytest.approx(1.0 / a.throughput_qps + 0.004)
    # every decode step carries batch / mean_steps joins on average
    m = free.m
    extra = (m.steps_p99 + 1) * WAA.decode_batch / m.mean_steps * 0.004
    assert b.latency_s == pytest.approx(a.latency_s + extra)


def test_other_strategies_do_not_pay_it() -> None:
    free = Simulator(_request(), _profile(0.0))
    paid = Simulator(_request(), _profile(0.004))
    for config in (
        ExecutionConfig(strategy="RoundRobin", encode_batch=4, decode_steps_per_encode=4),
        ExecutionConfig(strategy="Static", encode_batch=8),
        ExecutionConfig(strategy="Continuous", decode_batch=16),
    ):
        assert paid.evaluate(config) == free.evaluate(config)


def test_a_query_replayed_alone_finishes_one_hand_over_later() -> None:
    free = EventSimulator(_request(), _profile(0.0))
    paid = EventSimulator(_request(), _profile(0.004))
    a = free.replay(WAA, arrival=[1.0], inputs=[100], outputs=[20])
    b = paid.replay(WAA, arrival=[1.0], inputs=[100], outputs=[20])
    assert b.admitted[0] == a.admitted[0]
    assert b.done[0] == pytest.approx(a.done[0] + 0.004)


def test_queries_joining_one_step_each_add_their_hand_over_to_it() -> None:
    free = EventSimulator(_request(), _profile(0.0))
    paid = EventSimulator(_request(), _profile(0.004))
    # three queries encoded in one batch join the decode batch in the same step
    args = dict(arrival=[0.0, 0.0, 0.0], inputs=[50, 50, 50], outputs=[10, 10, 10])
    a, b = free.replay(WAA, **args), paid.replay(WAA, **args)
    assert np.allclose(b.done, a.done + 3 * 0.004)


def test_sampled_runs_serve_fewer_queries_per_second_with_a_hand_over() -> None:
    free = EventSimulator(_request(), _profile(0.0))
    paid = EventSimulator(_request(), _profile(0.004))
    a = free.run(WAA, np.random.default_rng(0), queries=600)
    b = paid.run(WAA, np.random.default_rng(0), queries=600)
    predicted = paid.analytic.evaluate(WAA).throughput_qps
    assert b.throughput_qps < a.throughput_qps
    assert b.throughput_qps == pytest.approx(predicted, rel=0.05)
