"""Pure ``build_*`` functions: the manifest of every child object the operator creates.

Each returns a plain dict as the Kubernetes API takes it; nothing here does I/O or
touches a client. Equal inputs give byte-identical output (maps and lists in a fixed
order), so a reconcile that finds the same plan renders the same objects.

What each deployment owns (``<name>`` is the deployment's name):

- ConfigMap ``<name>-plan``: the worker plan document (``plandoc``) and its hash;
- StatefulSets ``<name>-worker`` (RoundRobin) or ``<name>-encoder`` and
  ``<name>-decoder`` (WorkloadAware), pod ordinal ``o`` being stage ``o % stages`` of
  replica ``o // stages``; on vLLM one server per pod, plus ``<name>-<role>-n`` for the
  other nodes of servers that span nodes (``vllm_workers``);
- Services ``<name>-stages`` (headless: the pods find each other) and ``<name>``
  (what clients call).

The profiling Job is shared (see ``build_profile_job``) and has no owner.

``owner`` arguments take the ownerReference from ``owner_reference``, or the
deployment's body or metadata, from which one is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from exegpt.planner.plan import Engine
from exegpt.planner.profilekeys import PROFILE_DATA_KEY
from exegpt.planner.workerplan import RENDEZVOUS_PORT_OFFSET, WorkerPlan, canonical_json

from . import names
from .plandoc import Planned, roles
from .podspec import API_TOKEN_ENV as API_TOKEN_ENV
from .podspec import (
    HTTP,
    PLAN_FILE,
    PLAN_HASH_KEY,
    PLAN_KEY,
    RENDEZVOUS,
    api_token_env,
    base_env,
    gpu_resources,
    http_probes,
    placement,
    plan_volume,
    restricted_container_security,
    restricted_pod_security,
    scratch_volumes,
    weights_directory,
)
from .spec import API_VERSION, KIND, ExeGPTDeploymentSpec
from .statefulset import worker_statefulset
from .vllm_workers import build_vllm_workers

Obj = dict[str, Any]

TERMINATION_GRACE_SECONDS = 60  # workers drain in-flight requests on SIGTERM
PROFILE_TIME_SHARE = 0.9  # of the Job's deadline, the profiler's own budget


def owner_reference(body_or_meta: Mapping[str, Any]) -> Obj:
    """The controller ownerReference to an ExeGPTDeployment, from its body or metadata.

    Raises ``ValueError`` when name or uid is missing (the API server would reject it).
    """
    meta: Mapping[str, Any] = body_or_meta.get("metadata", body_or_meta)
    name, uid = meta.get("name"), meta.get("uid")
    if not name or not uid:
        raise ValueError("an ownerReference needs the deployment's metadata.name and uid")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": str(name),
        "uid": str(uid),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _owner_refs(owner: Mapping[str, Any]) -> list[Obj]:
    if owner.get("kind") == KIND and "uid" in owner and "controller" in owner:
        return [dict(owner)]
    return [owner_reference(owner)]


def _metadata(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(sorted(labels.items()))}
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    if owner is not None:
        meta["ownerReferences"] = _owner_refs(owner)
    return meta


# -- the plan ConfigMap --------------------------------------------------------------------


def build_plan_configmap(
    name: str, namespace: str, owner: Mapping[str, Any], doc: WorkerPlan, plan_hash: str
) -> Obj:
    """ConfigMap ``<deployment>-plan``: ``plan.json`` (the canonical JSON of ``doc``) and
    ``plan-hash``, which the workers compare with ``$EXEGPT_PLAN_HASH`` to know the
    mounted file is the plan their pod was made for.

    ``name`` is the deployment's name, or the ConfigMap's (``names.plan_configmap``);
    either way it must match ``doc.deployment``, and the ConfigMap is named after it.
    """
    deployment = doc.deployment
    if name not in (deployment, names.plan_configmap(deployment)):
        raise ValueError(f"plan document of deployment {deployment!r} given for {name!r}")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            names.plan_configmap(deployment),
            namespace,
            names.labels(deployment, names.PLAN),
            owner,
            {names.ANNOTATION_PLAN_HASH: plan_hash},
        ),
        "data": {PLAN_KEY: doc.canonical_json(), PLAN_HASH_KEY: plan_hash},
    }


# -- the profiling Job ---------------------------------------------------------------------


def profile_args(
    namespace: str,
    spec: ExeGPTDeploymentSpec,
    profile_key: str,
    timeout_seconds: float,
    engine: Engine = "ExeGPT",
) -> list[str]:
    """``exegpt profile`` arguments: the model (preset or architecture JSON), GPU type,
    dtype, the TP degrees one node allows, a time budget inside the Job's deadline, the
    ConfigMap to write the profile to, and ``--engine vllm`` for a profile of vLLM."""
    hw, model = spec.hardware, spec.model
    architecture = model.resolved_architecture()
    gpus = min(hw.gpus_per_node, hw.gpus)
    degrees = architecture.tensor_parallel_degrees(limit=gpus)
    if model.name is not None:
        which = ["--model", model.name]
    else:
        which = [
            "--architecture-json",
            canonical_json(architecture.model_dump(mode="json", by_alias=True)),
        ]
    args = [
        "profile",
        *which,
        "--gpu-type",
        hw.gpu_type,
        "--dtype",
        model.dtype,
        "--tensor-parallel",
        ",".join(str(d) for d in degrees),
        "--max-seconds",
        str(max(1, math.floor(timeout_seconds * PROFILE_TIME_SHARE))),
        "--configmap",
        names.profile_configmap(profile_key),
        "--namespace",
        namespace,
    ]
    if model.weights is not None:
        args += ["--weights", weights_directory(model.weights)]
    if engine == "vLLM":
        args += ["--engine", "vllm"]
    return args


def build_profile_job(
    namespace: str,
    spec: ExeGPTDeploymentSpec,
    profile_key: str,
    attempt: int,
    image: str,
    service_account: str,
    timeout_seconds: float,
    engine: Engine = "ExeGPT",
) -> Obj:
    """The profiling Job of ``attempt`` (1, 2, ...) for ``profile_key``, timing ``engine``.

    It has no ownerReference: the profile it writes is cached per model, GPU type,
    dtype and profiler version and shared by every deployment in the namespace, so
    deleting the deployment that started it must not delete it. ``backoffLimit`` is 0
    because the operator counts attempts itself (one Job per attempt).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    gpus = min(spec.hardware.gpus_per_node, spec.hardware.gpus)
    labels = {**names.profile_labels(profile_key), names.LABEL_ATTEMPT: str(attempt)}
    annotations = {names.ANNOTATION_PROFILE_KEY: profile_key}
    volumes, mounts = scratch_volumes(spec.model.weights)
    container: Obj = {
        "name": names.PROFILER,
        "image": image,
        "command": ["exegpt"],
        "args": profile_args(namespace, spec, profile_key, timeout_seconds, engine),
        "env": base_env(),
        "resources": gpu_resources(gpus, cpu_per_gpu=1, memory_gib_per_gpu=4),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    pod: Obj = {
        "restartPolicy": "Never",
        "serviceAccountName": service_account,
        "automountServiceAccountToken": True,  # the profiler writes its ConfigMap
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        **placement(spec.hardware),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(
            names.profile_job(profile_key, attempt), namespace, labels, None, annotations
        ),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(timeout_seconds)),
            "template": {
                "metadata": {
                    "labels": dict(sorted(labels.items())),
                    "annotations": dict(sorted(annotations.items())),
                },
                "spec": pod,
            },
        },
    }


