"""The harness itself, with a toy operator: what the emulator stores and serves, the
request log, injected failures, and an operator stopped and started within a test.

Read these tests to see how the operator tests use the harness."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kmock
import kopf
import kubernetes
import pytest
import pytest_asyncio
from builders import deployment
from harness import (
    CORE,
    EXEGPT,
    JOBS,
    NAMESPACE,
    Cluster,
    Operator,
    RequestLog,
    minimal_crd,
    running_cluster,
    selector_matches,
)

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    """The toy keeps its own fields in status: its CRD keeps unknown fields (the real
    one's schema would drop them, as the API server does)."""
    async with running_cluster([minimal_crd()]) as c:
        yield c


def toy_registry() -> kopf.OperatorRegistry:
    """On create: a ConfigMap owned by the deployment, made with the sync ``kubernetes``
    client off the loop (an existing one is fine), then status. On every event: read the
    ConfigMap back (a read the tests can wait for)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("exegpt.dev", "exegptdeployments", id="toy", backoff=0.05, registry=registry)
    async def create_fn(
        name: str, namespace: str | None, uid: str, memo: Any, **_: Any
    ) -> dict[str, Any]:
        assert namespace is not None
        core = kubernetes.client.CoreV1Api(memo.api)
        owner = kubernetes.client.V1OwnerReference(
            api_version=EXEGPT, kind="ExeGPTDeployment", name=name, uid=uid, controller=True
        )
        body = kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name=f"{name}-toy", owner_references=[owner]),
            data={"hello": "world"},
        )
        try:
            await asyncio.to_thread(core.create_namespaced_config_map, namespace, body)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                raise
        return {"configMap": f"{name}-toy"}

    @kopf.on.event("exegpt.dev", "exegptdeployments", registry=registry)
    async def event_fn(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        assert namespace is not None
        core = kubernetes.client.CoreV1Api(memo.api)
        with contextlib.suppress(kubernetes.client.ApiException):
            await asyncio.to_thread(core.read_namespaced_config_map, f"{name}-toy", namespace)

    return registry


def toy_status(cluster: Cluster, name: str) -> Any:
    return ((cluster.deployment(name) or {}).get("status") or {}).get("toy")


def toy_operator(cluster: Cluster) -> Operator:
    def memo() -> kopf.Memo:
        return kopf.Memo(api=cluster.api_client())

    return Operator(cluster, toy_registry, memo_factory=memo)


async def test_the_operator_creates_a_child_with_an_owner_and_writes_status(
    cluster: Cluster,
) -> None:
    async with toy_operator(cluster):
        mark = cluster.mark()
        created = await cluster.create(deployment("x"))

        cm = await cluster.wait_for(lambda: cluster.stored(CORE, "configmaps", NAMESPACE, "x-toy"))
        await cluster.wait_for(lambda: toy_status(cluster, "x"))

    assert cm["data"] == {"hello": "world"}
    [owner] = cm["metadata"]["ownerReferences"]
    assert owner["uid"] == created["metadata"]["uid"]
    assert toy_status(cluster, "x") == {"configMap": "x-toy"}

    writes = {str(c) for c in cluster.writes_since(mark)}
    assert "create v1 configmaps default" in writes
    assert "patch exegpt.dev/v1alpha1 exegptdeployments/status default/x" in writes
    assert ("", "configmaps", "create") in cluster.api_usage()
    assert ("exegpt.dev", "exegptdeployments", "watch") in cluster.api_usage()
    # The harness's own requests are not the operator's.
    assert not any(c.by_harness for c in cluster.calls())
    assert any(
        c.verb == "create" and c.resource == "exegptdeployments"
        for c in cluster.calls(include_harness=True)
    )


async def test_a_restarted_operator_resumes_without_writing(cluster: Cluster) -> None:
    operator = toy_operator(cluster)
    await operator.start()
    await cluster.create(deployment("x"))
    await cluster.wait_for(lambda: toy_status(cluster, "x"))
    await operator.stop()

    mark = cluster.mark()
    await operator.start()
    # The watch replays the deployment; the event handler reads the ConfigMap.
    await cluster.wait_for_call("get", "configmaps", since=mark)
    await operator.stop()

    assert cluster.writes_since(mark) == []
    assert len(cluster.stored_all(CORE, "configmaps")) == 1
    assert operator.starts == 2


async def test_an_injected_failure_is_answered_before_the_store(cluster: Cluster) -> None:
    fault = cluster.fail("create", "configmaps", status=500, times=1)
    async with toy_operator(cluster):
        await cluster.create(deployment("x"))
        await cluster.wait_for(lambda: cluster.stored(CORE, "configmaps", NAMESPACE, "x-toy"))

    assert fault.exhausted and [str(c) for c in fault.hits] == ["create v1 configmaps default"]
    creates = [c for c in cluster.writes_since() if c.resource == "configmaps"]
    assert len(creates) == 2  # the failed one, and kopf's retry


async def test_an_applied_failure_stores_the_write_and_loses_the_response(
    cluster: Cluster,
) -> None:
    fault = cluster.fail("create", "configmaps", status=500, applied=True)
    async with toy_operator(cluster):
        await cluster.create(deployment("x"))
        # The ConfigMap is stored, but the handler saw a 500 and is retried by kopf: its
        # second create meets the stored object (409), which the handler takes as done.
        await cluster.wait_for(lambda: toy_status(cluster, "x"))

    assert fault.exhausted
    creates = [c for c in cluster.writes_since() if c.resource == "configmaps"]
    assert len(creates) == 2
    assert len(cluster.stored_all(CORE, "configmaps")) == 1


async def test_the_emulator_keeps_server_fields_and_conflicts(cluster: Cluster) -> None:
    job = {
        "apiVersion": JOBS,
        "kind": "Job",
        "metadata": {"name": "j", "labels": {"a": "1"}},
        "spec": {"backoffLimit": 2, "template": {}},
        "status": {"succeeded": 5},
    }
    created = await cluster.create(job)
    meta = created["metadata"]
    assert meta["uid"] and meta["generation"] == 1 and meta["resourceVersion"]
    assert "status" not in created  # the status subresource is not written by a create

    # Writes to the object never change its status; writes to /status change only it.
    patched = await cluster.patch(JOBS, "jobs", NAMESPACE, "j", {"status": {"x": 1}})
    assert "status" not in patched and patched["metadata"]["generation"] == 1
    failed = await cluster.set_job_failed(NAMESPACE, "j")
    assert failed["status"]["failed"] == 3
    assert [c["type"] for c in failed["status"]["conditions"]] == ["FailureTarget", "Failed"]
    respec = await cluster.patch(JOBS, "jobs", NAMESPACE, "j", {"spec": {"backoffLimit": 1}})
    assert respec["metadata"]["generation"] == 2
    assert respec["status"] == failed["status"]

    # A stale resourceVersion is a conflict; a no-op write keeps the resourceVersion.
    stale = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "spec": {}}
    with pytest.raises(Exception, match="409"):
        await cluster.patch(JOBS, "jobs", NAMESPACE, "j", stale)
    same = await cluster.patch(JOBS, "jobs", NAMESPACE, "j", {"spec": {"backoffLimit": 1}})
    assert same["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]

    # Label selectors select.
    listed = await cluster.request(
        "GET", "/apis/batch/v1/namespaces/default/jobs?labelSelector=a%3D2"
    )
    assert listed["items"] == [] and listed["kind"] == "JobList"


async def test_the_sync_client_replaces_with_preconditions(cluster: Cluster) -> None:
    api = cluster.api_client()
    core = kubernetes.client.CoreV1Api(api)
    V1ConfigMap, V1ObjectMeta = kubernetes.client.V1ConfigMap, kubernetes.client.V1ObjectMeta  # noqa: N806
    body = V1ConfigMap(metadata=V1ObjectMeta(name="c"), data={"a": "1"})
    created = await asyncio.to_thread(core.create_namespaced_config_map, NAMESPACE, body)
    assert created.metadata is not None
    rv = created.metadata.resource_version
    body = V1ConfigMap(metadata=V1ObjectMeta(name="c", resource_version=rv), data={"b": "2"})
    replaced = await asyncio.to_thread(core.replace_namespaced_config_map, "c", NAMESPACE, body)
    assert replaced.data == {"b": "2"}
    with pytest.raises(kubernetes.client.ApiException) as exc:
        await asyncio.to_thread(core.replace_namespaced_config_map, "c", NAMESPACE, body)
    assert exc.value.status == 409
    listed = await asyncio.to_thread(core.list_namespaced_config_map, NAMESPACE)
    assert [c.metadata.name for c in listed.items if c.metadata] == ["c"]
    await asyncio.to_thread(core.delete_namespaced_config_map, "c", NAMESPACE)
    assert cluster.stored(CORE, "configmaps", NAMESPACE, "c") is None


async def test_label_selectors() -> None:
    labels = {"app": "exegpt", "tier": "worker"}
    assert selector_matches("app=exegpt,tier in (worker, encoder)", labels)
    assert selector_matches("app==exegpt,!missing,tier!=decoder", labels)
    assert not selector_matches("app notin (exegpt)", labels)
    assert not selector_matches("missing", labels)


async def test_resource_requests_are_answered_by_key_whatever_was_served_before(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kmock's generic dispatch matches a request by scanning the whole request log, so
    each answer cost more than the last; the emulator answers reads and writes of
    objects from its store (the dispatch is left to discovery)."""
    dispatched: list[str] = []
    generic = kmock.RawHandler._handle

    async def counted(self: Any, request: Any) -> Any:
        dispatched.append(str(request.url.path))
        return await generic(self, request)

    monkeypatch.setattr(kmock.RawHandler, "_handle", counted)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}}
    await cluster.create(body)
    await cluster.patch(CORE, "configmaps", NAMESPACE, "cm", {"data": {"a": "1"}})
    assert (await cluster.get(CORE, "configmaps", NAMESPACE, "cm") or {})["data"] == {"a": "1"}
    listed = await cluster.request("GET", "/api/v1/namespaces/default/configmaps")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["cm"]
    assert await cluster.get(CORE, "configmaps", NAMESPACE, "absent") is None
    await cluster.delete(CORE, "configmaps", NAMESPACE, "cm")
    assert cluster.stored(CORE, "configmaps", NAMESPACE, "cm") is None
    assert dispatched == []
    await cluster.request("GET", "/api/v1")  # discovery still goes through kmock's
    assert dispatched == ["/api/v1"]


