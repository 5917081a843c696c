"""Editing the SLO replans from the cached profile, without profiling again, and rolls
the workers to the new plan; a bound no plan meets is reported, not retried."""

from __future__ import annotations

import json
from typing import Any

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, condition, is_condition, measured_profile

from exegpt.operator import names

pytestmark = pytest.mark.asyncio

MEASURED = {"profiling.mode": "Measured"}


def plan(cluster: Cluster, name: str = "x") -> dict[str, Any]:
    return dict(((cluster.deployment(name) or {}).get("status") or {}).get("plan") or {})


def plan_document(cluster: Cluster, name: str = "x") -> dict[str, Any]:
    cm = cluster.stored("v1", "configmaps", NAMESPACE, names.plan_configmap(name))
    assert cm is not None
    return dict(json.loads(cm["data"]["plan.json"]))


async def profiled_and_planned(cluster: Cluster, **overrides: Any) -> None:
    """Create ``x`` with a measured profile, play its profiling Job, wait for the plan."""
    body = deployment("x", **MEASURED, **overrides)
    await cluster.create(body)
    [job] = await cluster.wait_for(cluster.jobs)
    key, profile = measured_profile(body["spec"])
    await cluster.write_profile_configmap(NAMESPACE, names.profile_configmap(key), profile)
    await cluster.set_job_succeeded(NAMESPACE, job["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    await cluster.wait_for(cluster.statefulsets)


async def test_an_slo_edit_replans_without_a_job_and_rolls_the_workers(
    cluster: Cluster, operator: Operator
) -> None:
    await profiled_and_planned(cluster)
    before = plan(cluster)
    hashes = {s["metadata"]["name"]: s["metadata"]["annotations"] for s in cluster.statefulsets()}
    mark = cluster.mark()

    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "1.5s"}}})

    after = await cluster.wait_for(lambda: plan(cluster).get("latencyBoundSeconds") == 1.5)
    after = plan(cluster)
    assert after["inputsHash"] != before["inputsHash"]
    assert after["predicted"]["latencySeconds"] <= 1.5
    # A tighter bound takes a smaller encode batch here: the workers run a new plan.
    assert after["encodeBatch"] < before["encodeBatch"]
    assert after["hash"] != before["hash"]
    await cluster.wait_for(
        lambda: plan_document(cluster)["config"]["encode_batch"] == after["encodeBatch"]
    )
    await cluster.wait_for(
        lambda: all(
            s["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH] == after["hash"]
            for s in cluster.statefulsets()
        )
    )
    for sts in cluster.statefulsets():
        assert hashes[sts["metadata"]["name"]][names.ANNOTATION_PLAN_HASH] == before["hash"]
        [c] = sts["spec"]["template"]["spec"]["containers"]
        assert {"name": "EXEGPT_PLAN_HASH", "value": after["hash"]} in c["env"]
    x = cluster.deployment("x")
    assert x is not None and x["status"]["observedGeneration"] == 2
    assert condition(x, "Profiled")["reason"] == "ProfileCached"  # type: ignore[index]

    # From the cached profile: no Job created, none even listed; the workers are patched
    # in place (same names), never deleted and created again.
    calls = cluster.calls(mark)
    assert [c for c in calls if c.resource == "jobs"] == []
    worker_writes = {
        (c.verb, c.resource) for c in calls if c.resource == "statefulsets" and c.is_write
    }
    assert worker_writes == {("patch", "statefulsets")}


async def test_an_infeasible_slo_is_reported_and_the_workers_keep_their_plan(
    cluster: Cluster, operator: Operator
) -> None:
    await profiled_and_planned(cluster)
    before = plan(cluster)
    mark = cluster.mark()

    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "1ms"}}})

    planned = await cluster.wait_for(
        lambda: (
            (c := condition(cluster.deployment("x"), "Planned")) and c["status"] == "False" and c
        )
    )
    assert planned["reason"] == "Infeasible"
    assert "spec.slo.latency" in planned["message"]
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    assert status["infeasible"]["latencyBoundSeconds"] == 0.001
    assert status["infeasible"]["bestLatencySeconds"] > 0.001
    assert is_condition(cluster.deployment("x"), "Degraded")
    assert plan(cluster)["hash"] == before["hash"]
    # Not an error to retry: the operator settles, and the workers were never touched.
    await operator.settle("x")
    assert [c for c in cluster.writes_since(mark) if c.resource == "statefulsets"] == []


