"""The plan document the workers read (``kind: WorkerPlan``), its canonical JSON, and
its hash.

The operator writes the document into the deployment's plan ConfigMap as ``plan.json``;
every worker pod mounts it at ``/etc/exegpt/plan`` and starts from it
(``exegpt serve --plan /etc/exegpt/plan/plan.json``). The workers import only the
planner, so ``config`` and ``predicted`` use the planner's own field names:
``ExecutionConfig.model_validate(doc["config"])`` and
``Architecture.model_validate(doc["model"]["architecture"])`` read them back.

``limits`` holds ``maxInputTokens`` and ``maxOutputTokens``: the longest input and output
of the deployment's workload, resolved as the planner resolves it
(``WorkloadSpec.build``, as in ``request.plan_request``). The workers size their
KV-cache slots from them and reject longer requests with a 400.

``plan_hash`` covers the fields in ``HASHED_FIELDS`` only: everything that decides what
the workers run (deployment, model with dtype and weights, strategy, execution config,
topology, request limits, runner image and port). ``predicted`` and
``latencyBoundSeconds`` are informational: a replan that only changes them keeps the
hash, so the pods keep running (the mounted file still updates in place).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from exegpt.planner.plan import Plan

from . import names
from .podspec import PLAN_FILE, weights_directory
from .spec import API_VERSION, ExeGPTDeploymentSpec

KIND = "WorkerPlan"
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
    "runner",
)
"""The fields of a plan document that ``plan_hash`` covers."""

Doc = dict[str, Any]


def canonical_json(obj: object) -> str:
    """Compact JSON with sorted keys: one text per value (NaN and infinities rejected)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def plan_hash(doc: Doc) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``doc``'s hashed fields."""
    stable = {k: doc[k] for k in HASHED_FIELDS if k in doc}
    return hashlib.sha256(canonical_json(stable).encode()).hexdigest()[:16]


def plan_document(
    deployment: str, spec: ExeGPTDeploymentSpec, plan: Plan, image: str | None = None
) -> Doc:
    """What the workers of ``deployment`` need to run ``plan``.

    ``image`` is the worker image the operator runs (``spec.runner.image`` when not
    given), recorded so that a new image changes the hash.
    """
    roles(plan)  # refuses what the operator does not run
    model = spec.model
    architecture = model.resolved_architecture()
    weights = None
    if model.weights is not None:
        weights = {
            "pvc": model.weights.pvc,
            "path": model.weights.path,
            "directory": weights_directory(model.weights),
        }
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "deployment": deployment,
        "model": {
            "name": model.name or architecture.name,
            "architecture": architecture.model_dump(mode="json", by_alias=True),
            "dtype": model.dtype,
            "weights": weights,
        },
        "strategy": plan.strategy,
        "engine": plan.engine,
        "config": plan.config.model_dump(mode="json"),
        "topology": topology(deployment, plan),
        "limits": limits(spec),
        "predicted": plan.predicted.model_dump(mode="json"),
        "latencyBoundSeconds": plan.latency_bound_s,
        "runner": {"image": image or spec.runner.image, "port": spec.runner.port},
    }


def limits(spec: ExeGPTDeploymentSpec) -> Doc:
    """The longest input and output (tokens) of ``spec``'s workload: the maxima of the
    length distributions the planner plans with (``spec.workload.build()``, the call
    ``request.plan_request`` makes)."""
    workload = spec.workload.build()
    return {"maxInputTokens": workload.input.max, "maxOutputTokens": workload.output.max}


def roles(plan: Plan) -> list[tuple[str, int, int, int]]:
    """``(role, pods, stages per replica, GPUs per pod)`` of each StatefulSet ``plan`` runs.

    RoundRobin: ``worker``, ``replicas x pipeline_stages`` pods of ``tensor_parallel``
    GPUs. WorkloadAware: ``encoder``, ``replicas x encode_stages`` pods of ``encode_tp``
    GPUs, and ``decoder``, ``replicas x pipeline_stages`` pods of ``tensor_parallel``.
    In each, pod ordinal ``o`` is stage ``o % stages`` of replica ``o // stages``.
    """
    c = plan.config
    if plan.engine == "vLLM":
        # one vLLM server per pod (planner/runnable.py): a replica, or WorkloadAware's
        # prefill (``encoder``) and decode (``decoder``) instances
        if plan.strategy == "WorkloadAware":
            return [
                (names.ENCODER, c.replicas, 1, c.encode_gpus),
                (names.DECODER, c.replicas, 1, c.decode_gpus),
            ]
        return [(names.WORKER, c.replicas, 1, c.gpus_per_replica)]
    if plan.strategy == "RoundRobin":
        return [
            (names.WORKER, c.replicas * c.pipeline_stages, c.pipeline_stages, c.tensor_parallel)
        ]
    if plan.strategy == "WorkloadAware":
        return [
            (names.ENCODER, c.replicas * c.encode_stages, c.encode_stages, c.encode_tp),
            (names.DECODER, c.replicas * c.pipeline_stages, c.pipeline_stages, c.tensor_parallel),
        ]
    raise ValueError(f"the operator runs RoundRobin or WorkloadAware plans, not {plan.strategy}")


def topology(deployment: str, plan: Plan) -> Doc:
    """Where each role's pods are: StatefulSet, pod count, stages per replica, GPUs per
    pod, and the headless Service (pod ``<statefulSet>-<o>`` is reachable at
    ``<statefulSet>-<o>.<service>``)."""
    return {
        "service": names.headless_service(deployment),
        "planFile": PLAN_FILE,
        "roles": {
            role: {
                "statefulSet": names.statefulset(deployment, role),
                "pods": pods,
                "stages": stages,
                "gpusPerPod": gpus,
            }
            for role, pods, stages, gpus in roles(plan)
        },
    }