async def test_discovery_looks_at_its_own_request_whatever_was_served_before(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kmock's generic dispatch filters every request in the log to match one; while it
    does, the log shows it that request alone, so discovery costs the same after any
    number of requests."""
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}}
    await cluster.create(body)
    for i in range(200):
        await cluster.patch(CORE, "configmaps", NAMESPACE, "cm", {"data": {"i": str(i)}})
    seen: list[int] = []
    kept = RequestLog.__iter__

    def counted(self: RequestLog) -> Iterator[Any]:
        items = list(kept(self))
        seen.append(len(items))
        return iter(items)

    monkeypatch.setattr(RequestLog, "__iter__", counted)
    discovery = await cluster.request("GET", "/api/v1")
    assert "configmaps" in {r["name"] for r in discovery["resources"]}
    assert seen and max(seen) == 1
    assert len(list(kept(cluster.emulator.request_log))) > 200  # outside it, every request


async def test_a_bounded_emulator_keeps_the_last_requests_and_versions() -> None:
    """A long run (the operator benchmark) bounds the request log and each object's
    versions: positions in the log still count every request, statuses of the requests
    let go are dropped with them, and asking for requests no longer kept fails."""
    async with running_cluster([minimal_crd()], keep_requests=5, keep_versions=2) as cluster:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {}}
        await cluster.create(body)
        for i in range(8):
            await cluster.patch(CORE, "configmaps", NAMESPACE, "cm", {"data": {"i": str(i)}})
        served = cluster.mark()
        log = cluster.emulator.request_log

        assert served > 8 and len(list(log)) == 5 and log.first == served - 5
        assert [c.body for c in cluster.calls(served - 2, include_harness=True)] == [
            {"data": {"i": "6"}},
            {"data": {"i": "7"}},
        ]
        assert all(c.status == 200 for c in cluster.calls(served - 5, include_harness=True))
        assert len(cluster.emulator.statuses) <= 5
        with pytest.raises(LookupError, match="keeps the last 5"):
            cluster.calls(served - 6)

        assert cluster.emulator.versions_kept() <= 2 * len(cluster.emulator._objects)
        assert (cluster.stored(CORE, "configmaps", NAMESPACE, "cm") or {})["data"] == {"i": "7"}
        await cluster.delete(CORE, "configmaps", NAMESPACE, "cm")
        assert cluster.stored(CORE, "configmaps", NAMESPACE, "cm") is None
        await cluster.create(body)  # a deleted object's last state is kept to recreate over
        assert (cluster.stored(CORE, "configmaps", NAMESPACE, "cm") or {})["data"] == {}


async def test_a_bounded_emulator_keeps_the_newest_events() -> None:
    async with running_cluster([minimal_crd()], keep_events=3) as cluster:
        for i in range(5):
            await cluster.create(
                {"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"e{i}"}, "reason": "R"}
            )
        listed = await cluster.request("GET", "/api/v1/namespaces/default/events")
        assert [o["metadata"]["name"] for o in listed["items"]] == ["e2", "e3", "e4"]
        assert cluster.stored(CORE, "events", NAMESPACE, "e0") is None
        await cluster.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}})
        assert cluster.stored(CORE, "configmaps", NAMESPACE, "cm") is not None
