"""The worker plan document (``kind: WorkerPlan``): the one contract between the
planner, the operator that deploys a plan and the workers that run it.

The operator writes it, as canonical JSON, into the deployment's plan ConfigMap
(``plan.json``, beside ``plan-hash``); every worker pod mounts it and starts from it
(``exegpt serve --plan``); ``exegpt serve --local`` builds the same document here. The
operator reads it back on every pass that does not plan again, so the workers always
read exactly what the planner produced.

Fields:

- ``deployment``, ``model`` (name, architecture, dtype, weights), ``topology`` (where
  each role's pods are) and ``runner`` (image, port): the deployment's;
- ``strategy``, ``engine``, ``config`` and ``predicted``: the plan's, as the planner
  made it (``predicted.decode_batch`` is the steady decode batch);
- ``limits``: the longest input and output of the workload planned for; the workers
  reject longer requests;
- ``capacity``: the KV cache the engine allocates (``planner/kvcapacity.py``), the one
  the simulator priced;
- ``latencyBoundSeconds``: the bound planned for.

``hash()`` covers ``HASHED_FIELDS``: everything that decides what the workers run.
``predicted`` and ``latencyBoundSeconds`` are informational: a replan that changes only
them keeps the hash, so the pods keep running.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .architecture import Architecture, Dtype
from .kvcapacity import KvCapacity, kv_capacity, steady_sequences
from .moments import Moments
from .plan import Engine, ExecutionConfig, Plan, Prediction, Strategy
from .profilekeys import GROUP
from .workload import Workload

API_VERSION = f"{GROUP}/v1alpha1"
KIND = "WorkerPlan"
PLAN_KEY = "plan.json"
"""The plan ConfigMap's data key (and the mounted file) that holds the canonical JSON."""
PLAN_HASH_KEY = "plan-hash"
"""The plan ConfigMap's data key (and file beside ``PLAN_KEY``) that holds its hash."""
RENDEZVOUS_PORT_OFFSET = 1
"""A replica's processes meet at its driver pod's HTTP port plus this."""
HASHED_FIELDS = (
    "apiVersion",
    "kind",
    "deployment",
    "model",
    "strategy",
    "engine",
    "config",
    "topology",
    "limits",
    "capacity",
    "runner",
)
"""The fields of a worker plan that its hash covers."""

Document = dict[str, object]


class WorkerPlanError(ValueError):
    """A worker plan document that cannot be read or does not hold together."""


def canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys: one text per value (NaN and infinities rejected)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WeightsDoc(_Doc):
    """The weights' PVC, the path in it, and where that path appears in a container."""

    pvc: str
    path: str
    directory: str


class ModelDoc(_Doc):
    name: str
    architecture: Architecture
    dtype: Dtype = "float16"
    weights: WeightsDoc | None = None


class RoleDoc(_Doc):
    """One StatefulSet: ``pods`` pods, ``stages`` per replica, ``gpusPerPod`` each."""

    statefulSet: str  # noqa: N815 (the document's field names)
    pods: int = Field(ge=1)
    stages: int = Field(ge=1)
    gpusPerPod: int = Field(ge=1)  # noqa: N815


class TopologyDoc(_Doc):
    """Where each role's pods are: pod ``<statefulSet>-<o>`` is reachable at
    ``<statefulSet>-<o>.<service>``; the plan is mounted at ``planFile``."""

    service: str
    planFile: str  # noqa: N815
    roles: dict[str, RoleDoc]


class LimitsDoc(_Doc):
    maxInputTokens: int = Field(ge=1)  # noqa: N815
    maxOutputTokens: int = Field(ge=1)  # noqa: N815


class RunnerDoc(_Doc):
    image: str | None = None
    port: int = Field(default=8000, ge=1, le=65534)


