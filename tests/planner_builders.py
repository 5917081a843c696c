"""Small builders for planner tests, so that each test states only what matters.

``request()`` is a plan request for OPT-13B on 16 A100-80GB GPUs serving the
summarization (S) workload with no latency bound; keyword arguments change one thing.
``config("RoundRobin", encode_batch=8)`` is an execution configuration (for
WorkloadAware the GPU counts follow from the stages and TP degrees unless given).
``profile_for(model, gpu)`` is the analytic profile, cached per name pair.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.costs import CostModel
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import ExecutionConfig, PlanRequest, Prediction, Strategy, StrategyChoice
from exegpt.planner.profile import Profile
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import LengthDistribution, Workload
from exegpt.planner.workload_presets import get_workload

DEFAULT_MODEL = "opt-13b"
DEFAULT_GPU = "nvidia-a100-80gb"


@functools.cache
def profile_for(model: str = DEFAULT_MODEL, gpu: str = DEFAULT_GPU) -> Profile:
    """The analytic profile of ``model`` on ``gpu`` (built once per pair)."""
    return analytic_profile(get_architecture(model), get_gpu(gpu))


@functools.cache
def preset(name: str = "S") -> Workload:
    """A preset workload by its short or long name (one shared instance per name, so
    its memoised statistics are computed once)."""
    return get_workload(name)


def fixed_workload(input_length: int = 128, output_length: int = 64) -> Workload:
    """Every query has the same input and output length (no variance)."""
    return Workload(LengthDistribution.fixed(input_length), LengthDistribution.fixed(output_length))


def bimodal_workload(
    input_length: int = 128, short: int = 8, long: int = 512, p_long: float = 0.1
) -> Workload:
    """Mostly ``short`` outputs and a few ``long`` ones: a high-variance workload."""
    return Workload(
        LengthDistribution.fixed(input_length),
        LengthDistribution.from_points([short, long], [1.0 - p_long, p_long]),
    )


def request(
    model: str = DEFAULT_MODEL,
    gpu: str = DEFAULT_GPU,
    gpus: int = 16,
    workload: Workload | str | None = None,
    bound: float | None = None,
    strategy: StrategyChoice = "Auto",
    **overrides: Any,
) -> PlanRequest:
    """A plan request; ``workload`` is a Workload or a preset name (default S).
    ``overrides`` set other PlanRequest fields (gpus_per_node, memory_headroom, ...)."""
    wl = preset(workload or "S") if workload is None or isinstance(workload, str) else workload
    return PlanRequest(
        architecture=get_architecture(model),
        gpu=get_gpu(gpu),
        gpus=gpus,
        workload=wl,
        latency_bound_s=bound,
        strategy=strategy,
        **overrides,
    )


def config(strategy: Strategy, **overrides: Any) -> ExecutionConfig:
    """An execution configuration; WorkloadAware GPU counts default to stages x TP."""
    fields: dict[str, Any] = {"strategy": strategy, **overrides}
    if strategy == "WorkloadAware":
        fields.setdefault(
            "encode_gpus", fields.get("encode_stages", 1) * fields.get("encode_tp", 1)
        )
        fields.setdefault(
            "decode_gpus", fields.get("pipeline_stages", 1) * fields.get("tensor_parallel", 1)
        )
    return ExecutionConfig(**fields)


def simulator(req: PlanRequest | None = None, **request_kwargs: Any) -> Simulator:
    """An analytic simulator for ``req`` (or ``request(**request_kwargs)``)."""
    r = req if req is not None else request(**request_kwargs)
    return Simulator(r, profile_for(r.architecture.name, r.gpu.name))


def evaluate(cfg: ExecutionConfig, req: PlanRequest | None = None, **kw: Any) -> Prediction:
    """Evaluate one configuration with a fresh simulator."""
    return simulator(req, **kw).evaluate(cfg)


def cost_model(
    model: str = DEFAULT_MODEL, gpu: str = DEFAULT_GPU, gpus_per_node: int = 8
) -> CostModel:
    return CostModel(profile_for(model, gpu), get_gpu(gpu), gpus_per_node)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
