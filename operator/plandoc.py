"""The worker plan of a deployment (``exegpt.planner.workerplan.WorkerPlan``): what the
operator writes into the plan ConfigMap for the workers, made from the spec and either
a new plan or the document the ConfigMap already holds.

The deployment's part (model with dtype and weights, topology, runner image and port)
comes from the spec on every pass; the plan's part (strategy, engine, config,
prediction, limits, KV capacity, bound) is the planner's, carried over unchanged from
the previous document when the operator did not plan again.
"""

from __future__ import annotations

from typing import Protocol

from exegpt.planner.plan import Engine, ExecutionConfig, Plan, Strategy
from exegpt.planner.runnable import vllm_nodes, vllm_server_limitation
from exegpt.planner.workerplan import (
    ModelDoc,
    RoleDoc,
    RunnerDoc,
    TopologyDoc,
    WeightsDoc,
    WorkerPlan,
    worker_plan,
)

from . import names
from .podspec import PLAN_FILE, weights_directory
from .spec import ExeGPTDeploymentSpec


class Planned(Protocol):
    """A plan or a worker plan: what the workers' objects are built from."""

    @property
    def config(self) -> ExecutionConfig: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def strategy(self) -> Strategy: ...


def plan_document(
    deployment: str,
    spec: ExeGPTDeploymentSpec,
    plan: Plan | WorkerPlan,
    image: str | None = None,
) -> WorkerPlan:
    """What the workers of ``deployment`` need to run ``plan``: a new plan, or the
    worker plan the ConfigMap holds (its planned part is kept byte for byte).

    ``image`` is the worker image the operator runs (``spec.runner.image`` when not
    given), recorded so that a new image changes the hash. ``spec`` is the spec planned
    with (after a drift replan, its workload is the observed one).
    """
    gpus_per_node = spec.hardware.gpus_per_node
    roles(plan, gpus_per_node)  # refuses what the operator does not run
    model, topo = model_doc(spec), topology(deployment, plan, gpus_per_node)
    runner = RunnerDoc(image=image or spec.runner.image, port=spec.runner.port)
    if isinstance(plan, WorkerPlan):
        update = {"deployment": deployment, "model": model, "topology": topo, "runner": runner}
        return WorkerPlan.model_validate({**dict(plan), **update})
    return worker_plan(
        deployment=deployment,
        model=model,
        plan=plan,
        workload=spec.workload.build(),
        topology=topo,
        runner=runner,
    )


def model_doc(spec: ExeGPTDeploymentSpec) -> ModelDoc:
    model = spec.model
    architecture = model.resolved_architecture()
    weights = None
    if model.weights is not None:
        weights = WeightsDoc(
            pvc=model.weights.pvc,
            path=model.weights.path,
            directory=weights_directory(model.weights),
        )
    return ModelDoc(
        name=model.name or architecture.name,
        architecture=architecture,
        dtype=model.dtype,
        weights=weights,
    )


def plan_hash(doc: WorkerPlan) -> str:
    """The worker plan's hash (``WorkerPlan.hash``)."""
    return doc.hash()


def roles(plan: Planned, gpus_per_node: int | None = None) -> list[tuple[str, int, int, int]]:
    """``(role, pods, stages per replica, GPUs per pod)`` of each StatefulSet ``plan`` runs.

    RoundRobin, Static and Continuous: ``worker``, ``replicas x pipeline_stages`` pods
    of ``tensor_parallel`` GPUs. WorkloadAware: ``encoder``, ``replicas x encode_stages``
    pods of ``encode_tp`` GPUs, and ``decoder``, ``replicas x pipeline_stages`` pods of
    ``tensor_parallel``. In each, pod ordinal ``o`` is stage ``o % stages`` of replica
    ``o // stages``.

    On vLLM, ``vllm_servers``: the first pod of every server (one per replica), and,
    given ``gpus_per_node``, the other pods of servers that span nodes.
    """
    c = plan.config
    if plan.engine == "vLLM":
        rows = []
        for role, servers, nodes, gpus in vllm_servers(plan, gpus_per_node):
            rows.append((role, servers, 1, gpus))
            if nodes > 1:
                rows.append((names.nodes_of(role), servers * (nodes - 1), 1, gpus))
        return rows
    if plan.strategy in ("RoundRobin", "Static", "Continuous"):
        return [
            (names.WORKER, c.replicas * c.pipeline_stages, c.pipeline_stages, c.tensor_parallel)
        ]
    if c.strategy == "WorkloadAware":
        return [
            (names.ENCODER, c.replicas * c.encode_stages, c.encode_stages, c.encode_tp),
            (names.DECODER, c.replicas * c.pipeline_stages, c.pipeline_stages, c.tensor_parallel),
        ]
    raise ValueError(f"the operator does not run {c.strategy} plans")


def vllm_servers(
    plan: Planned, gpus_per_node: int | None = None
) -> list[tuple[str, int, int, int]]:
    """``(role, servers, nodes per server, GPUs per node)`` of a plan for vLLM: a server
    per replica (``worker``), or WorkloadAware's prefill (``encoder``) and decode
    (``decoder``) instances, one each per replica. A server spans nodes when it is larger
    than one (whole nodes, split between pipeline stages:
    ``runnable.vllm_server_limitation``); without ``gpus_per_node`` every server counts
    as one node."""
    c = plan.config
    if plan.strategy == "WorkloadAware":
        servers = [
            (names.ENCODER, "prefill instance", c.encode_gpus, c.encode_tp),
            (names.DECODER, "decode instance", c.decode_gpus, c.tensor_parallel),
        ]
    else:
        servers = [(names.WORKER, "replica", c.gpus_per_replica, c.tensor_parallel)]
    out = []
    for role, what, gpus, tp in servers:
        if gpus_per_node is None:
            out.append((role, c.replicas, 1, gpus))
            continue
        reason = vllm_server_limitation(what, gpus, tp, gpus_per_node)
        if reason:
            raise ValueError(f"the operator does not run this plan: {reason}")
        nodes = vllm_nodes(gpus, gpus_per_node)
        out.append((role, c.replicas, nodes, gpus // nodes))
    return out


def topology(deployment: str, plan: Planned, gpus_per_node: int | None = None) -> TopologyDoc:
    """Where each role's pods are: StatefulSet, pod count, stages per replica, GPUs per
    pod, and the headless Service (pod ``<statefulSet>-<o>`` is reachable at
    ``<statefulSet>-<o>.<service>``)."""
    return TopologyDoc(
        service=names.headless_service(deployment),
        planFile=PLAN_FILE,
        roles={
            role: RoleDoc(
                statefulSet=names.statefulset(deployment, role),
                pods=pods,
                stages=stages,
                gpusPerPod=gpus,
            )
            for role, pods, stages, gpus in roles(plan, gpus_per_node)
        },
    )
