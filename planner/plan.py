"""Execution configurations, predictions and plans: what the XSimulator evaluates and
the XScheduler returns (DESIGN.md 4.3)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .architecture import Architecture, Dtype
from .hardware import GpuType
from .workload import Workload

Strategy = Literal["RoundRobin", "WorkloadAware", "Static", "Continuous"]
StrategyChoice = Literal["Auto", "RoundRobin", "WorkloadAware"]
TpScope = Literal["all", "encode", "decode"]
Engine = Literal["ExeGPT", "vLLM"]
"""The engine that executes a plan: the project's own PyTorch engine, or vLLM."""
EngineChoice = Literal["Auto", "ExeGPT", "vLLM"]


class ExecutionConfig(BaseModel):
    """The control variables of one schedule, for one model replica.

    ``replicas`` copies of the replica run side by side (data parallel); a replica uses
    ``gpus_per_replica`` GPUs.

    RoundRobin: ``pipeline_stages`` stages of ``tensor_parallel`` GPUs each, every GPU
    runs both phases; ``tp_scope`` says which phase uses TP (the other runs
    ``tensor_parallel`` times as many data-parallel copies within the stage, i.e. TP 1
    on a slice of the batch: partial tensor parallelism). An encoding of
    ``encode_batch`` queries runs every ``decode_steps_per_encode`` decode iterations;
    the decode batch is split into ``micro_batches`` through the pipeline.

    WorkloadAware: ``encode_gpus`` GPUs encode (``encode_stages`` stages of
    ``encode_tp`` GPUs) and ``decode_gpus`` decode (``pipeline_stages`` stages of
    ``tensor_parallel`` GPUs) with a target decode batch of ``decode_batch``.

    Static: batches of ``encode_batch`` run to their longest output.
    Continuous: iteration-level batching with up to ``decode_batch`` running queries.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy
    replicas: int = Field(default=1, ge=1)
    tensor_parallel: int = Field(default=1, ge=1)
    tp_scope: TpScope = "all"
    pipeline_stages: int = Field(default=1, ge=1)
    micro_batches: int = Field(default=1, ge=1)
    encode_batch: int = Field(default=1, ge=1)
    decode_batch: int = Field(default=1, ge=1)
    decode_steps_per_encode: int = Field(default=1, ge=1)
    encode_gpus: int = Field(default=0, ge=0)
    encode_tp: int = Field(default=1, ge=1)
    encode_stages: int = Field(default=1, ge=1)
    decode_gpus: int = Field(default=0, ge=0)

    @property
    def gpus_per_replica(self) -> int:
        if self.strategy == "WorkloadAware":
            return self.encode_gpus + self.decode_gpus
        return self.tensor_parallel * self.pipeline_stages

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_replica


class Prediction(BaseModel):
    """What the simulator predicts for one configuration (all replicas together)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    throughput_qps: float = Field(ge=0)
    throughput_tps: float = Field(ge=0, description="output tokens per second")
    latency_s: float = Field(ge=0, description="time to generate the p99-length output")
    e2e_p99_s: float = Field(ge=0, description="p99 end-to-end latency, queueing excluded")
    memory_per_gpu_bytes: int = Field(ge=0, description="peak over the replica's GPUs")
    decode_batch: float = Field(ge=0, description="steady decode batch per replica")
    feasible: bool = Field(description="fits in GPU memory")
    reason: str = ""


class Candidate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    config: ExecutionConfig
    predicted: Prediction


class SearchStats(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(ge=0)
    evaluated: int = Field(ge=0, description="configurations simulated")
    space: int = Field(ge=0, description="configurations in the discretised space")
    exhaustive: bool = False
    pruned: int = Field(default=0, ge=0, description="shapes skipped by their upper bound")
    truncated: bool = Field(default=False, description="stopped early at the time limit")


class PlanRequest(BaseModel):
    """Everything the scheduler needs besides the profile."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    architecture: Architecture
    gpu: GpuType
    gpus: int = Field(ge=1)
    gpus_per_node: int = Field(default=8, ge=1)
    dtype: Dtype = "float16"
    workload: Workload
    latency_bound_s: float | None = Field(default=None, gt=0)
    latency_margin: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="fraction of the bound kept free for the prediction's error: plans are "
        "searched under latency_bound_s x (1 - latency_margin)",
    )
    strategy: StrategyChoice = "Auto"
    min_gain: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="under strategy Auto, the predicted throughput gain a schedule must "
        "show over a simpler one to be chosen instead (continuous batching, then Static, "
        "then the ExeGPT schedules): 0.1 keeps continuous batching unless another "
        "schedule is predicted more than 10 % faster",
    )
    engine: EngineChoice = Field(
        default="ExeGPT", description="the engine the plan is for; Auto: vLLM where it runs"
    )
    memory_headroom: float = Field(
        default=0.9, gt=0, le=1, description="fraction of GPU memory a plan may use"
    )
    executable_only: bool = Field(
        default=False,
        description="only configurations the XRunner workers run (planner/runnable.py)",
    )

    @property
    def planning_bound_s(self) -> float | None:
        """The bound configurations are searched under: the latency bound less its
        margin."""
        if self.latency_bound_s is None:
            return None
        return self.latency_bound_s * (1.0 - self.latency_margin)


class Plan(BaseModel):
    """The scheduler's answer when the bound can be met."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["Plan"] = "Plan"
    strategy: Strategy
    engine: Engine = "ExeGPT"
    config: ExecutionConfig
    predicted: Prediction
    alternatives: list[Candidate] = Field(default_factory=list, description="next best 3")
    baselines: dict[str, Candidate | None] = Field(
        default_factory=dict,
        description="best Static and Continuous configurations under the same bound",
    )
    latency_bound_s: float | None = None
    latency_margin: float = Field(
        default=0.0, description="fraction of the bound kept free: searched under the rest"
    )
    min_gain: float = Field(
        default=0.0, description="gain a schedule needed over a simpler one to be chosen"
    )
    search: SearchStats
    reason: str = Field(default="", description="why this strategy won, in one sentence")


class Infeasible(BaseModel):
    """No configuration meets the bound (or none fits in memory)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["Infeasible"] = "Infeasible"
    latency_bound_s: float | None
    latency_margin: float = 0.0
    best_latency_s: float | None = Field(description="lowest latency any feasible config reaches")
    best: Candidate | None = None
    message: str
    search: SearchStats


PlanResult = Plan | Infeasible
