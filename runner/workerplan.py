"""The plan document a worker starts from (``kind: WorkerPlan``, written by the operator
into the ``<name>-plan`` ConfigMap), and where one pod stands in it.

A pod of role ``worker`` (RoundRobin), ``encoder`` or ``decoder`` (WorkloadAware) with
StatefulSet ordinal ``o`` is stage ``o % stages`` of replica ``o // stages``; it runs one
process per GPU, the TP ranks of its stage. Each replica is one ``torch.distributed``
world whose rank 0 (stage 0 of the first chain, its first GPU) is the driver; the ranks
meet at the driver's pod through the headless Service.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exegpt.planner.architecture import Architecture
from exegpt.planner.plan import ExecutionConfig

from .errors import RunnerError
from .profiler import resolve_config
from .replica import ReplicaSpec
from .topology import DECODER, ENCODER, MAIN, topology

RENDEZVOUS_PORT_OFFSET = 1
"""The driver's rendezvous port is the HTTP port plus this."""

ROLE_CHAIN = {"worker": MAIN, "encoder": ENCODER, "decoder": DECODER}


class PlanError(RunnerError):
    """A plan document the worker cannot run."""


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class WeightsDoc(_Loose):
    directory: str


class ModelDoc(_Loose):
    name: str
    architecture: Architecture
    dtype: str = "float16"
    weights: WeightsDoc | None = None


class RoleDoc(_Loose):
    statefulSet: str  # noqa: N815 (the document's field names)
    pods: int = Field(ge=1)
    stages: int = Field(ge=1)
    gpusPerPod: int = Field(ge=1)  # noqa: N815


class TopologyDoc(_Loose):
    service: str
    roles: dict[str, RoleDoc]


class LimitsDoc(_Loose):
    maxInputTokens: int = Field(ge=1)  # noqa: N815
    maxOutputTokens: int = Field(ge=1)  # noqa: N815


class RunnerDoc(_Loose):
    port: int = 8000


class WorkerPlan(_Loose):
    """The fields of the plan document a worker reads."""

    kind: str
    deployment: str
    model: ModelDoc
    strategy: str
    config: ExecutionConfig
    topology: TopologyDoc
    limits: LimitsDoc
    predicted: dict[str, Any] = Field(default_factory=dict)
    runner: RunnerDoc = RunnerDoc()

    @classmethod
    def load(cls, path: str | Path) -> WorkerPlan:
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PlanError(f"{path}: cannot read the plan: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise PlanError(f"{path}: not JSON: {exc}") from None
        return cls.parse(doc, str(path))

    @classmethod
    def parse(cls, doc: object, source: str = "plan") -> WorkerPlan:
        try:
            plan = cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PlanError(f"{source}: {where}: {first['msg']}") from None
        if plan.kind != "WorkerPlan":
            raise PlanError(f"{source}: kind is {plan.kind!r}, expected WorkerPlan")
        return plan

    def replica_spec(self, *, dtype: str | None = None, weights: str | None = None) -> ReplicaSpec:
        """What every process of a replica builds (``dtype``/``weights`` override the
        document's: the local mode runs float32 on the CPU)."""
        directory = weights or (self.model.weights.directory if self.model.weights else None)
        steady = float(self.predicted.get("decode_batch", 0.0) or 0.0)
        return ReplicaSpec(
            model=resolve_config(self.model.architecture, directory),
            config=self.config,
            max_input_tokens=self.limits.maxInputTokens,
            max_output_tokens=self.limits.maxOutputTokens,
            steady_decode_batch=steady if math.isfinite(steady) else 0.0,
            dtype=dtype or self.model.dtype,
            weights=directory,
        )


@dataclass(frozen=True)
class Placement:
    """One pod's place: its replica, its chain's stage, the global ranks of its
    processes (one per GPU), the replica's world size and its driver's address."""

    role: str
    replica: int
    stage: int
    ranks: tuple[int, ...]
    world: int
    driver_host: str

    @property
    def driver_pod(self) -> bool:
        """This pod holds the driver (rank 0)."""
        return 0 in self.ranks


def placement(plan: WorkerPlan, role: str, ordinal: int, namespace: str | None = None) -> Placement:
    """Where pod ``ordinal`` of ``role`` stands (raises :class:`PlanError` for a role or
    ordinal the plan does not have)."""
    if role not in plan.topology.roles:
        have = ", ".join(sorted(plan.topology.roles))
        raise PlanError(f"--role {role}: the plan's roles are {have}")
    r = plan.topology.roles[role]
    if not 0 <= ordinal < r.pods:
        raise PlanError(f"pod ordinal {ordinal} outside the {r.pods} pods of role {role}")
    replica, stage = divmod(ordinal, r.stages)
    topo = topology(
        plan.config,
        num_layers=plan.model.architecture.num_layers,
        architecture=plan.model.architecture,
    )
    chain = topo.chain(ROLE_CHAIN[role])
    if chain.stages != r.stages or chain.tp != r.gpusPerPod:
        raise PlanError(
            f"role {role}: the topology says {r.stages} stages of {r.gpusPerPod} GPUs, "
            f"the config {chain.stages} of {chain.tp}"
        )
    first_role = next(k for k, v in ROLE_CHAIN.items() if v == topo.chains[0].name)
    first = plan.topology.roles[first_role]
    driver_pod = f"{first.statefulSet}-{replica * first.stages}"
    host = f"{driver_pod}.{plan.topology.service}"
    if namespace:
        host += f".{namespace}.svc"
    ranks = tuple(chain.stage_ranks(stage))
    return Placement(role, replica, stage, ranks, topo.world, host)


def pod_ordinal(pod_name: str) -> int:
    """A StatefulSet pod's ordinal: the number after its name's last dash."""
    head, _, tail = pod_name.rpartition("-")
    if not head or not tail.isdigit():
        raise PlanError(f"POD_NAME {pod_name!r} is not a StatefulSet pod name (<set>-<ordinal>)")
    return int(tail)
