"""``exegpt serve``: the plan document the operator writes (taken from the operator run
on the emulated API), read by the workers (every pod's place in its replica), the
pass-through of a non-driver pod, and a whole local replica answering over HTTP and
shutting down cleanly."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from harness import deployed

from exegpt.planner.kvcapacity import steady_sequences
from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.workerplan import RENDEZVOUS_PORT_OFFSET
from exegpt.runner.proxy import build_proxy_app
from exegpt.runner.workerplan import (
    PlanError,
    parse_plan,
    placement,
    pod_ordinal,
    replica_spec,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@functools.cache
def _operator_plan_json(path: Path) -> str:
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["engine"] = "ExeGPT"  # these are the own engine's workers
    return deployed(manifest).plan_json


def operator_document(path: Path) -> dict[str, Any]:
    """The plan document the operator writes for an example on the own engine:
    ``plan.json`` of the plan ConfigMap, as the operator wrote it on the emulated API."""
    doc: dict[str, Any] = json.loads(_operator_plan_json(path))
    return doc


def with_config(doc: dict[str, Any], config: dict[str, Any], roles: dict[str, Any]) -> None:
    """Make ``doc`` run ``config`` on ``roles`` (its KV capacity follows the config)."""
    c = ExecutionConfig.model_validate(config)
    held = steady_sequences(c, doc["predicted"]["decode_batch"])
    kv = doc["capacity"]
    doc["capacity"] = {**kv, "sequences": held, "blocks": held, "tokens": held * kv["block_size"]}
    doc["strategy"], doc["config"], doc["topology"]["roles"] = c.strategy, config, roles


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_pod_of_an_example_plan_has_one_place(path: Path) -> None:
    """Each replica's ranks are covered once by its pods; one driver pod per replica,
    the one its pods meet at."""
    plan = parse_plan(operator_document(path))
    spec = replica_spec(plan)
    world = spec.topology().world
    seen: dict[int, list[int]] = {}
    drivers: dict[int, str] = {}
    for role, r in plan.topology.roles.items():
        for ordinal in range(r.pods):
            place = placement(plan, role, ordinal, "ns")
            assert place.world == world
            seen.setdefault(place.replica, []).extend(place.ranks)
            if place.driver_pod:
                drivers[place.replica] = f"{r.statefulSet}-{ordinal}"
            assert place.driver_host.endswith(f".{plan.topology.service}.ns.svc")
    assert sorted(seen) == list(range(plan.config.replicas))
    for replica, ranks in seen.items():
        assert sorted(ranks) == list(range(world))
        assert placement(plan, next(iter(plan.topology.roles)), 0).driver_host.startswith(
            drivers[0] + "."
        )
        assert drivers[replica].rpartition("-")[0] in {
            r.statefulSet for r in plan.topology.roles.values()
        }
    assert spec.max_input_tokens == plan.limits.maxInputTokens


def test_bad_documents_and_pods_are_named() -> None:
    doc = operator_document(ROOT / "examples" / "opt-13b-summarization.yaml")
    with pytest.raises(PlanError, match="limits"):
        parse_plan({k: v for k, v in doc.items() if k != "limits"})
    with pytest.raises(PlanError, match="expected WorkerPlan"):
        parse_plan({**doc, "kind": "Plan"})
    plan = parse_plan(doc)
    roles = sorted(plan.topology.roles)
    with pytest.raises(PlanError, match=f"--role router: the plan's roles are {', '.join(roles)}"):
        placement(plan, "router", 0)
    with pytest.raises(PlanError, match="outside the"):
        placement(plan, roles[0], 99)
    assert pod_ordinal("chat-decoder-12") == 12
    with pytest.raises(PlanError, match="not a StatefulSet pod name"):
        pod_ordinal("chat")


@pytest.mark.asyncio
async def test_a_stage_pod_passes_the_api_to_its_driver() -> None:
    seen: list[Any] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        seen.append(await request.json())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for chunk in (b"data: 1\n\n", b"data: [DONE]\n\n"):
            await resp.write(chunk)
        return resp

    driver = web.Application()
    driver.router.add_post("/v1/completions", completions)
    async with TestServer(driver) as upstream:
        state = {"ready": True, "healthy": True}
        app = build_proxy_app(
            str(upstream.make_url("")).rstrip("/"),
            ready=lambda: state["ready"], healthy=lambda: state["healthy"],
        )  # fmt: skip
        async with TestClient(TestServer(app)) as client:
            resp = await client.post("/v1/completions", json={"prompt": [1], "stream": True})
            assert resp.status == 200
            assert await resp.text() == "data: 1\n\ndata: [DONE]\n\n"
            assert seen == [{"prompt": [1], "stream": True}]
            assert (await client.get("/readyz")).status == 200
            state["ready"], state["healthy"] = False, False
            assert (await client.get("/readyz")).status == 503
            assert (await client.get("/healthz")).status == 500
    async with TestClient(TestServer(app)) as client:  # the driver is gone
        resp = await client.post("/v1/completions", json={"prompt": [1]})
        assert resp.status == 503
        assert "unreachable" in (await resp.json())["error"]["message"]


def _get(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read().decode()
            return resp.status, json.loads(text) if body is not None else text
    except urllib.error.HTTPError as exc:
        text = exc.read().decode()
        return exc.code, json.loads(text) if body is not None else text


@pytest.mark.slow
def test_serve_local_runs_a_plan_and_drains_on_sigterm(tmp_path: Path) -> None:
    """``exegpt serve --local`` on a two-process plan (one encoder, one decoder): ready,
    completions, a clear 400, then SIGTERM ends every process with exit code 0."""
    doc = operator_document(ROOT / "examples" / "local-tiny.yaml")
    with_config(
        doc,
        {"strategy": "WorkloadAware", "encode_gpus": 1, "decode_gpus": 1, "encode_batch": 2,
         "decode_batch": 4},
        {"encoder": {"statefulSet": "tiny-local-encoder", "pods": 1, "stages": 1, "gpusPerPod": 1},
         "decoder": {"statefulSet": "tiny-local-decoder", "pods": 1, "stages": 1, "gpusPerPod": 1}},
    )  # fmt: skip
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc))
    with socket_port() as port:
        pass
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exegpt", "serve", "--local", str(plan_file), "--port", str(port),
         "--grace-seconds", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, [proc])
        request = {"prompt": [[1, 2, 3], [4]], "max_tokens": 5, "temperature": 0}
        status, body = _get(base + "/v1/completions", request)
        assert status == 200, body
        assert [len(c["token_ids"]) for c in body["choices"]] == [5, 5]
        again = _get(base + "/v1/completions", request)[1]
        assert [c["token_ids"] for c in again["choices"]] == [
            c["token_ids"] for c in body["choices"]
        ]
        status, body = _get(
            base + "/v1/completions", {"prompt": list(range(1, 200)), "max_tokens": 2}
        )
        assert status == 400 and body["error"]["param"] == "prompt"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its ranks too
            proc.communicate()


@pytest.mark.slow
def test_serve_local_exits_1_when_its_replica_fails(tmp_path: Path) -> None:
    """A replica that cannot load its model stops the server, instead of answering 503
    "starting" for ever."""
    doc = operator_document(ROOT / "examples" / "local-tiny.yaml")
    missing = str(tmp_path / "no-weights")
    doc["model"]["weights"] = {"pvc": "models", "path": "/no-weights", "directory": missing}
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(doc))
    with socket_port() as port:
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "exegpt", "serve", "--local", str(plan_file), "--port", str(port)],
        capture_output=True, text=True, timeout=120, start_new_session=True,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"exiting: rank 0 failed: {tmp_path / 'no-weights'}: no *.safetensors files" in (
        proc.stderr
    )


class socket_port:  # noqa: N801 (a context manager used like a function)
    """A free TCP port on the loopback interface."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_pod_waits_for_the_plan_it_was_made_for(tmp_path: Path) -> None:
    from exegpt.runner.errors import RunnerError
    from exegpt.runner.serve import wait_for_own_plan

    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    (tmp_path / "plan-hash").write_text("abc\n")
    wait_for_own_plan(str(plan), "abc", timeout_s=0)  # the mounted plan is the pod's
    wait_for_own_plan(str(plan), None, timeout_s=0)  # outside a pod: nothing to compare
    with pytest.raises(RunnerError, match=r"mounted plan \(abc\) is not the plan .* \(def\)"):
        wait_for_own_plan(str(plan), "def", timeout_s=0.05, poll_s=0.01)


