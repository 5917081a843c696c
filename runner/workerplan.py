"""A worker's side of the worker plan (``exegpt.planner.workerplan.WorkerPlan``, written
by the operator into the ``<name>-plan`` ConfigMap): reading it, the replica it
describes, and where one pod stands in it.

A pod of role ``worker`` (RoundRobin), ``encoder`` or ``decoder`` (WorkloadAware) with
StatefulSet ordinal ``o`` is stage ``o % stages`` of replica ``o // stages``; it runs one
process per GPU, the TP ranks of its stage. Each replica is one ``torch.distributed``
world whose rank 0 (stage 0 of the first chain, its first GPU) is the driver; the ranks
meet at the driver's pod through the headless Service.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from exegpt.planner.workerplan import WorkerPlan, WorkerPlanError

from .errors import RunnerError
from .profiler import resolve_config
from .replica import ReplicaSpec
from .topology import DECODER, ENCODER, MAIN, topology

ROLE_CHAIN = {"worker": MAIN, "encoder": ENCODER, "decoder": DECODER}


class PlanError(RunnerError):
    """A plan document the worker cannot run."""


def load_plan(path: str | Path) -> WorkerPlan:
    """The worker plan in the file ``path`` (raises :class:`PlanError`)."""
    try:
        return WorkerPlan.load(path)
    except WorkerPlanError as exc:
        raise PlanError(str(exc)) from None


def parse_plan(doc: object, source: str = "plan") -> WorkerPlan:
    """The worker plan in ``doc``, parsed JSON (raises :class:`PlanError`)."""
    try:
        return WorkerPlan.parse(doc, source)
    except WorkerPlanError as exc:
        raise PlanError(str(exc)) from None


def replica_spec(
    plan: WorkerPlan, *, dtype: str | None = None, weights: str | None = None
) -> ReplicaSpec:
    """What every process of a replica of ``plan`` builds (``dtype``/``weights``
    override the document's: the local mode runs float32 on the CPU). The decoding
    caches are the plan's KV capacity: its slots of its limits' longest request."""
    if plan.engine != "ExeGPT":
        raise PlanError(f"the plan is for the {plan.engine} engine, not this one")
    directory = weights or (plan.model.weights.directory if plan.model.weights else None)
    return ReplicaSpec(
        model=resolve_config(plan.model.architecture, directory),
        config=plan.config,
        max_input_tokens=plan.limits.maxInputTokens,
        max_output_tokens=plan.limits.maxOutputTokens,
        steady_decode_batch=plan.predicted.decode_batch,
        dtype=dtype or plan.model.dtype,
        weights=directory,
        capacity=plan.capacity,
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
