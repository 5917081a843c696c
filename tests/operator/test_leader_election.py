"""Two operators at once (``replicaCount: 2``): with peering (leader election) only one
handles deployments, so no write is doubled; when it stops, the other takes over and
handles the next edit.
Without peering both act on every deployment (the control case)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, is_condition

pytestmark = pytest.mark.asyncio

PEERING_NAME = "exegpt"

PEERING_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "kopfpeerings.kopf.dev"},
    "spec": {
        "group": "kopf.dev",
        "scope": "Namespaced",
        "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


async def install_peering(cluster: Cluster) -> None:
    """What the chart installs with replicaCount > 1: the CRD and the peering object."""
    await cluster.register_crd(PEERING_CRD)
    await cluster.create(
        {
            "apiVersion": "kopf.dev/v1",
            "kind": "KopfPeering",
            "metadata": {"name": PEERING_NAME, "namespace": NAMESPACE},
        }
    )


def passes(op: Operator) -> float:
    assert op.memo is not None
    return float(sum(op.memo.telemetry.passes.values.values()))


def creates(cluster: Cluster, since: int = 0) -> list[str]:
    """Every create request the operators sent (answered or refused), but Events."""
    return sorted(
        f"{c.resource}"
        for c in cluster.calls(since)
        if c.verb == "create" and c.resource != "events"
    )


async def test_with_peering_one_operator_acts_and_the_other_takes_over(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    await install_peering(cluster)
    leader = await start_operator(peering=True, peering_name=PEERING_NAME, peering_priority=200)
    standby = await start_operator(peering=True, peering_name=PEERING_NAME, peering_priority=100)
    await cluster.wait_for(lambda: passes(leader) == 0 and passes(standby) == 0, timeout=1.0)

    mark = cluster.mark()
    await cluster.create(deployment("x", strategy="RoundRobin"))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"), timeout=30)
    await leader.settle("x")

    # Every child created once, by one operator; the standby ran no pass at all.
    assert creates(cluster, mark) == sorted(
        ["configmaps", "networkpolicies", "services", "services", "statefulsets"]
    )
    # One status write per change: the standby's would come as a second set.
    status_writes = [c for c in cluster.writes_since(mark) if c.subresource == "status"]
    assert all(c.ok for c in status_writes)
    assert passes(leader) > 0
    assert passes(standby) == 0

    # The leader stops (an upgrade, a drained node): it removes itself from the peering
    # object, and the standby resumes and handles the next SLO edit.
    await leader.stop()
    await cluster.wait_for(
        lambda: passes(standby) > 0, timeout=15, what="the standby to resume after the leader"
    )
    # (The leader has stopped: only the standby can plan it.)
    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "1.5s"}}})
    await cluster.wait_for(
        lambda: (cluster.deployment("x") or {}).get("status", {}).get("observedGeneration") == 2,
        timeout=30,
        what="the standby to plan the edit",
    )
    plan = (cluster.deployment("x") or {})["status"]["plan"]
    assert plan["latencyBoundSeconds"] == 1.5


async def test_without_peering_both_operators_act(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    """The control: two standalone operators both run passes over one deployment (what
    the chart prevents with one replica and a Recreate strategy)."""
    one = await start_operator()
    two = await start_operator()
    await cluster.create(deployment("x", strategy="RoundRobin"))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"), timeout=30)
    await cluster.wait_for(lambda: passes(one) > 0 and passes(two) > 0, timeout=10)
