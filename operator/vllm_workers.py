"""The worker StatefulSets of a plan that vLLM executes (``plan.engine == "vLLM"``).

Each vLLM OpenAI server (``plandoc.vllm_servers``) is a ``worker`` pod, one per replica,
for RoundRobin, Static and Continuous; for WorkloadAware, ``encoder`` pods (the prefill
servers) and ``decoder`` pods (the decode servers), one each per replica, joined by a KV
connector, with ``router`` (``vllm-router --vllm-pd-disaggregation``) in front. A server
larger than a node adds its other nodes' pods in ``<role>-n`` (``vllm_nodes``). A
server's pod (node rank 0) runs ``python3 -m vllm.entrypoints.openai.api_server`` with
the arguments ``exegpt.planner.vllm_args.server_args`` renders from the plan
(parallelism, batch caps, the ExeGPT scheduler and its schedule, the KV connector), the
weights read-only from the PVC, a memory-backed ``/dev/shm``, vLLM's ``/health`` as its
probes, under the Pod Security Standards ``restricted`` profile. Pure functions;
docs/vllm.md.
"""

from __future__ import annotations

from typing import Any

from exegpt.planner.vllm_args import (
    MASTER_PORT,
    SERVER_MODULE,
    KvCache,
    KvTransfer,
    Role,
    server_args,
)
from exegpt.planner.workerplan import WorkerPlan

from . import names
from .plandoc import vllm_servers
from .podspec import (
    CACHE_DIR,
    HTTP,
    RENDEZVOUS,
    api_token_env,
    base_env,
    gpu_resources,
    placement,
    restricted_container_security,
    restricted_pod_security,
    scratch_volumes,
)
from .spec import ExeGPTDeploymentSpec
from .statefulset import worker_statefulset
from .vllm_nodes import node_probes, node_script, rank0_address

Obj = dict[str, Any]

TERMINATION_GRACE_SECONDS = 60
CONTAINER = "vllm"
ROUTER_IMAGE_COMMAND = "vllm-router"
SERVER_ROLES: dict[str, Role] = {
    names.WORKER: "server",
    names.ENCODER: "prefill",
    names.DECODER: "decode",
}
"""The vLLM server each StatefulSet of ``plandoc.roles`` runs."""
KV_CONNECTOR = "NixlConnector"
"""WorkloadAware's KV hand-over between GPUs (NIXL); on the CPU (tests and ``exegpt bench
vllm``), ``KvTransfer.shared_directory``."""


def vllm_args(
    doc: WorkerPlan,
    gpus_per_node: int,
    role: Role = "server",
    master_addr: str | None = None,
    node_rank: int | None = None,
) -> list[str]:
    """The arguments of the worker plan ``doc``'s ``role`` servers (after ``-m
    SERVER_MODULE``): everything comes from the plan document the operator writes into
    the plan ConfigMap, its KV capacity included (the decoding servers allocate the
    blocks the planner priced). A server over several nodes: rank 0 passes
    ``master_addr`` and ``node_rank`` 0, the other nodes neither (their start script
    appends theirs)."""
    weights = doc.model.weights
    if weights is None:
        raise ValueError("spec.model.weights: vLLM serves a checkpoint; give its PVC and path")
    kv = doc.capacity
    return server_args(
        doc,
        model_dir=weights.directory,
        served_model_name=doc.model.name,
        dtype=doc.model.dtype,
        max_input_tokens=doc.limits.maxInputTokens,
        max_output_tokens=doc.limits.maxOutputTokens,
        port=doc.runner.port,
        gpus_per_node=gpus_per_node,
        role=role,
        kv_cache=None if role == "prefill" else KvCache(kv.blocks, kv.block_size),
        kv_transfer=None if role == "server" else KvTransfer(KV_CONNECTOR),
        master_addr=master_addr,
        node_rank=node_rank,
    )


def router_args(name: str, pods: dict[str, int], port: int) -> list[str]:
    """``vllm-router`` in front of WorkloadAware's servers: every prefill (``encoder``)
    and decode (``decoder``) pod by its stable name on the headless Service."""
    service = names.headless_service(name)

    def urls(role: str) -> list[str]:
        sts = names.statefulset(name, role)
        return [f"http://{sts}-{o}.{service}:{port}" for o in range(pods[role])]

    args = ["--host", "0.0.0.0", "--port", str(port), "--vllm-pd-disaggregation"]
    for url in urls(names.ENCODER):
        args += ["--prefill", url]
    for url in urls(names.DECODER):
        args += ["--decode", url]
    return args


def vllm_probes() -> Obj:
    """vLLM's ``/health`` for readiness and liveness, and a startup probe that allows 30
    minutes for loading the model (and compiling) before liveness applies."""

    def get(period: int, failures: int) -> Obj:
        return {
            "failureThreshold": failures,
            "httpGet": {"path": "/health", "port": HTTP},
            "periodSeconds": period,
            "timeoutSeconds": 5,
        }

    return {
        "livenessProbe": get(10, 3),
        "readinessProbe": get(5, 3),
        "startupProbe": get(10, 180),
    }


