"""A write answered 409 or 500 is retried, and the deployment converges all the same."""

from __future__ import annotations

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, is_condition, rendered

pytestmark = pytest.mark.asyncio

# WorkloadAware: two worker StatefulSets (encoders and decoders) to write and retry.


async def converged(cluster: Cluster, operator: Operator, name: str = "x") -> None:
    """Wait for the plan and its worker StatefulSets, make them ready, wait for
    Available, and for the operator to stop writing."""
    await cluster.wait_for(lambda: is_condition(cluster.deployment(name), "Planned"))
    await cluster.wait_for(lambda: rendered(cluster, name))
    for sts in cluster.statefulsets():
        await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment(name), "Available"))
    await operator.settle(name)


@pytest.mark.parametrize(
    ("verb", "resource", "status", "times"),
    [
        ("create", "statefulsets", 500, 2),  # within the API client's own retries
        ("create", "statefulsets", 503, 6),  # past them: the handler is retried
        ("create", "services", 500, 1),
        ("create", "configmaps", 409, 1),  # "already exists": taken as created
        ("patch", "exegptdeployments/status", 409, 1),  # a conflicting status write
        ("patch", "exegptdeployments/status", 500, 6),
    ],
)
async def test_a_failed_write_is_retried_and_converges(
    cluster: Cluster, operator: Operator, verb: str, resource: str, status: int, times: int
) -> None:
    fault = cluster.fail(verb, resource, status=status, times=times)
    await cluster.create(deployment("x", strategy="WorkloadAware"))

    await converged(cluster, operator)
    assert fault.exhausted
    assert all(c.status == status for c in fault.hits)


async def test_a_lost_response_to_a_create_converges(cluster: Cluster, operator: Operator) -> None:
    # The StatefulSet is stored, but the operator sees a 500; its retry meets the stored
    # object (409 AlreadyExists) and takes it.
    fault = cluster.fail("create", "statefulsets", status=500, applied=True)
    await cluster.create(deployment("x", strategy="WorkloadAware"))

    await converged(cluster, operator)
    assert fault.exhausted
    assert rendered(cluster)


async def test_a_conflict_on_updating_a_worker_is_retried(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x", strategy="WorkloadAware"))
    await converged(cluster, operator)
    fault = cluster.fail("patch", "statefulsets", status=409, times=2)

    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "1.5s"}}})

    plan_hash = await cluster.wait_for(
        lambda: (
            (p := cluster.deployment("x")["status"]["plan"])["latencyBoundSeconds"] == 1.5  # type: ignore[index]
            and p["hash"]
        )
    )
    await cluster.wait_for(
        lambda: all(
            s["metadata"]["annotations"]["exegpt.dev/plan-hash"] == plan_hash
            for s in cluster.statefulsets()
        )
    )
    assert fault.exhausted
    await operator.settle("x")