# -- the workers ---------------------------------------------------------------------------


def serve_args(role: str, port: int) -> list[str]:
    """``exegpt serve`` arguments of a worker of ``role`` (worker, encoder or decoder)."""
    return ["serve", "--plan", PLAN_FILE, "--role", role, "--port", str(port)]


def build_workers(
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    spec: ExeGPTDeploymentSpec,
    plan: WorkerPlan,
    plan_hash: str,
    image: str,
) -> list[Obj]:
    """The StatefulSets that run the worker plan ``plan`` (the document the plan
    ConfigMap holds, ``plandoc.plan_document``): ``worker`` for RoundRobin, ``encoder`` and
    ``decoder`` for WorkloadAware (``plandoc.roles`` gives each one's pods and GPUs per
    pod). Pod ordinal ``o`` is stage ``o % stages`` of replica ``o // stages``.

    The plan hash is an annotation of the StatefulSet and of its pod template (a new
    plan rolls the pods), never part of the selector (which is immutable).

    A plan for vLLM runs vLLM's OpenAI servers instead (``vllm_workers``).
    """
    if plan.engine == "vLLM":
        return build_vllm_workers(name, namespace, _owner_refs(owner), spec, plan, plan_hash, image)
    return [
        _statefulset(name, namespace, owner, spec, role, pods, gpus, plan_hash, image)
        for role, pods, _stages, gpus in roles(plan)
    ]


