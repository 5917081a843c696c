"""The ExeGPTDeployment status (Kubernetes API conventions: observedGeneration and
conditions, no phase) and pure helpers to update conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ConditionType = Literal[
    "Profiled", "Planned", "Available", "Progressing", "Degraded", "WorkloadDrift"
]
CONDITION_TYPES: tuple[ConditionType, ...] = (
    "Profiled",
    "Planned",
    "Available",
    "Progressing",
    "Degraded",
    "WorkloadDrift",
)
ConditionStatus = Literal["True", "False", "Unknown"]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class Condition(_Model):
    type: ConditionType
    status: ConditionStatus
    reason: str = Field(description="CamelCase reason for the last transition")
    message: str = ""
    last_transition_time: str = Field(alias="lastTransitionTime")
    observed_generation: int = Field(default=0, alias="observedGeneration")


class ProfileStatus(_Model):
    key: str = Field(description="content key: model, GPU type, dtype, profiler version")
    config_map: str | None = Field(default=None, alias="configMap")
    source: Literal["analytic", "measured"]
    gpu_type: str = Field(alias="gpuType")
    job: str | None = Field(default=None, description="the profiling Job in use, if any")
    attempts: int = Field(default=0, ge=0, description="profiling Jobs created so far")


class PredictedStatus(_Model):
    throughput_qps: float = Field(alias="throughputQps")
    throughput_tps: float = Field(alias="throughputTps")
    latency_seconds: float = Field(alias="latencySeconds")
    e2e_p99_seconds: float = Field(alias="e2eP99Seconds")
    memory_per_gpu_gib: float = Field(alias="memoryPerGpuGiB")


class AlternativeStatus(_Model):
    strategy: str
    throughput_qps: float = Field(alias="throughputQps")
    latency_seconds: float = Field(alias="latencySeconds")
    summary: str


class PlanStatus(_Model):
    strategy: Literal["RoundRobin", "WorkloadAware", "Static", "Continuous"]
    engine: Literal["ExeGPT", "vLLM"] = "ExeGPT"
    replicas: int
    tensor_parallel: int = Field(alias="tensorParallel")
    tp_scope: str = Field(alias="tpScope")
    pipeline_stages: int = Field(alias="pipelineStages")
    micro_batches: int = Field(alias="microBatches")
    encode_batch: int = Field(alias="encodeBatch")
    decode_batch: int = Field(alias="decodeBatch")
    decode_steps_per_encode: int = Field(alias="decodeStepsPerEncode")
    encode_gpus: int = Field(default=0, alias="encodeGpus")
    encode_tensor_parallel: int = Field(default=1, alias="encodeTensorParallel")
    encode_stages: int = Field(default=1, alias="encodeStages")
    decode_gpus: int = Field(default=0, alias="decodeGpus")
    latency_bound_seconds: float | None = Field(default=None, alias="latencyBoundSeconds")
    latency_margin: float = Field(
        default=0.0, alias="latencyMargin", description="fraction of the bound kept free"
    )
    min_gain: float = Field(
        default=0.0, alias="minGain", description="gain a schedule needed over a simpler one"
    )
    predicted: PredictedStatus
    baselines: dict[str, PredictedStatus] = Field(
        default_factory=dict, description="Static and Continuous under the same bound"
    )
    alternatives: list[AlternativeStatus] = Field(default_factory=list)
    reason: str = ""
    search_seconds: float = Field(alias="searchSeconds")
    evaluated: int = 0
    hash: str = Field(description="hash of what the workers run; changes roll them")
    inputs_hash: str = Field(
        alias="inputsHash", description="hash of the planning inputs; unchanged = no replan"
    )
    config_map: str = Field(alias="configMap")


class InfeasibleStatus(_Model):
    latency_bound_seconds: float | None = Field(default=None, alias="latencyBoundSeconds")
    latency_margin: float = Field(default=0.0, alias="latencyMargin")
    best_latency_seconds: float | None = Field(default=None, alias="bestLatencySeconds")
    message: str
    inputs_hash: str = Field(alias="inputsHash")


class ReplicasStatus(_Model):
    desired: int = 0
    ready: int = 0


class ObservedSideStatus(_Model):
    edges: list[int] = Field(
        description="bin edges (tokens): the lengths in [edges[i], edges[i+1]) share counts[i]"
    )
    counts: list[int] = Field(description="requests counted per bin")


class ObservedWorkloadStatus(_Model):
    input: ObservedSideStatus = Field(description="prompt lengths of admitted requests")
    output: ObservedSideStatus = Field(description="new tokens of finished requests")


class WorkloadStatus(_Model):
    source: Literal["Spec", "Observed"] = Field(
        description="what the plan is made for: spec.workload, or the observed traffic"
    )
    spec_hash: str = Field(
        alias="specHash", description="hash of the spec.workload this status refers to"
    )
    observed: ObservedWorkloadStatus | None = Field(
        default=None, description="the observed workload planned for (source Observed)"
    )
    requests: int | None = Field(default=None, description="requests counted at the last check")
    input_distance: float | None = Field(
        default=None, alias="inputDistance", description="TV distance of prompt lengths"
    )
    output_distance: float | None = Field(
        default=None, alias="outputDistance", description="TV distance of output lengths"
    )
    checked_at: str | None = Field(
        default=None, alias="checkedAt", description="when the workers' metrics were last read"
    )
    replanned_at: str | None = Field(
        default=None, alias="replannedAt", description="when drift last caused a replan"
    )


class ExeGPTDeploymentStatus(_Model):
    observed_generation: int = Field(default=0, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)
    profile: ProfileStatus | None = None
    plan: PlanStatus | None = None
    infeasible: InfeasibleStatus | None = None
    endpoint: str | None = None
    pods: ReplicasStatus | None = None
    workload: WorkloadStatus | None = None


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    at: str | None = None,
) -> list[Condition]:
    """A new list with ``type_`` set; ``lastTransitionTime`` moves only when the
    status changes (reason and message updates keep it)."""
    old = get_condition(conditions, type_)
    kept = old is not None and old.status == status
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=old.last_transition_time if old and kept else (at or now()),
        observed_generation=generation,
    )
    out = [c for c in conditions if c.type != type_] + [new]
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(out, key=lambda c: order[c.type])


def remove_condition(conditions: list[Condition], type_: ConditionType) -> list[Condition]:
    return [c for c in conditions if c.type != type_]


def get_condition(conditions: list[Condition], type_: ConditionType) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)
