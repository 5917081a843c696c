"""The operator killed or restarted at any point picks up where it was: no duplicate
children, and a converged deployment costs only reads."""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pytest
from builders import deployment
from harness import (
    NAMESPACE,
    Cluster,
    Operator,
    condition,
    exegpt_operator,
    is_condition,
    measured_profile,
    rendered,
)

from exegpt.operator import names

pytestmark = pytest.mark.asyncio

# The rollouts below plan WorkloadAware: two worker StatefulSets (encoders, decoders).


async def test_killing_the_operator_mid_profiling_creates_no_second_job(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **{"profiling.mode": "Measured"})
    await cluster.create(body)
    key, profile = measured_profile(body["spec"])
    [job] = await cluster.wait_for(cluster.jobs)

    await operator.kill()  # as a crash or SIGKILL: handlers cut off wherever they are
    mark = cluster.mark()
    await operator.start()

    # The restarted operator finds the running Job and waits for it.
    await operator.wait_runs("converge", "x", 2)
    assert [c for c in cluster.writes_since(mark) if c.resource == "jobs"] == []
    assert [j["metadata"]["name"] for j in cluster.jobs()] == [names.profile_job(key, 1)]
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "Profiling"  # type: ignore[index]

    # And goes on once the Job is done.
    await cluster.write_profile_configmap(NAMESPACE, names.profile_configmap(key), profile)
    await cluster.set_job_succeeded(NAMESPACE, job["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    assert len(cluster.jobs()) == 1


async def test_killing_the_operator_mid_rollout_creates_no_duplicates(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x", strategy="WorkloadAware"))
    await cluster.wait_for_call("create", "statefulsets")  # the first child is being made

    await operator.kill()
    await operator.start()

    await cluster.wait_for(lambda: rendered(cluster))
    await operator.settle("x")
    created = [c for c in cluster.writes_since() if c.verb == "create" and c.ok]
    by_name = [
        f"{c.resource}/{c.body['metadata']['name']}" for c in created if c.resource != "events"
    ]
    assert sorted(by_name) == sorted(set(by_name))  # each child created once


async def test_restarting_a_converged_deployment_writes_nothing(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x"))
    await cluster.wait_for(lambda: rendered(cluster))
    for sts in cluster.statefulsets():
        await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    await operator.settle("x")

    await operator.stop()
    mark = cluster.mark()
    await operator.start()

    # The restarted operator resumes the deployment (a full pass) and keeps checking it.
    await operator.wait_runs("resume", "x")
    await operator.wait_runs("converge", "x", 2)
    calls = cluster.calls(mark)
    assert {c.resource for c in calls if c.verb in ("get", "list")} >= {"statefulsets", "services"}
    assert [str(c) for c in calls if c.is_write] == []


async def test_a_job_created_just_before_a_crash_is_found_again(
    cluster: Cluster, operator: Operator
) -> None:
    # The Job is created, but the status that records it never lands before the crash.
    lost = cluster.fail("patch", "exegptdeployments/status", status=503, times=10_000)
    await cluster.create(deployment("x", **{"profiling.mode": "Measured"}))
    await cluster.wait_for(cluster.jobs)
    await cluster.wait_for(lambda: lost.hits)
    await operator.kill()
    lost.clear()
    assert "profile" not in (cluster.deployment("x") or {}).get("status", {})

    mark = cluster.mark()
    await operator.start()
    await operator.wait_runs("converge", "x", 2)
    assert [c for c in cluster.writes_since(mark) if c.resource == "jobs"] == []
    assert len(cluster.jobs()) == 1
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "Profiling"  # type: ignore[index]


async def test_stopping_the_operator_lets_the_pass_in_flight_finish(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    operator = exegpt_operator(cluster)
    registry_of = operator.registry_factory

    def as_deployed() -> kopf.OperatorRegistry:
        registry = registry_of()

        @kopf.on.startup(registry=registry)
        def kopf_defaults(settings: kopf.OperatorSettings, **_: Any) -> None:
            # As the operator runs: at exit, kopf leaves a timer that is in the middle of
            # its pass running (the harness makes kopf wait for it).
            settings.background.instant_exit_timeout = None

        return registry

    operator.registry_factory = as_deployed
    async with operator:
        await cluster.create(deployment("x"))
        await cluster.wait_for(lambda: rendered(cluster))
        await operator.settle("x")
        plan = names.plan_configmap("x")
        # The next periodic pass finds the plan ConfigMap gone (after a slow read) and
        # plans again on the planner threads: it is still reading when the operator stops.
        cluster.fail("get", "configmaps", status=0, delay=1.0, name=plan)
        mark = cluster.mark()
        await cluster.delete("v1", "configmaps", NAMESPACE, plan)
        await cluster.wait_for_call("get", "configmaps", name=plan, since=mark)
        caplog.set_level(logging.INFO)

    # The pass finished (the ConfigMap is back) before the client and threads closed:
    # no "cannot schedule new futures after shutdown", no pass cut short.
    assert any(c["metadata"]["name"] == plan for c in cluster.configmaps())
    noisy = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [m for m in noisy if "after shutdown" in m or "cut short" in m], noisy