def _statefulset(
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    spec: ExeGPTDeploymentSpec,
    role: str,
    pods: int,
    gpus: int,
    plan_hash: str,
    image: str,
) -> Obj:
    pod = _worker_pod(name, spec, role, gpus, plan_hash, image)
    return worker_statefulset(name, namespace, _owner_refs(owner), role, pods, plan_hash, pod, role)


def _worker_pod(
    name: str, spec: ExeGPTDeploymentSpec, role: str, gpus: int, plan_hash: str, image: str
) -> Obj:
    volumes, mounts = scratch_volumes(spec.model.weights)
    plan_vol, plan_mount = plan_volume(names.plan_configmap(name))
    port = spec.runner.port
    env = {"EXEGPT_PEERS_SERVICE": names.headless_service(name), "EXEGPT_PLAN_HASH": plan_hash}
    container: Obj = {
        "name": role,
        "image": image,
        "command": ["exegpt"],
        "args": serve_args(role, port),
        "env": base_env(env) + api_token_env(spec),
        "ports": [
            {"name": HTTP, "containerPort": port, "protocol": "TCP"},
            {
                "name": RENDEZVOUS,
                "containerPort": port + RENDEZVOUS_PORT_OFFSET,
                "protocol": "TCP",
            },
        ],
        **http_probes(),
        "resources": gpu_resources(gpus),
        "securityContext": restricted_container_security(),
        "volumeMounts": sorted([*mounts, plan_mount], key=lambda m: str(m["name"])),
    }
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": sorted([*volumes, plan_vol], key=lambda v: str(v["name"])),
        **placement(spec.hardware),
    }


# -- Services ------------------------------------------------------------------------------


def build_headless_service(name: str, namespace: str, owner: Mapping[str, Any]) -> Obj:
    """Headless Service ``<name>-stages`` over every worker, encoder and decoder pod of
    the deployment, ready or not (pipeline stages must find each other while starting):
    pod ``<statefulSet>-<o>`` resolves as ``<statefulSet>-<o>.<name>-stages``."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.headless_service(name), namespace, names.labels(name, names.PEERS), owner
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": _instance_selector(name),
        },
    }


def _instance_selector(name: str) -> dict[str, str]:
    """Every pod of one deployment, whatever its component. ``exegpt.dev/deployment``
    beside ``app.kubernetes.io/instance`` keeps out pods of a Helm release that happens
    to share the deployment's name."""
    return dict(sorted({names.LABEL_INSTANCE: name, names.LABEL_DEPLOYMENT: name}.items()))


def entry_role(plan: Planned) -> str:
    """The role that takes client requests: worker (RoundRobin), encoder (WorkloadAware),
    and on vLLM the router in front of WorkloadAware's prefill and decode servers."""
    if plan.engine == "vLLM" and plan.strategy == "WorkloadAware":
        return names.ROUTER
    return roles(plan)[0][0]


def build_client_service(
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    spec: ExeGPTDeploymentSpec,
    plan: Planned,
) -> Obj:
    """ClusterIP Service ``<name>`` on ``spec.runner.port`` (named http) over the pods
    that take requests (``entry_role``); ``status.endpoint`` is its URL."""
    selector = names.selector(name, entry_role(plan))
    port = spec.runner.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(
            names.client_service(name), namespace, names.labels(name, names.API), owner
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": dict(sorted(selector.items())),
            "ports": [{"name": HTTP, "port": port, "targetPort": HTTP, "protocol": "TCP"}],
        },
    }


