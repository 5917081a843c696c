"""Which engine executes a plan: per-engine executability, Auto resolution, and stock
vLLM (Continuous) as a candidate of every Auto plan on vLLM."""

from __future__ import annotations

from typing import Any

import pytest
from planner_builders import config, profile_for, request

from exegpt.planner.architecture import get_architecture
from exegpt.planner.plan import Infeasible, Plan, PlanRequest, PlanResult
from exegpt.planner.runnable import engine_limitation, vllm_limitation
from exegpt.planner.scheduler import schedule

LLAMA = "llama-2-7b"


def _schedule(req: PlanRequest) -> PlanResult:
    return schedule(req, profile_for(req.architecture.name, req.gpu.name))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (dict(tensor_parallel=2, tp_scope="decode"), "partial tensor parallelism"),
        (dict(tensor_parallel=3), "divide the 32 attention heads"),
        (dict(pipeline_stages=2, micro_batches=4), "micro_batches must be 2"),
    ],
)
def test_vllm_refuses_what_it_cannot_run(changes: dict[str, Any], reason: str) -> None:
    llama = get_architecture(LLAMA)
    assert reason in vllm_limitation(config("RoundRobin", **changes), llama)
    assert vllm_limitation(config("RoundRobin", tensor_parallel=2, pipeline_stages=2), llama) == ""


def test_vllm_refuses_encoder_decoder_models_the_own_engine_runs() -> None:
    t5 = get_architecture("t5-11b")
    rr = config("RoundRobin", tensor_parallel=2)
    assert "encoder-decoder" in engine_limitation("vLLM", rr, t5)
    assert engine_limitation("ExeGPT", rr, t5) == ""


@pytest.mark.parametrize("bound", [None, 2.0])
def test_auto_plans_llama_for_vllm_never_below_stock_vllm(bound: float | None) -> None:
    plan = _schedule(request(LLAMA, gpus=8, bound=bound, engine="Auto", executable_only=True))
    assert isinstance(plan, Plan)
    assert plan.engine == "vLLM"
    assert vllm_limitation(plan.config, get_architecture(LLAMA)) == ""
    continuous = plan.baselines["Continuous"]
    assert continuous is not None
    assert plan.predicted.throughput_qps >= continuous.predicted.throughput_qps
    for alternative in plan.alternatives:
        assert vllm_limitation(alternative.config, get_architecture(LLAMA)) == ""


def test_auto_plans_t5_for_the_own_engine() -> None:
    plan = _schedule(request("t5-11b", gpus=8, workload="T", engine="Auto", executable_only=True))
    assert isinstance(plan, Plan)
    assert plan.engine == "ExeGPT"


def test_vllm_asked_for_an_encoder_decoder_model_says_what_to_change() -> None:
    result = _schedule(request("t5-11b", gpus=8, workload="T", engine="vLLM"))
    assert isinstance(result, Infeasible)
    assert "spec.engine" in result.message and "encoder-decoder" in result.message


def test_a_requested_engine_names_the_plan() -> None:
    for engine in ("ExeGPT", "vLLM"):
        plan = _schedule(request(LLAMA, gpus=8, engine=engine))
        assert isinstance(plan, Plan) and plan.engine == engine
