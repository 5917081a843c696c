"""The operator stays up when what it talks to misbehaves: workers answering garbage or
byte by byte, API calls that hang, writes rejected or failing for good. Each costs
bounded time, spares the other deployments, backs off, and is said in a condition."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import harness
import kopf
import pytest
from builders import deployment, raw_server
from harness import (
    APPS,
    CORE,
    NAMESPACE,
    Clock,
    Cluster,
    Operator,
    condition,
    is_condition,
    measured_profile,
    ready_worker_pods,
)

from exegpt.operator import names, reconcile
from exegpt.operator.kube import Kube
from exegpt.operator.metrics import HttpMetricsReader

pytestmark = pytest.mark.asyncio


def status(cluster: Cluster, name: str = "x") -> dict[str, Any]:
    return dict((cluster.deployment(name) or {}).get("status") or {})


def degraded_reason(cluster: Cluster, name: str = "x") -> str | None:
    cond = condition(cluster.deployment(name), "Degraded")
    return str(cond["reason"]) if cond and cond["status"] == "True" else None


async def converged(cluster: Cluster, operator: Operator, name: str = "x") -> None:
    await cluster.wait_for(lambda: is_condition(cluster.deployment(name), "Planned"))
    await cluster.wait_for(lambda: cluster.statefulsets())
    for sts in cluster.statefulsets():
        if sts["metadata"]["name"].startswith(f"{name}-"):
            await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment(name), "Available"))
    await operator.settle(name)


def planner_runs(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    runs: list[float] = []
    real = reconcile.schedule

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(time.monotonic())
        return real(*args, **kwargs)

    monkeypatch.setattr(reconcile, "schedule", counted)
    return runs


# -- 3. a worker's /metrics answering garbage ---------------------------------------------------


def _not_http(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xffSSH-2.0-not-http\r\n\r\n")


class Redirected:
    """The real HTTP metrics reader, sent to one local port whatever the pod."""

    def __init__(self, port: int) -> None:
        self.http = HttpMetricsReader(timeout_seconds=1.0)
        self.port = port
        self.reads = 0

    async def read(self, namespace: str, pod: str, ip: str, port: int) -> str:
        self.reads += 1
        return await self.http.read(namespace, pod, "127.0.0.1", self.port)


async def test_garbage_metrics_do_not_freeze_the_status(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    with raw_server(_not_http) as port:
        metrics, clock = Redirected(port), Clock()
        operator = await start_operator(metrics=metrics, clock=clock)
        await cluster.create(deployment("x", strategy="RoundRobin"))
        await cluster.wait_for(lambda: "plan" in status(cluster) and cluster.statefulsets())
        await ready_worker_pods(cluster, "x")
        await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
        await operator.settle("x")

        clock.now += 3600  # a drift check is due: the workers answer garbage
        drift = await cluster.wait_for(
            lambda: condition(cluster.deployment("x"), "WorkloadDrift"), timeout=10
        )
        assert drift["reason"] == "MetricsUnavailable"
        assert metrics.reads >= 1

        # The status still follows the workers: they all go away.
        for sts in cluster.statefulsets():
            name = sts["metadata"]["name"]
            await cluster.patch(
                APPS, "statefulsets", NAMESPACE, name, {"status": {"readyReplicas": 0}},
                subresource="status",
            )  # fmt: skip
        await cluster.wait_for(
            lambda: condition(cluster.deployment("x"), "Available")["status"] == "False",  # type: ignore[index]
            timeout=5,
        )


# -- 4. API calls that hang ---------------------------------------------------------------------


async def test_hung_api_calls_time_out_and_spare_the_other_deployments(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    await start_operator(api_timeout_seconds=1.0)
    hung = [f"h{i}" for i in range(8)]
    for name in hung:  # every read of their plan ConfigMap hangs (more than the old pool)
        cluster.fail("get", "configmaps", status=0, delay=60, times=10_000,
                     name=names.plan_configmap(name))  # fmt: skip
        await cluster.create(deployment(name))
    await cluster.create(deployment("y"))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("y"), "Planned"))

    start = time.monotonic()
    await cluster.patch_deployment("y", {"spec": {"slo": {"latency": "2.5s"}}})
    await cluster.wait_for(
        lambda: status(cluster, "y").get("plan", {}).get("latencyBoundSeconds") == 2.5
    )
    # Hung for a minute each, more of them than the threads API calls used to share:
    # the edit waits for none of them (seconds here are a loaded CI machine's).
    assert time.monotonic() - start < 10.0
    # The hung ones say so, as a transient failure (a timeout), and are retried.
    for name in hung:
        await cluster.wait_for(lambda n=name: degraded_reason(cluster, n) == "ApiRequestFailing")  # type: ignore[misc]
    message = condition(cluster.deployment("h0"), "Degraded")["message"]  # type: ignore[index]
    assert "no answer within 1 s" in message and "next attempt in" in message


# -- 5. persistent errors back off --------------------------------------------------------------


async def test_a_rejected_status_write_backs_off_without_replanning(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    runs = planner_runs(monkeypatch)
    await start_operator(error_retry_seconds=0.2, error_retry_max_seconds=1.6)
    fault = cluster.fail("patch", "exegptdeployments/status", status=422, times=10_000, name="x")
    mark = cluster.mark()
    await cluster.create(deployment("x"))
    await cluster.wait_for(lambda: fault.hits)
    await asyncio.sleep(4.0)

    # 0.2 + 0.4 + 0.8 + 1.6 + 1.6: about 6 passes in 4 s (each also tries to record the
    # failure), not one every 0.1 s; the planner ran once; no event per retry.
    assert 4 <= len(fault.hits) <= 16, [str(c) for c in fault.hits]
    assert len(runs) == 1
    events = [c.body for c in cluster.calls(mark) if c.resource == "events" and c.verb == "create"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "x"]
    assert reasons.count("ApiRequestRejected") == 1
    assert "PlanChosen" not in reasons  # its status was never written

    fault.clear()
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"), timeout=10)
    assert len(runs) == 1


async def test_a_run_of_temporary_failures_posts_one_event_not_one_per_retry(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # kopf posts its own log lines about an object as Events where told to (older kopf
    # releases always do): "Handler 'update/spec' failed temporarily" at every retry.
    tuned = harness.tune_kopf

    def posting_kopf_logs(settings: kopf.OperatorSettings) -> None:
        tuned(settings)
        settings.posting.loggers = True

    monkeypatch.setattr(harness, "tune_kopf", posting_kopf_logs)
    await start_operator(error_retry_seconds=0.1, error_retry_max_seconds=0.4)
    await cluster.create(deployment("x"))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))

    mark = cluster.mark()
    fault = cluster.fail("patch", "exegptdeployments/status", status=503, times=10_000, name="x")
    with caplog.at_level(logging.ERROR, logger="kopf.objects"):
        await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "2.5s"}}})

        def retried() -> bool:
            return sum("failed temporarily" in r.getMessage() for r in caplog.records) >= 3

        await cluster.wait_for(retried, timeout=20, what="three retries of the edit's pass")
    fault.clear()
    await cluster.wait_for(
        lambda: status(cluster).get("plan", {}).get("latencyBoundSeconds") == 2.5, timeout=20
    )
    await asyncio.sleep(1.5)  # kopf posts Events in the background
    events = [c.body for c in cluster.calls(mark) if c.resource == "events" and c.verb == "create"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "x"]
    assert reasons.count("ApiRequestFailing") == 1, reasons
    # The operator's own Events only (kopf's carry reason "Logging").
    assert set(reasons) <= {"PlanChosen", "ApiRequestFailing", "Replanned", "RolloutStarted"}


@pytest.mark.parametrize(
    ("status_code", "reason"), [(500, "ApiRequestFailing"), (403, "ApiRequestRejected")]
)
async def test_a_failing_child_write_is_said_in_a_condition_and_clears(
    cluster: Cluster, operator: Operator, monkeypatch: pytest.MonkeyPatch, status_code: int,
    reason: str,
) -> None:  # fmt: skip
    runs = planner_runs(monkeypatch)
    fault = cluster.fail("create", "statefulsets", status=status_code, times=10_000)
    await cluster.create(deployment("x"))

    await cluster.wait_for(lambda: degraded_reason(cluster) == reason)
    message = condition(cluster.deployment("x"), "Degraded")["message"]  # type: ignore[index]
    assert str(status_code) in message
    fault.clear()
    await converged(cluster, operator)
    assert degraded_reason(cluster) is None
    assert len(runs) == 1


# -- 9. smaller ---------------------------------------------------------------------------------


async def test_a_foreign_host_network_on_a_worker_is_reverted(
    cluster: Cluster, operator: Operator
) -> None:
    await cluster.create(deployment("x"))
    await converged(cluster, operator)
    sts = cluster.statefulsets()[0]["metadata"]["name"]

    await cluster.patch(
        APPS, "statefulsets", NAMESPACE, sts,
        {"spec": {"template": {"spec": {"hostNetwork": True, "hostPID": True}}}},
    )  # fmt: skip

    def reverted() -> bool:
        pod = cluster.stored(APPS, "statefulsets", NAMESPACE, sts)["spec"]["template"]["spec"]  # type: ignore[index]
        return "hostNetwork" not in pod and "hostPID" not in pod

    await cluster.wait_for(reverted)
    await operator.settle("x")


async def test_a_conflict_on_create_for_an_absent_object_is_not_success(
    cluster: Cluster, operator: Operator
) -> None:
    mark = cluster.mark()
    fault = cluster.fail("create", "statefulsets", status=409, times=1)
    await cluster.create(deployment("x"))
    await converged(cluster, operator)

    calls = cluster.calls(mark)
    conflict = calls.index(fault.hits[0])
    name = fault.hits[0].body["metadata"]["name"]
    created = next(
        i for i, c in enumerate(calls)
        if i > conflict and c.verb == "create" and c.resource == "statefulsets" and c.ok
        and c.body["metadata"]["name"] == name
    )  # fmt: skip
    # No status with a plan was written in between, as if the StatefulSet were there.
    between = calls[conflict:created]
    assert not [
        c for c in between
        if c.subresource == "status" and c.ok and "plan" in (c.body or {}).get("status", {})
    ]  # fmt: skip


async def test_memory_of_a_deleted_deployment_is_forgotten(
    cluster: Cluster, operator: Operator
) -> None:
    for name in ("a", "b", "c"):
        await cluster.create(deployment(name))
    for name in ("a", "b", "c"):
        await cluster.wait_for(lambda n=name: is_condition(cluster.deployment(n), "Planned"))  # type: ignore[misc]
    memo = operator.memo
    assert memo is not None
    await cluster.wait_for(lambda: len(memo.deployments) == len(memo.deployments.written) == 3)
    for name in ("a", "b", "c"):
        await cluster.delete("exegpt.dev/v1alpha1", "exegptdeployments", NAMESPACE, name)
    await cluster.wait_for(lambda: len(memo.deployments) == 0)
    assert memo.deployments.written == {}


async def test_events_are_posted_once_though_the_status_write_failed_and_the_operator_restarted(
    cluster: Cluster, operator: Operator
) -> None:
    mark = cluster.mark()
    fault = cluster.fail("patch", "exegptdeployments/status", status=500, times=10_000, name="x")
    await cluster.create(deployment("x"))
    await cluster.wait_for(lambda: len(fault.hits) >= 12)  # several passes failed
    await operator.kill()
    fault.clear()
    await operator.start()
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    await operator.settle("x")

    events = [c.body for c in cluster.calls(mark) if c.resource == "events" and c.verb == "create"]
    reasons = [e["reason"] for e in events]
    assert reasons.count("PlanChosen") == 1
    assert reasons.count("ApiRequestFailing") <= 1


async def test_deleting_the_shared_profile_does_not_hold_slo_edits(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **{"profiling.mode": "Measured"})
    key, profile = measured_profile(body["spec"])
    cm = names.profile_configmap(key)
    await cluster.write_profile_configmap(NAMESPACE, cm, profile)
    await cluster.create(body)
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))

    await cluster.delete(CORE, "configmaps", NAMESPACE, cm)
    await cluster.patch_deployment("x", {"spec": {"slo": {"latency": "2.5s"}}})

    await cluster.wait_for(
        lambda: status(cluster).get("plan", {}).get("latencyBoundSeconds") == 2.5
    )
    # Restored from the operator's copy, not measured again.
    restored = await cluster.wait_for(lambda: cluster.stored(CORE, "configmaps", NAMESPACE, cm))
    assert restored["data"]["profile.json"] == profile
    assert cluster.jobs() == []
    assert condition(cluster.deployment("x"), "Profiled")["reason"] == "ProfileCached"  # type: ignore[index]


async def test_the_measured_path_lists_only_its_own_profiling_jobs(
    cluster: Cluster, operator: Operator, monkeypatch: pytest.MonkeyPatch
) -> None:
    selectors: list[str | None] = []
    real = Kube.list

    async def spy(self: Kube, kind: Any, namespace: str, label_selector: str | None = None) -> Any:
        if kind.plural == "jobs":
            selectors.append(label_selector)
        return await real(self, kind, namespace, label_selector)

    monkeypatch.setattr(Kube, "list", spy)
    body = deployment("x", **{"profiling.mode": "Measured"})
    await cluster.create(body)
    await cluster.wait_for(cluster.jobs)
    await operator.wait_runs("converge", "x", 2)

    key, _ = measured_profile(body["spec"])
    assert selectors
    assert set(selectors) == {f"{names.LABEL_PROFILE}={names.profile_digest(key)}"}
