"""The worker StatefulSet of a plan that vLLM executes (``plan.engine == "vLLM"``).

Each replica is one vLLM OpenAI server in one pod (``plandoc.roles``): the pod runs
``python3 -m vllm.entrypoints.openai.api_server`` with the arguments
``exegpt.planner.vllm_args.server_args`` renders from the plan (parallelism, batch caps,
the ExeGPT scheduler and its schedule), the weights read-only from the PVC, a
memory-backed ``/dev/shm``, vLLM's ``/health`` as its probes, under the Pod Security
Standards ``restricted`` profile. Pure functions; docs/vllm.md.
"""

from __future__ import annotations

from typing import Any

from exegpt.planner.plan import Plan
from exegpt.planner.vllm_args import SERVER_MODULE, server_args

from . import names
from .plandoc import limits, roles
from .podspec import (
    CACHE_DIR,
    HTTP,
    base_env,
    gpu_resources,
    placement,
    restricted_container_security,
    restricted_pod_security,
    scratch_volumes,
    weights_directory,
)
from .spec import ExeGPTDeploymentSpec

Obj = dict[str, Any]

TERMINATION_GRACE_SECONDS = 60
CONTAINER = "vllm"


def vllm_args(spec: ExeGPTDeploymentSpec, plan: Plan) -> list[str]:
    """The server arguments of every pod of ``plan`` (after ``-m SERVER_MODULE``)."""
    if spec.model.weights is None:
        raise ValueError("spec.model.weights: vLLM serves a checkpoint; give its PVC and path")
    architecture = spec.model.resolved_architecture()
    lengths = limits(spec)
    return server_args(
        plan,
        model_dir=weights_directory(spec.model.weights),
        served_model_name=spec.model.name or architecture.name,
        dtype=spec.model.dtype,
        max_input_tokens=lengths["maxInputTokens"],
        max_output_tokens=lengths["maxOutputTokens"],
        port=spec.runner.port,
        gpus_per_node=spec.hardware.gpus_per_node,
    )


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
    plan: Plan,
    plan_hash: str,
    image: str,
) -> list[Obj]:
    """The StatefulSet ``<name>-worker`` of vLLM servers, one pod per replica. The plan
    hash annotates it and its pod template (a new plan rolls the pods)."""
    args = vllm_args(spec, plan)
    out = []
    for role, pods, _nodes, gpus in roles(plan):
        labels = names.labels(name, role)
        hashed = {names.ANNOTATION_PLAN_HASH: plan_hash}
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {
                    "name": names.statefulset(name, role),
                    "namespace": namespace,
                    "labels": dict(sorted(labels.items())),
                    "annotations": hashed,
                    "ownerReferences": owner_refs,
                },
                "spec": {
                    "replicas": pods,
                    "serviceName": names.headless_service(name),
                    "podManagementPolicy": "Parallel",
                    "selector": {"matchLabels": dict(sorted(names.selector(name, role).items()))},
                    "template": {
                        "metadata": {
                            "labels": dict(sorted(labels.items())),
                            "annotations": dict(
                                sorted(
                                    {
                                        **hashed,
                                        "kubectl.kubernetes.io/default-container": CONTAINER,
                                    }.items()
                                )
                            ),
                        },
                        "spec": _pod(spec, args, gpus, image),
                    },
                },
            }
        )
    return out


def _pod(spec: ExeGPTDeploymentSpec, args: list[str], gpus: int, image: str) -> Obj:
    volumes, mounts = scratch_volumes(spec.model.weights)
    env = {
        # caches vLLM, torch.compile and Triton write (the root filesystem is read-only)
        "XDG_CACHE_HOME": f"{CACHE_DIR}/.cache",
        "VLLM_CACHE_ROOT": f"{CACHE_DIR}/.cache/vllm",
        "HF_HUB_OFFLINE": "1",
    }
    container: Obj = {
        "name": CONTAINER,
        "image": image,
        "command": ["python3", "-m", SERVER_MODULE],
        "args": args,
        "env": base_env(env),
        "ports": [{"name": HTTP, "containerPort": spec.runner.port, "protocol": "TCP"}],
        **vllm_probes(),
        "resources": gpu_resources(gpus),
        "securityContext": restricted_container_security(),
        "volumeMounts": mounts,
    }
    return {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
        **placement(spec.hardware),
    }
