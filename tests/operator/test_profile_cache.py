"""A measured profile is cached per model, GPU type and dtype, and shared: deployments
of the same model in a namespace run one profiling Job between them."""

from __future__ import annotations

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, condition, is_condition, measured_profile

from exegpt.operator import names

pytestmark = pytest.mark.asyncio

MEASURED = {"profiling.mode": "Measured"}


async def test_two_deployments_of_one_model_share_one_profiling_job(
    cluster: Cluster, operator: Operator
) -> None:
    a = deployment("a", **MEASURED)
    b = deployment("b", **MEASURED, **{"slo.latency": "6s"})  # another SLO, same profile
    await cluster.create(a)
    await cluster.create(b)
    key, profile = measured_profile(a["spec"])
    assert measured_profile(b["spec"])[0] == key

    [job] = await cluster.wait_for(cluster.jobs)
    for name in ("a", "b"):
        await cluster.wait_for(
            lambda name=name: condition(cluster.deployment(name), "Profiled")  # type: ignore[misc]
        )
        assert cluster.deployment(name)["status"]["profile"]["job"] == job["metadata"]["name"]  # type: ignore[index]
    await cluster.write_profile_configmap(NAMESPACE, names.profile_configmap(key), profile)
    await cluster.set_job_succeeded(NAMESPACE, job["metadata"]["name"])

    for name in ("a", "b"):
        await cluster.wait_for(lambda name=name: is_condition(cluster.deployment(name), "Planned"))  # type: ignore[misc]
        status = cluster.deployment(name)["status"]  # type: ignore[index]
        assert status["profile"]["configMap"] == names.profile_configmap(key)
        assert condition(cluster.deployment(name), "Profiled")["reason"] == "ProfileCached"  # type: ignore[index]
    assert len(cluster.jobs()) == 1
    assert len([c for c in cluster.writes_since() if c.resource == "jobs" and c.ok]) == 1
    # Each deployment plans for its own SLO from the one profile.
    plans = [cluster.deployment(n)["status"]["plan"] for n in ("a", "b")]  # type: ignore[index]
    assert [p["latencyBoundSeconds"] for p in plans] == [3.1, 6.0]


async def test_a_deployment_created_after_the_profile_uses_the_cache(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **MEASURED)
    key, profile = measured_profile(body["spec"])
    await cluster.write_profile_configmap(NAMESPACE, names.profile_configmap(key), profile)

    await cluster.create(body)

    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "ProfileCached"  # type: ignore[index]
    assert cluster.jobs() == []
    assert not any(c.resource == "jobs" for c in cluster.calls())


async def test_another_gpu_type_is_profiled_separately(
    cluster: Cluster, operator: Operator
) -> None:
    a = deployment("a", **MEASURED)
    b = deployment("b", **MEASURED, **{"hardware.gpuType": "nvidia-h100-80gb"})
    await cluster.create(a)
    await cluster.create(b)

    await cluster.wait_for(lambda: len(cluster.jobs()) == 2)
    jobs = cluster.jobs()
    keys = {measured_profile(a["spec"])[0], measured_profile(b["spec"])[0]}
    assert {j["metadata"]["name"] for j in jobs} == {names.profile_job(k, 1) for k in keys}
