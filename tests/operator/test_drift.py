"""Drift replanning through the running operator: the workers' length histograms drift
from the planned workload, and the operator plans again for what it observed and rolls
the workers; unreadable metrics are reported, never retried in a loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from builders import FakeMetrics, deployment, metrics_text
from harness import (
    Clock,
    Cluster,
    Operator,
    condition,
    is_condition,
    ready_worker_pods,
)

from exegpt.operator import names

pytestmark = pytest.mark.asyncio

INTERVAL = 300  # drift.intervalSeconds' default
# Summarization plans prompts of at most 512 tokens and outputs of at most 80.
DRIFTED = ({100: 1500}, {10: 1500})  # short chat against summarization's plan


def status(cluster: Cluster) -> dict[str, Any]:
    return dict((cluster.deployment("x") or {}).get("status") or {})


async def ready_workers(cluster: Cluster) -> list[str]:
    """Play the StatefulSet controller and the kubelet for every worker pod; return the
    replica drivers' pod names."""
    plan = status(cluster)["plan"]
    await ready_worker_pods(cluster, "x")
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    stages = plan["pipelineStages"]
    return [f"x-worker-{r * stages}" for r in range(plan["replicas"])]


async def started(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]], **overrides: Any
) -> tuple[Operator, FakeMetrics, Clock, list[str]]:
    metrics, clock = FakeMetrics(), Clock()
    operator = await start_operator(metrics=metrics, clock=clock)
    await cluster.create(deployment("x", strategy="RoundRobin", **overrides))
    await cluster.wait_for(lambda: "plan" in status(cluster) and cluster.statefulsets())
    drivers = await ready_workers(cluster)
    # Settled: the counters' start (Available's transition) is recorded before the clock moves.
    await operator.settle("x")
    return operator, metrics, clock, drivers


async def test_drifted_traffic_replans_and_rolls_the_workers(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    operator, metrics, clock, drivers = await started(cluster, start_operator)
    before = status(cluster)["plan"]
    for pod in drivers:
        metrics.texts[pod] = metrics_text(*DRIFTED)
    mark = cluster.mark()

    clock.now += INTERVAL

    await cluster.wait_for(lambda: status(cluster).get("workload", {}).get("source") == "Observed")
    after = await cluster.wait_for(
        lambda: (p := status(cluster)["plan"])["inputsHash"] != before["inputsHash"] and p
    )
    workload = status(cluster)["workload"]
    assert workload["observed"]["input"]["edges"] == [92, 109, 512, 513]
    assert workload["observed"]["output"]["edges"] == [9, 11, 80, 81]
    drift = condition(cluster.deployment("x"), "WorkloadDrift")
    assert drift is not None and (drift["status"], drift["reason"]) == ("True", "Replanned")
    # The workers roll to the new plan: its hash is in their pod template.
    await cluster.wait_for(
        lambda: all(
            s["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH]
            == after["hash"]
            for s in cluster.statefulsets()
        )
    )
    assert after["hash"] != before["hash"]
    events = await cluster.wait_for(
        lambda: (
            {c.body["reason"] for c in cluster.calls(mark) if c.resource == "events"}
            >= {"WorkloadDrifted", "Replanned"}
        )
    )
    assert events
    pod_reads = [c for c in cluster.calls(mark) if c.resource == "pods"]
    assert pod_reads and {c.verb for c in pod_reads} == {"list"}
    # Passes after it keep the observed workload: no replan again.
    await operator.settle("x")
    assert status(cluster)["plan"]["inputsHash"] == after["inputsHash"]


async def test_unreadable_metrics_are_unknown_and_not_retried_in_a_loop(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    operator, metrics, clock, _ = await started(cluster, start_operator)
    before = status(cluster)["plan"]

    clock.now += INTERVAL  # no driver answers

    drift = await cluster.wait_for(lambda: condition(cluster.deployment("x"), "WorkloadDrift"))
    assert (drift["status"], drift["reason"]) == ("Unknown", "MetricsUnavailable")
    reads = len(metrics.reads)
    await operator.settle("x")
    assert len(metrics.reads) == reads  # the next read waits for drift.intervalSeconds
    assert status(cluster)["plan"] == before
    assert is_condition(cluster.deployment("x"), "Available")


async def test_observe_mode_only_reports(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    operator, metrics, clock, drivers = await started(
        cluster, start_operator, **{"drift.mode": "Observe"}
    )
    before = status(cluster)["plan"]
    for pod in drivers:
        metrics.texts[pod] = metrics_text(*DRIFTED)
    mark = cluster.mark()

    clock.now += INTERVAL

    drift = await cluster.wait_for(lambda: condition(cluster.deployment("x"), "WorkloadDrift"))
    assert (drift["status"], drift["reason"]) == ("True", "Drifted")
    await operator.settle("x")
    assert status(cluster)["plan"] == before
    assert [c for c in cluster.writes_since(mark) if c.resource == "statefulsets"] == []


async def test_a_spec_workload_edit_wins_over_the_observed_workload(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    _, metrics, clock, drivers = await started(cluster, start_operator)
    declared = status(cluster)["plan"]["inputsHash"]
    for pod in drivers:
        metrics.texts[pod] = metrics_text(*DRIFTED)
    clock.now += INTERVAL
    await cluster.wait_for(lambda: status(cluster).get("workload", {}).get("source") == "Observed")
    observed = await cluster.wait_for(
        lambda: (h := status(cluster)["plan"]["inputsHash"]) != declared and h
    )

    await cluster.patch_deployment("x", {"spec": {"workload": {"preset": "translation"}}})

    await cluster.wait_for(
        lambda: (
            status(cluster).get("observedGeneration") == 2
            and status(cluster)["workload"]["source"] == "Spec"
        )
    )
    x = cluster.deployment("x")
    assert x is not None and "observed" not in x["status"]["workload"]
    assert condition(x, "WorkloadDrift") is None
    assert x["status"]["plan"]["inputsHash"] not in (declared, observed)
