"""What the operator creates in a cluster, besides what the chart installs: every
manifest its builders render (plan ConfigMap, worker StatefulSets, Services, profiling
Job) matches the official Kubernetes schemas, and every pod template meets the
``restricted`` profile with a read-only root filesystem."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from exegpt.operator import builders, plandoc
from exegpt.operator.podspec import pod_spec_of, restricted_violations
from exegpt.operator.request import plan_request
from exegpt.operator.spec import ExeGPTDeploymentSpec, parse_manifest
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.plan import Plan
from exegpt.planner.profile import MEASURED_PROFILER_VERSION, profile_key
from exegpt.planner.scheduler import schedule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMESPACE = "serving"
IMAGE = "ghcr.io/exegpt/exegpt-runtime:0.1.0"
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
# One example per allocation strategy, one with weights on a PVC and placement, and one on
# vLLM whose servers span nodes.
CASES: dict[str, dict[str, Any]] = {
    "gpt3-175b-code.yaml": {
        "engine": "vLLM",
        "model": {"weights": {"pvc": "models", "path": "/gpt3-175b"}},
    },
    "opt-13b-summarization.yaml": {},
    "llama-3-8b-chat.yaml": {"strategy": "RoundRobin"},
    "gpt3-39b-conversation.yaml": {
        "model": {"weights": {"pvc": "models", "path": "/gpt3-39b"}},
        "hardware": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    },
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both else value
    return out


@functools.cache
def planned(example: str) -> tuple[str, ExeGPTDeploymentSpec, Plan]:
    manifest = yaml.safe_load((EXAMPLES / example).read_text())
    manifest["spec"] = merge(manifest["spec"], CASES[example])
    spec = parse_manifest(manifest).spec
    request = plan_request(spec)
    plan = schedule(request, analytic_profile(request.architecture, request.gpu))
    assert isinstance(plan, Plan), f"{example}: {plan}"
    return str(manifest["metadata"]["name"]), spec, plan


@functools.cache
def manifests(example: str) -> tuple[dict[str, Any], ...]:
    """Every object the operator creates for the example (the reconciler's builders)."""
    name, spec, plan = planned(example)
    owner = builders.owner_reference(
        {"name": name, "namespace": NAMESPACE, "uid": "0b7c5e8e-1111-2222-3333-444455556666"}
    )
    doc = plandoc.plan_document(name, spec, plan)
    digest = plandoc.plan_hash(doc)
    key = profile_key(
        spec.model.resolved_architecture(),
        spec.hardware.gpu_type,
        spec.model.dtype,
        MEASURED_PROFILER_VERSION,
    )
    return (
        builders.build_plan_configmap(name, NAMESPACE, owner, doc, digest),
        *builders.build_workers(name, NAMESPACE, owner, spec, doc, digest, IMAGE),
        builders.build_headless_service(name, NAMESPACE, owner),
        builders.build_client_service(name, NAMESPACE, owner, spec, plan),
        builders.build_profile_job(NAMESPACE, spec, key, 1, IMAGE, "exegpt-profiler", 7200.0),
    )


def test_both_strategies_are_covered() -> None:
    # both ExeGPT schedules' workers are among the examples (an Auto plan may also be
    # a baseline: stock vLLM where no ExeGPT schedule beats it)
    strategies = {planned(example)[2].strategy for example in CASES}
    assert {"RoundRobin", "WorkloadAware"} <= strategies


def test_a_vllm_server_over_several_nodes_is_covered() -> None:
    name, _, plan = planned("gpt3-175b-code.yaml")
    assert plan.engine == "vLLM"
    sets = {o["metadata"]["name"] for o in manifests("gpt3-175b-code.yaml")
            if o["kind"] == "StatefulSet"}  # fmt: skip
    assert sets == {f"{name}-worker", f"{name}-worker-n"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("example", sorted(CASES))
def test_manifests_match_the_kubernetes_schemas(example: str, version: str) -> None:
    for obj in manifests(example):
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: at {where}: {exc.message}")


@pytest.mark.parametrize("example", sorted(CASES))
def test_every_pod_template_is_restricted(example: str) -> None:
    pods = [pod for pod in map(pod_spec_of, manifests(example)) if pod is not None]
    assert len(pods) >= 2  # the workers and the profiling Job
    for pod in pods:
        assert restricted_violations(pod) == []
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/tmp"] in writable