def build_vllm_workers(
    name: str,
    namespace: str,
    owner_refs: list[Obj],
    spec: ExeGPTDeploymentSpec,
    plan: WorkerPlan,
    plan_hash: str,
    image: str,
) -> list[Obj]:
    """The StatefulSets of the worker plan ``plan``'s vLLM servers (and, for
    WorkloadAware, of the router): per role, its servers' rank-0 pods, and for servers
    that span nodes the other nodes' pods (``vllm_nodes``). The plan hash annotates each
    and its pod template (a new plan rolls them)."""
    out = []
    pods_of: dict[str, int] = {}
    gpus_per_node = spec.hardware.gpus_per_node
    port = spec.runner.port
    for role, servers, nodes, gpus in vllm_servers(plan, gpus_per_node):
        pods_of[role] = servers
        server = SERVER_ROLES[role]
        if nodes == 1:
            args = vllm_args(plan, gpus_per_node, server)
        else:
            args = vllm_args(plan, gpus_per_node, server, rank0_address(name), 0)
        rank0 = _server_container(spec, args, gpus, server, spans_nodes=nodes > 1)
        pod = _pod(spec, rank0, image, with_weights=True)
        out.append(
            worker_statefulset(
                name, namespace, owner_refs, role, servers, plan_hash, pod, CONTAINER
            )
        )
        if nodes > 1:
            node = _node_container(
                rank0,
                node_script(name, role, nodes, port),
                vllm_args(plan, gpus_per_node, server),
                node_probes(name, role, nodes, port),
            )
            pod = _pod(spec, node, image, with_weights=True)
            others, pods = names.nodes_of(role), servers * (nodes - 1)
            out.append(
                worker_statefulset(
                    name, namespace, owner_refs, others, pods, plan_hash, pod, CONTAINER
                )
            )
    if plan.strategy == "WorkloadAware":
        container = {
            "name": CONTAINER,
            "command": [ROUTER_IMAGE_COMMAND],
            "args": router_args(name, pods_of, port),
            "env": base_env({"XDG_CACHE_HOME": f"{CACHE_DIR}/.cache"}),
            "ports": [{"name": HTTP, "containerPort": port, "protocol": "TCP"}],
            **vllm_probes(),
            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            "securityContext": restricted_container_security(),
        }
        pod = _pod(spec, container, image, with_weights=False)
        out.append(
            worker_statefulset(
                name, namespace, owner_refs, names.ROUTER, 1, plan_hash, pod, CONTAINER
            )
        )
    return out


def _server_container(
    spec: ExeGPTDeploymentSpec, args: list[str], gpus: int, role: Role, *, spans_nodes: bool
) -> Obj:
    env = {
        # caches vLLM, torch.compile and Triton write (the root filesystem is read-only)
        "XDG_CACHE_HOME": f"{CACHE_DIR}/.cache",
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/.cache/vllm",
        "HF_HUB_OFFLINE": "1",
    }
    # the API key vLLM's server requires on /v1/* (spec.runner.apiKeySecret)
    variables = base_env(env) + api_token_env(spec, "VLLM_API_KEY")
    pod_ip = {"valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    if role != "server":  # NIXL's side channel: the address the other instance dials
        variables.append({"name": "VLLM_NIXL_SIDE_CHANNEL_HOST", **pod_ip})
    ports = [{"name": HTTP, "containerPort": spec.runner.port, "protocol": "TCP"}]
    if spans_nodes:
        # the address vLLM's message queues between nodes bind and announce; rank 0
        # also serves torch.distributed's store to the other nodes
        variables.append({"name": "VLLM_HOST_IP", **pod_ip})
        ports.append({"name": RENDEZVOUS, "containerPort": MASTER_PORT, "protocol": "TCP"})
    if role != "server" or spans_nodes:  # a one-node server's list stays as it was
        variables.sort(key=lambda v: str(v["name"]))
    return {
        "name": CONTAINER,
        "command": ["python3", "-m", SERVER_MODULE],
        "args": args,
        "env": variables,
        "ports": ports,
        **vllm_probes(),
        "resources": gpu_resources(gpus),
        "securityContext": restricted_container_security(),
    }


def _node_container(rank0: Obj, script: str, args: list[str], probes: Obj) -> Obj:
    """A pod of a server's other nodes: rank 0's container (image, environment, GPUs,
    security) without its API port and HTTP probes, running ``script`` (``sh -c script
    vllm args...``) with ``probes``."""
    kept = {k: v for k, v in rank0.items() if not k.endswith("Probe") and k != "ports"}
    return {**kept, "command": ["sh", "-c", script, "vllm"], "args": args, **probes}


def _pod(spec: ExeGPTDeploymentSpec, container: Obj, image: str, *, with_weights: bool) -> Obj:
    volumes, mounts = scratch_volumes(spec.model.weights if with_weights else None)
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": restricted_pod_security(),
        "containers": [{**container, "image": image, "volumeMounts": mounts}],
        "volumes": volumes,
        **placement(spec.hardware),
    }
