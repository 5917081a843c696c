"""A profiling Job that fails is retried with a new Job, a bounded number of times."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, condition, is_condition, measured_profile

from exegpt.operator import names

pytestmark = pytest.mark.asyncio


def profiled_reason(cluster: Cluster) -> str | None:
    cond = condition(cluster.deployment("x"), "Profiled")
    return None if cond is None else str(cond["reason"])


def job_names(cluster: Cluster) -> list[str]:
    return [j["metadata"]["name"] for j in cluster.jobs()]


async def test_a_failing_profiling_job_ends_in_bounded_retries(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **{"profiling.mode": "Measured", "profiling.maxRetries": 2})
    await cluster.create(body)
    key, _ = measured_profile(body["spec"])

    # Every attempt fails: attempt n+1 is a new Job, until maxRetries retries are spent.
    for attempt in (1, 2, 3):
        job = names.profile_job(key, attempt)
        await cluster.wait_for(lambda job=job: job in job_names(cluster))  # type: ignore[misc]
        await cluster.set_job_failed(NAMESPACE, job)

    await cluster.wait_for(lambda: profiled_reason(cluster) == "ProfilingFailed")
    profiled = condition(cluster.deployment("x"), "Profiled")
    assert profiled is not None
    assert (profiled["status"], profiled["reason"]) == ("False", "ProfilingFailed")
    assert "3 profiling Jobs failed" in profiled["message"]
    assert "spec.profiling.maxRetries" in profiled["message"]
    x = cluster.deployment("x")
    assert is_condition(x, "Degraded")
    assert is_condition(x, "Progressing", "False")
    assert x["status"]["profile"]["attempts"] == 3  # type: ignore[index]

    # Given up: the failure is recorded on the profile ConfigMap and the failed Jobs are
    # deleted with their pods; no fourth Job, no workers, and later passes write nothing.
    await operator.settle("x")
    cm = await cluster.get("v1", "configmaps", NAMESPACE, names.profile_configmap(key))
    assert cm is not None
    annotations = cm["metadata"]["annotations"]
    assert "3 profiling Jobs failed" in annotations[names.ANNOTATION_PROFILING_FAILED]
    assert "data" not in cm or "profile.json" not in cm["data"]
    assert job_names(cluster) == []
    job_writes = [c for c in cluster.writes_since() if c.resource == "jobs" and c.ok]
    assert sorted((c.verb, c.name) for c in job_writes) == sorted(
        [("create", None)] * 3 + [("delete", names.profile_job(key, n)) for n in (1, 2, 3)]
    )
    assert cluster.statefulsets() == []
    x = cluster.deployment("x")
    assert x["status"]["profile"]["attempts"] == 3  # type: ignore[index]


async def test_a_retry_that_succeeds_goes_on_to_plan(cluster: Cluster, operator: Operator) -> None:
    body = deployment("x", **{"profiling.mode": "Measured"})
    await cluster.create(body)
    key, profile = measured_profile(body["spec"])

    first = names.profile_job(key, 1)
    await cluster.wait_for(lambda: first in job_names(cluster))
    await cluster.set_job_failed(NAMESPACE, first, reason="DeadlineExceeded")
    second = names.profile_job(key, 2)
    await cluster.wait_for(lambda: second in job_names(cluster))
    await cluster.write_profile_configmap(NAMESPACE, names.profile_configmap(key), profile)
    await cluster.set_job_succeeded(NAMESPACE, second)

    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "ProfileCached"  # type: ignore[index]
    assert job_names(cluster) == [first, second]


async def test_the_next_attempt_waits_for_the_backoff(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    operator = await start_operator(retry_backoff_seconds=3600.0, retry_backoff_max_seconds=3600.0)
    body = deployment("x", **{"profiling.mode": "Measured"})
    await cluster.create(body)
    key, _ = measured_profile(body["spec"])
    first = names.profile_job(key, 1)
    await cluster.wait_for(lambda: first in job_names(cluster))
    await cluster.set_job_failed(NAMESPACE, first)

    await cluster.wait_for(lambda: profiled_reason(cluster) == "ProfilingRetrying")
    retrying = condition(cluster.deployment("x"), "Profiled")
    assert retrying is not None
    assert "attempt 2 at " in retrying["message"]
    await operator.settle("x")
    assert job_names(cluster) == [first]