async def test_an_slo_no_plan_meets_at_creation_starts_no_workers(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x", **{"slo.latency": "1ms"}))

    planned = await cluster.wait_for(
        lambda: (c := condition(cluster.deployment("x"), "Planned")) and c
    )
    assert (planned["status"], planned["reason"]) == ("False", "Infeasible")
    assert "the lowest reachable is" in planned["message"]
    assert cluster.statefulsets() == [] and cluster.services() == []
    assert "plan" not in cluster.deployment("x")["status"]  # type: ignore[index]

    # Loosening the bound plans and starts the workers.
    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "3.1s"}}})
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    await cluster.wait_for(cluster.statefulsets)
    assert "infeasible" not in cluster.deployment("x")["status"]  # type: ignore[index]


async def test_a_strategy_switch_replaces_the_workers(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(deployment("x", strategy="WorkloadAware"))
    await cluster.wait_for(lambda: len(cluster.statefulsets()) == 2)
    api = await cluster.wait_for(lambda: cluster.stored("v1", "services", NAMESPACE, "x"))
    assert api is not None and api["spec"]["selector"][names.LABEL_COMPONENT] == "encoder"

    await cluster.patch_deployment("x", {"spec": {"strategy": "RoundRobin"}})

    await cluster.wait_for(
        lambda: [s["metadata"]["name"] for s in cluster.statefulsets()] == ["x-worker"]
    )
    await cluster.wait_for(lambda: plan(cluster)["strategy"] == "RoundRobin")
    api = await cluster.wait_for(
        lambda: (
            (s := cluster.stored("v1", "services", NAMESPACE, "x"))
            and s["spec"]["selector"][names.LABEL_COMPONENT] == "worker"
            and s
        )
    )
    deleted = {c.name for c in cluster.writes_since() if c.verb == "delete"}
    assert deleted == {"x-encoder", "x-decoder"}
    await operator.settle("x")


async def test_a_latency_margin_replans_under_the_rest_of_the_bound(
    cluster: Cluster, operator: Operator
) -> None:
    await profiled_and_planned(cluster)
    before = plan(cluster)
    assert before["latencyMargin"] == 0.1  # the default

    await cluster.patch_deployment("x", {"spec": {"slo": {"latencyMargin": 0.3}}})

    await cluster.wait_for(lambda: plan(cluster).get("latencyMargin") == 0.3)
    after = plan(cluster)
    assert after["inputsHash"] != before["inputsHash"]
    # the status keeps the user's bound; the plan is predicted within 70 % of it
    assert after["latencyBoundSeconds"] == before["latencyBoundSeconds"] == 3.1
    assert after["predicted"]["latencySeconds"] <= 0.7 * 3.1
    assert before["predicted"]["latencySeconds"] > 0.7 * 3.1


async def test_a_minimum_gain_replans_and_is_reported(cluster: Cluster, operator: Operator) -> None:
    await profiled_and_planned(cluster)
    before = plan(cluster)
    assert before["minGain"] == 0.1  # the default
    assert before["strategy"] == "RoundRobin"
    gain = before["predicted"]["throughputQps"] / before["baselines"]["Continuous"]["throughputQps"]
    assert 1.1 < gain < 2.0
    # A gain RoundRobin does not reach over continuous batching: that batching runs.
    await cluster.patch_deployment("x", {"spec": {"minGain": 1.0}})

    await cluster.wait_for(lambda: plan(cluster).get("minGain") == 1.0)
    after = plan(cluster)
    assert after["inputsHash"] != before["inputsHash"]
    assert after["strategy"] == "Continuous"
    assert after["predicted"] == before["baselines"]["Continuous"]
    assert f"reaches {gain:.2f}x its throughput" in after["reason"]
    assert "less than the 100% gain spec.minGain asks for" in after["reason"]
    assert after["hash"] != before["hash"]