# -- network policy and API token -----------------------------------------------------------


def _peer(pod_labels: Mapping[str, str] | None, namespace_labels: Mapping[str, str] | None) -> Obj:
    peer: Obj = {"podSelector": {"matchLabels": dict(sorted((pod_labels or {}).items()))}}
    if namespace_labels is not None:
        peer["namespaceSelector"] = {"matchLabels": dict(sorted(namespace_labels.items()))}
    return peer


def build_network_policy(
    name: str,
    namespace: str,
    owner: Mapping[str, Any],
    spec: ExeGPTDeploymentSpec,
    operator_namespace: str | None = None,
    operator_labels: Mapping[str, str] | None = None,
) -> Obj:
    """NetworkPolicy ``<name>-workers`` over every worker pod of the deployment:

    - from the deployment's own worker pods, every port (the rendezvous port, API port
      + 1, and the collective library's connections between a replica's processes);
    - to the API port, only from ``spec.runner.allowFrom`` (absent: the namespace's
      pods) and the operator's pods (``operator_namespace`` and ``operator_labels``, when
      given: the drift check reads ``/metrics``);
    - nothing else. An ingress rule with no peers would admit every source, so with no
      peer at all the API rule is left out.
    """
    own = {"matchLabels": dict(sorted({names.LABEL_DEPLOYMENT: name}.items()))}
    peers: list[Obj] = []
    if spec.runner.allow_from is None:
        peers.append(_peer({}, None))
    else:
        peers += [_peer(p.pod_labels, p.namespace_labels) for p in spec.runner.allow_from]
    if operator_namespace and operator_labels:
        peers.append(_peer(operator_labels, {"kubernetes.io/metadata.name": operator_namespace}))
    ingress: list[Obj] = [{"from": [{"podSelector": own}]}]
    if peers:
        api_port = {"port": spec.runner.port, "protocol": "TCP"}
        ingress.append({"from": peers, "ports": [api_port]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(
            names.network_policy(name), namespace, names.labels(name, names.API), owner
        ),
        "spec": {"podSelector": own, "policyTypes": ["Ingress"], "ingress": ingress},
    }


# -- the profiling Job's own access ------------------------------------------------------------


def build_profile_configmap(
    namespace: str, profile_key: str, profile_json: str | None = None
) -> Obj:
    """The shared profile ConfigMap. Empty (``profile_json`` None) as the operator
    creates it before the first Job: the Job may update this one ConfigMap only
    (``build_profiler_access``), and an RBAC rule cannot restrict ``create`` to a name,
    so the Job never creates it. With ``profile_json``, as the profiling Job writes it:
    the operator restores a deleted ConfigMap from its own copy."""
    obj: Obj = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            names.profile_configmap(profile_key),
            namespace,
            names.profile_labels(profile_key),
            None,
            {names.ANNOTATION_PROFILE_KEY: profile_key},
        ),
    }
    if profile_json is not None:
        obj["data"] = {PROFILE_DATA_KEY: profile_json}
    return obj


def build_profiler_access(
    namespace: str, profile_key: str, job: str, job_uid: str | None
) -> list[Obj]:
    """ServiceAccount, Role and RoleBinding ``<job>``: the profiling Job's pod may get,
    update and patch its profile ConfigMap and nothing else (``resourceNames``), so an
    image run by whoever may create a deployment cannot rewrite another profile or a
    plan. Owned by the Job (``job_uid``), so they go with it."""
    labels = names.profile_labels(profile_key)
    owner: list[Obj] = []
    if job_uid:
        owner = [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid}]

    def meta() -> Obj:
        out = _metadata(job, namespace, labels, None)
        if owner:
            out["ownerReferences"] = [dict(o) for o in owner]
        return out

    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [names.profile_configmap(profile_key)],
        "verbs": ["get", "update", "patch"],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(),
            "rules": [rule],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": job},
            "subjects": [{"kind": "ServiceAccount", "name": job, "namespace": namespace}],
        },
    ]