def _wait_ready(url: str, procs: list[subprocess.Popen[str]], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if _get(url + "/readyz", timeout=2)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        for p in procs:
            assert p.poll() is None, p.stdout.read() if p.stdout else ""
        time.sleep(0.3)
    pytest.fail(f"{url} did not become ready")


@pytest.mark.slow
def test_two_worker_pods_form_a_pipeline_and_stop_together(tmp_path: Path) -> None:
    """Two pods of a two-stage RoundRobin plan, as the StatefulSet runs them (the
    driver's address given directly instead of through the headless Service): both
    become ready, the stage pod passes requests on to the driver, and when the driver
    is stopped the stage pod ends too."""
    doc = operator_document(ROOT / "examples" / "local-tiny.yaml")
    with_config(
        doc,
        {"strategy": "RoundRobin", "pipeline_stages": 2, "encode_batch": 2,
         "decode_steps_per_encode": 2, "micro_batches": 2},
        {"worker": {"statefulSet": "tiny-worker", "pods": 2, "stages": 2, "gpusPerPod": 1}},
    )  # fmt: skip
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    plan_hash = parse_plan(doc).hash()  # the workers check the document against it
    (tmp_path / "plan-hash").write_text(plan_hash)
    with socket_port() as driver_port, socket_port() as stage_port:
        pass
    procs = []
    for ordinal, port in ((0, driver_port), (1, stage_port)):
        env = {
            **os.environ,
            "POD_NAME": f"tiny-worker-{ordinal}",
            "EXEGPT_PLAN_HASH": plan_hash,
            "EXEGPT_DRIVER_ADDRESS": f"127.0.0.1:{driver_port}",
            "PYTHONUNBUFFERED": "1",
        }
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "exegpt", "serve", "--plan", str(tmp_path / "plan.json"),
             "--role", "worker", "--port", str(port), "--host", "127.0.0.1",
             "--grace-seconds", "5"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
            start_new_session=True,
        ))  # fmt: skip
    try:
        for port in (driver_port, stage_port):
            _wait_ready(f"http://127.0.0.1:{port}", procs)
        request = {"prompt": [1, 2, 3], "max_tokens": 6, "temperature": 0}
        via_driver = _get(f"http://127.0.0.1:{driver_port}/v1/completions", request)
        via_stage = _get(f"http://127.0.0.1:{stage_port}/v1/completions", request)
        assert via_driver[0] == via_stage[0] == 200, (via_driver, via_stage)
        assert via_driver[1]["choices"][0]["token_ids"] == via_stage[1]["choices"][0]["token_ids"]
        assert len(via_driver[1]["choices"][0]["token_ids"]) == 6
        procs[0].send_signal(signal.SIGTERM)
        out0, _ = procs[0].communicate(timeout=60)
        assert procs[0].returncode == 0, out0
        out1, _ = procs[1].communicate(timeout=60)  # the driver stopped the replica
        assert procs[1].returncode == 0, out1
        assert "this pod's part of the replica has ended" in out1
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.communicate()


def test_the_operator_declares_the_port_the_workers_meet_on() -> None:
    sts = deployed(yaml.safe_load((ROOT / "examples" / "local-tiny.yaml").read_text()))
    for s in sts.statefulsets:
        [c] = s["spec"]["template"]["spec"]["containers"]
        http = next(p["containerPort"] for p in c["ports"] if p["name"] == "http")
        meet = next(p["containerPort"] for p in c["ports"] if p["name"] == "rendezvous")
        assert meet == http + RENDEZVOUS_PORT_OFFSET
