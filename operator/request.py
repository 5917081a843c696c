"""From an ``ExeGPTDeployment`` spec to the planner's ``PlanRequest`` (pure)."""

from __future__ import annotations

import numpy as np

from exegpt.planner.architecture import Architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import PlanRequest
from exegpt.planner.workload import Workload

from .spec import ExeGPTDeploymentSpec


class SpecError(ValueError):
    """A spec that validates field by field but cannot be planned as a whole.

    ``path`` is the field at fault (``spec.workload``), ``message`` says what to change.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def plan_request(spec: ExeGPTDeploymentSpec) -> PlanRequest:
    """The planner's request for ``spec``: the resolved architecture, GPU type (with the
    spec's ``gpusPerNode``), GPU budget, dtype, workload, latency bound and strategy.

    Raises ``SpecError`` when the workload cannot be built, or when most of its queries
    do not fit in the model's context window (``request_warnings`` reports a minority).
    """
    architecture = spec.model.resolved_architecture()
    gpu = get_gpu(spec.hardware.gpu_type)
    if gpu.gpus_per_node != spec.hardware.gpus_per_node:
        gpu = gpu.model_copy(update={"gpus_per_node": spec.hardware.gpus_per_node})
    try:
        workload = spec.workload.build()
    except (ValueError, KeyError) as exc:
        raise SpecError("spec.workload", str(exc).strip("'\"")) from exc

    overflow = context_overflow(architecture, workload)
    if overflow >= 0.5:
        raise SpecError(
            "spec.workload",
            f"{overflow:.0%} of queries (input + output tokens) exceed "
            f"{architecture.name}'s context window of {architecture.max_positions} tokens: "
            "lower the input or output lengths, or use a model with a longer context",
        )

    engine = spec.engine
    if spec.model.weights is None:
        if engine == "vLLM":
            raise SpecError(
                "spec.model.weights",
                "vLLM serves a checkpoint: give the weights' PVC and path, or set "
                "spec.engine to ExeGPT (random weights, for benchmarking)",
            )
        engine = "ExeGPT" if engine == "Auto" else engine

    return PlanRequest(
        architecture=architecture,
        gpu=gpu,
        gpus=spec.hardware.gpus,
        gpus_per_node=spec.hardware.gpus_per_node,
        dtype=spec.model.dtype,
        workload=workload,
        latency_bound_s=spec.slo.latency,
        latency_margin=spec.slo.latency_margin,
        min_gain=spec.min_gain,
        strategy=spec.strategy,
        engine=engine,
        executable_only=True,  # the plan is deployed: only what the workers run
    )


_OVERFLOW_SAMPLES = 20_000


def context_overflow(architecture: Architecture, workload: Workload) -> float:
    """Fraction of queries whose input plus output exceeds the model's context window.

    Zero for models with relative positions (T5), which have no hard limit. Estimated
    from a fixed-seed sample when the longest query does not fit, so it is
    deterministic.
    """
    if architecture.position == "relative":
        return 0.0
    if workload.input.max + workload.output.max <= architecture.max_positions:
        return 0.0
    inputs, outputs = workload.sample(_OVERFLOW_SAMPLES, np.random.default_rng(0))
    return float(np.mean(inputs + outputs > architecture.max_positions))


def request_warnings(request: PlanRequest) -> list[str]:
    """``path: message`` lines about a plannable request that the user should know."""
    out: list[str] = []
    arch, workload = request.architecture, request.workload
    overflow = context_overflow(arch, workload)
    if overflow > 0:
        out.append(
            f"spec.workload: {max(overflow, 1e-4):.2%} of queries (up to "
            f"{workload.input.max} input + {workload.output.max} output tokens) exceed "
            f"{arch.name}'s context window of {arch.max_positions} tokens and cannot be "
            "served as declared"
        )
    return out
