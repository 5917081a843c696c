"""Creating an ExeGPTDeployment: profile (a Job, or the analytic model), plan, workers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from builders import deployment
from harness import (
    EXEGPT,
    NAMESPACE,
    Cluster,
    Operator,
    condition,
    expected_roles,
    is_condition,
    measured_profile,
)

from exegpt.operator import names

pytestmark = pytest.mark.asyncio

MEASURED = {"profiling.mode": "Measured"}


def owner_of(uid: str, name: str = "x") -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": EXEGPT,
            "kind": "ExeGPTDeployment",
            "name": name,
            "uid": uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def container(sts: dict[str, Any]) -> dict[str, Any]:
    [c] = sts["spec"]["template"]["spec"]["containers"]
    return dict(c)


async def test_a_measured_deployment_is_profiled_planned_and_served(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **MEASURED)
    uid = (await cluster.create(body))["metadata"]["uid"]

    # 1. A profiling Job for the model, GPU type and dtype; the deployment waits for it.
    [job] = await cluster.wait_for(cluster.jobs)
    key, profile = measured_profile(body["spec"])
    cm_name = names.profile_configmap(key)
    assert job["metadata"]["name"] == names.profile_job(key, 1)
    assert "ownerReferences" not in job["metadata"]  # shared by every deployment of the model
    assert cm_name in job["spec"]["template"]["spec"]["containers"][0]["args"]
    x = await cluster.wait_for(lambda: condition(cluster.deployment("x"), "Profiled"))
    assert (x["status"], x["reason"]) == ("False", "Profiling")
    assert cluster.statefulsets() == []

    # 2. The Job runs: its container writes the profile, the Job controller completes it.
    await cluster.write_profile_configmap(NAMESPACE, cm_name, profile)
    await cluster.set_job_succeeded(NAMESPACE, job["metadata"]["name"])

    # 3. The plan, in status and in the plan ConfigMap, from the measured profile.
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    assert condition(cluster.deployment("x"), "Profiled") == {
        **condition(cluster.deployment("x"), "Profiled"),  # type: ignore[dict-item]
        "status": "True",
        "reason": "ProfileCached",
    }
    assert status["profile"]["source"] == "measured"
    assert status["profile"]["configMap"] == cm_name
    plan = status["plan"]
    assert plan["latencyBoundSeconds"] == 3.1
    assert 0 < plan["predicted"]["latencySeconds"] <= 3.1
    assert plan["predicted"]["throughputQps"] > 0
    assert status["endpoint"] == "http://x.default.svc:8000"
    assert status["observedGeneration"] == 1

    # 4. Children, each owned by the deployment, rendered from the plan.
    await cluster.wait_for(
        lambda: len(cluster.statefulsets()) == len(expected_roles(plan)) and cluster.services()
    )
    plan_cm = cluster.stored("v1", "configmaps", NAMESPACE, names.plan_configmap("x"))
    assert plan_cm is not None
    doc = json.loads(plan_cm["data"]["plan.json"])
    assert doc["strategy"] == plan["strategy"]
    assert doc["config"]["encode_batch"] == plan["encodeBatch"]
    assert doc["config"]["decode_batch"] == plan["decodeBatch"]
    assert doc["config"]["tensor_parallel"] == plan["tensorParallel"]
    assert plan_cm["data"]["plan-hash"] == plan["hash"]

    children = [plan_cm, *cluster.statefulsets(), *cluster.services()]
    for child in children:
        assert child["metadata"]["ownerReferences"] == owner_of(uid), child["metadata"]["name"]

    roles = expected_roles(plan)
    assert sum(pods * gpus for pods, gpus in roles.values()) <= 8
    for sts in cluster.statefulsets():
        role = sts["metadata"]["name"].removeprefix("x-")
        pods, gpus = roles[role]
        c = container(sts)
        assert sts["spec"]["replicas"] == pods
        assert sts["spec"]["serviceName"] == names.headless_service("x")
        assert c["args"] == [
            "serve",
            "--plan",
            "/etc/exegpt/plan/plan.json",
            "--role",
            role,
            "--port",
            "8000",
        ]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        assert {"name": "EXEGPT_PLAN_HASH", "value": plan["hash"]} in c["env"]
        assert sts["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH] == plan["hash"]
        assert c["image"] == operator.config.runtime_image

    api = cluster.stored("v1", "services", NAMESPACE, "x")
    assert api is not None
    entry = "worker" if plan["strategy"] == "RoundRobin" else "encoder"
    assert api["spec"]["selector"][names.LABEL_COMPONENT] == entry
    assert api["spec"]["ports"][0]["port"] == 8000
    headless = cluster.stored("v1", "services", NAMESPACE, names.headless_service("x"))
    assert headless is not None and headless["spec"]["clusterIP"] == "None"
    assert is_condition(cluster.deployment("x"), "Available", "False")

    # 5. The StatefulSet controller reports the pods ready: the deployment is Available.
    for sts in cluster.statefulsets():
        await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    done = cluster.deployment("x")
    assert done is not None
    assert condition(done, "Progressing")["reason"] == "Converged"  # type: ignore[index]
    assert is_condition(done, "Degraded", "False")
    pods = sum(p for p, _ in roles.values())
    assert done["status"]["pods"] == {"desired": pods, "ready": pods}

    # One Job, and each child created once (a concurrent pass's create that met the
    # existing object, 409, created nothing).
    creates = [c for c in cluster.writes_since() if c.verb == "create" and c.ok]
    creates = [c for c in creates if c.resource != "events"]
    assert sorted(c.resource for c in creates) == sorted(
        ["jobs", "configmaps", "services", "services", "networkpolicies"]
        + ["configmaps", "serviceaccounts", "roles", "rolebindings"]  # the Job's access
        + ["statefulsets"] * len(roles)
    )


async def test_an_analytic_deployment_plans_at_once_without_a_job(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x", strategy="RoundRobin"))

    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "Analytic"  # type: ignore[index]
    assert status["profile"]["source"] == "analytic"
    assert status["plan"]["strategy"] == "RoundRobin"
    [sts] = await cluster.wait_for(cluster.statefulsets)
    assert sts["metadata"]["name"] == "x-worker"
    assert sts["spec"]["replicas"] == expected_roles(status["plan"])["worker"][0]
    assert cluster.jobs() == []
    assert not any(c.resource == "jobs" for c in cluster.calls())