class WorkerPlan(_Doc):
    """The worker plan document (see the module)."""

    apiVersion: Literal["exegpt.dev/v1alpha1"] = "exegpt.dev/v1alpha1"  # noqa: N815
    kind: Literal["WorkerPlan"] = "WorkerPlan"
    deployment: str
    model: ModelDoc
    strategy: Strategy
    engine: Engine
    config: ExecutionConfig
    topology: TopologyDoc
    limits: LimitsDoc
    capacity: KvCapacity
    predicted: Prediction
    latencyBoundSeconds: float | None = None  # noqa: N815
    runner: RunnerDoc = RunnerDoc()

    @model_validator(mode="after")
    def _consistent(self) -> WorkerPlan:
        if self.config.strategy != self.strategy:
            raise ValueError(
                f"strategy is {self.strategy} but config.strategy {self.config.strategy}"
            )
        if self.capacity.engine != self.engine:
            raise ValueError(f"engine is {self.engine} but capacity.engine {self.capacity.engine}")
        kv = self.capacity
        held = steady_sequences(self.config, self.predicted.decode_batch)
        if kv.sequences != held:
            raise ValueError(
                f"capacity.sequences {kv.sequences} is not the {held} sequences config and "
                "predicted.decode_batch hold"
            )
        if kv.tokens != kv.blocks * kv.block_size:
            raise ValueError("capacity.tokens is not capacity.blocks x capacity.block_size")
        slot = self.limits.maxInputTokens + self.limits.maxOutputTokens
        if self.engine == "ExeGPT" and (kv.block_size, kv.blocks) != (slot, kv.sequences):
            raise ValueError(
                f"capacity.block_size {kv.block_size} is not maxInputTokens + "
                f"maxOutputTokens ({slot}) or capacity.blocks not capacity.sequences: the own "
                "engine gives each sequence a slot of the longest request"
            )
        return self

    # -- the document ------------------------------------------------------------------
    def document(self) -> Document:
        """The document as JSON-ready data (the field names the ConfigMap shows)."""
        return self.model_dump(mode="json", by_alias=True)

    def canonical_json(self) -> str:
        """What ``plan.json`` holds."""
        return canonical_json(self.document())

    def hash(self) -> str:
        """16 hex digits of the SHA-256 of the canonical JSON of the hashed fields."""
        doc = self.document()
        stable = {k: doc[k] for k in HASHED_FIELDS}
        return hashlib.sha256(canonical_json(stable).encode()).hexdigest()[:16]

    # -- reading -----------------------------------------------------------------------
    @classmethod
    def parse(cls, doc: object, source: str = "plan") -> WorkerPlan:
        """The worker plan in ``doc`` (parsed JSON); ``source`` names it in errors."""
        if isinstance(doc, dict) and doc.get("kind", KIND) != KIND:
            raise WorkerPlanError(f"{source}: kind is {doc.get('kind')!r}, expected {KIND}")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "document"
            raise WorkerPlanError(f"{source}: {where}: {first['msg']}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "plan") -> WorkerPlan:
        """The worker plan in the JSON ``text`` (``plan.json`` of the plan ConfigMap)."""
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkerPlanError(f"{source}: not JSON: {exc}") from None
        return cls.parse(doc, source)

    @classmethod
    def load(cls, path: str | Path) -> WorkerPlan:
        """The worker plan in the file ``path`` (the mounted ``plan.json``)."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise WorkerPlanError(f"{path}: cannot read the plan: {exc.strerror or exc}") from None
        return cls.from_json(data, str(path))


def worker_plan(
    *,
    deployment: str,
    model: ModelDoc,
    plan: Plan,
    workload: Workload,
    topology: TopologyDoc,
    runner: RunnerDoc,
) -> WorkerPlan:
    """The worker plan of ``plan``, made for ``workload`` (the request's workload):
    its limits are the workload's longest input and output, its capacity the KV cache
    the simulator priced for the plan's engine."""
    moments = Moments.of(workload, model.architecture)
    capacity = kv_capacity(plan.config, moments, plan.engine, plan.predicted.decode_batch)
    return WorkerPlan(
        deployment=deployment,
        model=model,
        strategy=plan.strategy,
        engine=plan.engine,
        config=plan.config,
        topology=topology,
        limits=LimitsDoc(maxInputTokens=workload.input.max, maxOutputTokens=workload.output.max),
        capacity=capacity,
        predicted=plan.predicted,
        latencyBoundSeconds=plan.latency_bound_s,
        runner=runner,
    )
