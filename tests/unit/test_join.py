"""What a server's admission of a request costs its steps (``engine.join_s``): charged
once per query, to the step that encodes its prompt, under every schedule, in the
analytic and the discrete-event modes alike; never to what a step costs whatever it
carries."""

from __future__ import annotations

import numpy as np
import pytest

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.costs import Group
from exegpt.planner.events import EventSimulator
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import ExecutionConfig, PlanRequest
from exegpt.planner.profile import Curve, EngineOverhead, Profile
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload_presets import get_workload

JOIN = 0.004
CONTINUOUS = ExecutionConfig(strategy="Continuous", decode_batch=16)
STATIC = ExecutionConfig(strategy="Static", encode_batch=8)
ROUND_ROBIN = ExecutionConfig(strategy="RoundRobin", encode_batch=4, decode_steps_per_encode=4)


def _request(gpus: int = 1) -> PlanRequest:
    return PlanRequest(
        architecture=get_architecture("llama-2-7b"),
        gpu=get_gpu("nvidia-a100-80gb"),
        gpus=gpus,
        workload=get_workload("S"),
    )


def _profile(join_s: float) -> Profile:
    base = analytic_profile(get_architecture("llama-2-7b"), get_gpu("nvidia-a100-80gb"))
    engine = EngineOverhead(step=Curve(x=[1.0], seconds=[1e-3]), join_s=join_s)
    return base.model_copy(update={"engine": engine})


def _pair(gpus: int = 1) -> tuple[Simulator, Simulator]:
    return Simulator(_request(gpus), _profile(0.0)), Simulator(_request(gpus), _profile(JOIN))


def test_the_profile_carries_no_join_unless_measured() -> None:
    assert EngineOverhead(step=Curve(x=[1.0], seconds=[0.0])).join_s == 0.0


def test_each_prompt_encoded_costs_its_join_once_whatever_the_stages() -> None:
    free, paid = _pair(gpus=2)
    one, two = Group(1, 1), Group(2, 1)
    a, b = free.costs, paid.costs
    assert b.encode_stage(one, 8, 100) == pytest.approx(a.encode_stage(one, 8, 100) + 8 * JOIN)
    # two stages share a query's admission: the pass through both pays it once
    assert b.encode_latency(two, 8, 100) == pytest.approx(a.encode_latency(two, 8, 100) + 8 * JOIN)
    # a step's floor (what it costs whatever it carries) takes no query in
    assert b.step_floor(one) == a.step_floor(one)
    assert b.decode_stage(one, 8, 100) == a.decode_stage(one, 8, 100)


def test_a_continuous_step_grows_by_the_queries_that_join_it() -> None:
    free, paid = _pair()
    g = Group(1, 1)
    for joins in (0.25, 1.0, 3.0):
        a = free.costs.mixed_iteration(g, 8, 300, joins, 100, 1)
        b = paid.costs.mixed_iteration(g, 8, 300, joins, 100, 1)
        assert b == pytest.approx(a + joins * JOIN)
    assert paid.costs.mixed_iteration(g, 8, 300, 0, 100, 1) == free.costs.mixed_iteration(
        g, 8, 300, 0, 100, 1
    )


def test_a_static_batch_serves_each_query_one_join_slower() -> None:
    free, paid = _pair()
    a, b = free.evaluate(STATIC), paid.evaluate(STATIC)
    assert a.feasible and b.feasible
    # the batch's encoding pays a join per query; its decode steps pay none
    assert 1.0 / b.throughput_qps == pytest.approx(1.0 / a.throughput_qps + JOIN)
    assert b.latency_s == pytest.approx(a.latency_s + STATIC.encode_batch * JOIN)


@pytest.mark.parametrize("config", [CONTINUOUS, ROUND_ROBIN])
def test_every_schedule_that_takes_queries_in_pays_for_them(config: ExecutionConfig) -> None:
    free, paid = _pair()
    a, b = free.evaluate(config), paid.evaluate(config)
    assert a.feasible and b.feasible
    assert b.throughput_qps < a.throughput_qps
    assert b.latency_s > a.latency_s


def test_a_query_replayed_alone_finishes_one_join_later() -> None:
    free = EventSimulator(_request(), _profile(0.0))
    paid = EventSimulator(_request(), _profile(JOIN))
    for config in (CONTINUOUS, STATIC, ROUND_ROBIN):
        a = free.replay(config, arrival=[1.0], inputs=[100], outputs=[20])
        b = paid.replay(config, arrival=[1.0], inputs=[100], outputs=[20])
        assert b.done[0] == pytest.approx(a.done[0] + JOIN), config.strategy


def test_queries_joining_one_step_each_add_their_join_to_it() -> None:
    free = EventSimulator(_request(), _profile(0.0))
    paid = EventSimulator(_request(), _profile(JOIN))
    args = dict(arrival=[0.0, 0.0, 0.0], inputs=[50, 50, 50], outputs=[10, 10, 10])
    a, b = free.replay(STATIC, **args), paid.replay(STATIC, **args)
    assert np.allclose(b.done, np.asarray(a.done) + 3 * JOIN)
