"""``exegpt bench operator``: the operator under load, and with misbehaving deployments.

N deployments (default 200; 20 with ``--quick``) are created on the emulated API (the
test harness's kmock emulator, serving in this process), and the real operator runs as
a separate process against it (``python -m exegpt operator``, default settings but a
5 s resync). Measured:

- the time from creating them all to every one having a plan;
- SLO-edit-to-plan latency (an edit of ``spec.slo.latency`` to a new bound, until the
  plan for it is in the deployment's status), p50 and p99 over sequential edits of
  different deployments;
- API requests per deployment per periodic pass, over a quiet window;
- the operator process's resident memory before and after the edits, and its growth;
- the same edits again with three misbehaving deployments: one whose worker never
  answers its ``/metrics`` (a drift check is due every 30 s), one whose API reads hang
  (answered after an hour) and one whose status writes are answered 422 for good.

The emulator lives in the source tree's test harness (``tests/operator/harness.py``):
run it from a checkout with the ``test`` extra installed. Timings on a shared machine
are indicative; the targets are p99 edit-to-plan under 2 s at 200 deployments, the
misbehaving deployments moving no other deployment's p99, and flat memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from exegpt.operator import names as operator_names

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "operator" / "harness.py"
NAMESPACE = "default"
TARGET_P99_S = 2.0
RESYNC_S = 5.0


def _harness() -> ModuleType:
    """The test harness (emulated API), from the source checkout."""
    if not HARNESS.exists():
        raise SystemExit(
            f"exegpt bench operator needs the emulated API of the source checkout "
            f"({HARNESS} is missing): run it from a checkout with '.[test]' installed"
        )
    for path in (HARNESS.parent, HARNESS.parents[1]):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module("harness")


def _body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "exegpt.dev/v1alpha1",
        "kind": "ExeGPTDeployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "model": {"name": "opt-13b"},
            "hardware": {"gpus": 8, "gpuType": "nvidia-a100-80gb", "gpusPerNode": 8},
            "workload": {"preset": "summarization"},
            "slo": {"latency": "3.1s"},
            "profiling": {"mode": "Analytic"},
            "drift": {"mode": "Off"},
            **spec,
        },
    }


def _progress(message: str) -> None:
    print(f"[bench operator] {message}", file=sys.stderr, flush=True)


def _rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (Linux ``/proc``), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def _operator(url: str, log: Path | None) -> AsyncIterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "EXEGPT_KUBE_HOST": url,
        "EXEGPT_NAMESPACES": NAMESPACE,
        "EXEGPT_LIVENESS_ENDPOINT": "",
        "EXEGPT_RESYNC_SECONDS": str(RESYNC_S),
        "EXEGPT_PLAN_TIME_LIMIT_SECONDS": "10",
    }
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "exegpt", "operator"], env=env, stdout=out, stderr=out
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _bound(cluster: Any, name: str) -> float | None:
    status = (cluster.deployment(name) or {}).get("status") or {}
    value = (status.get("plan") or {}).get("latencyBoundSeconds")
    return float(value) if value is not None else None


def _has_bound(cluster: Any, name: str, bound: float) -> bool:
    return _bound(cluster, name) == bound


async def _wait(check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(poll)
    return False


async def _edits(cluster: Any, names: list[str], count: int, start: int) -> list[float]:
    """Seconds from each SLO edit to its plan in status (``inf`` past 30 s)."""
    out: list[float] = []
    for i in range(count):
        name = names[i % len(names)]
        bound = round(2.5 + 0.001 * (start + i), 3)
        begin = time.monotonic()
        await cluster.patch_deployment(name, {"spec": {"slo": {"latency": f"{bound}s"}}})
        # Polled every 0.1 s: reading the emulator's store is not free (its objects
        # keep their history), and a busier poll would slow the API it measures.
        ok = await _wait(functools.partial(_has_bound, cluster, name, bound), 30.0, 0.1)
        out.append(time.monotonic() - begin if ok else float("inf"))
        _progress(f"edit {start + i}: {name} to {bound} s: {out[-1]:.2f} s")
    return out


def _percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {"p50_s": statistics.median(s), "p99_s": p99, "max_s": s[-1]}


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a hung worker)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for w in held:
            w.close()
        server.close()


async def _hung_worker(h: ModuleType, cluster: Any, port: int) -> str:
    """A deployment whose ready workers never answer ``/metrics``: drift checks every
    30 s hang until the operator's deadline."""
    name = "hung-worker"
    drift = {"mode": "Observe", "intervalSeconds": 30}
    await cluster.create(_body(name, drift=drift, runner={"port": port}))
    await _wait(lambda: _bound(cluster, name) is not None, 120.0, 0.2)
    builders = importlib.import_module("builders")
    for sts in cluster.statefulsets():
        if not sts["metadata"]["name"].startswith(f"{name}-"):
            continue
        await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
        role = sts["metadata"]["labels"][operator_names.LABEL_COMPONENT]
        for o in range(int(sts["spec"]["replicas"])):
            pod = builders.worker_pod(name, role, o, ip="127.0.0.1")
            pod["metadata"]["namespace"] = NAMESPACE
            await cluster.create(pod)
            await cluster.patch(
                "v1", "pods", NAMESPACE, pod["metadata"]["name"], {"status": pod["status"]},
                subresource="status",
            )  # fmt: skip
    return name


async def _bench(n: int, edits: int, log: Path | None) -> dict[str, Any]:
    h = _harness()
    async with (
        h.running_cluster() as cluster,
        _operator(cluster.url, log) as proc,
        _silent_server() as silent,
    ):
        names = [f"d{i:03d}" for i in range(n)]
        begin = time.monotonic()
        for name in names:
            await cluster.create(_body(name))
        planned = await _wait(
            lambda: all(_bound(cluster, x) is not None for x in names), 60.0 + 3.0 * n, 0.2
        )
        plan_all = time.monotonic() - begin if planned else float("inf")
        _progress(f"{n} deployments planned in {plan_all:.1f} s")

        await asyncio.sleep(2 * RESYNC_S)  # settle: the passes after the first plans
        mark = cluster.mark()
        window = 3 * RESYNC_S
        await asyncio.sleep(window)
        calls = [c for c in cluster.calls(mark) if c.verb != "watch"]
        per_pass = len(calls) / (n * window / RESYNC_S)
        _progress(f"{per_pass:.2f} requests per deployment per pass")

        rss_start = _rss_mib(proc.pid)
        healthy = _names_except(names, 2)
        base = await _edits(cluster, healthy, edits, 0)
        rss_end = _rss_mib(proc.pid)
        _progress(f"{edits} edits: p99 {_percentiles(base)['p99_s']:.3f} s")

        # A worker that never answers; a deployment whose API reads hang; another whose
        # status writes are refused for good.
        worker = await _hung_worker(h, cluster, silent)
        hung, refused = names[-1], names[-2]
        cluster.fail(
            "get", "configmaps", status=0, delay=3600, times=10**9,
            name=operator_names.plan_configmap(hung),
        )  # fmt: skip
        cluster.fail("patch", "exegptdeployments/status", status=422, times=10**9, name=refused)
        for name in (hung, refused):
            await cluster.patch_deployment(name, {"spec": {"slo": {"latency": "2.0s"}}})
        await asyncio.sleep(RESYNC_S)
        faulty = await _edits(cluster, healthy, edits, edits)
        checked = ((cluster.deployment(worker) or {}).get("status") or {}).get("conditions", [])
        drift: dict[str, Any] = next((c for c in checked if c["type"] == "WorkloadDrift"), {})
        rss_faulty = _rss_mib(proc.pid)
        return {
            "deployments": n,
            "plan_all_seconds": plan_all,
            "edits": edits,
            "edit": _percentiles(base),
            "edit_with_faults": _percentiles(faulty),
            "hung_worker_drift_condition": drift.get("reason"),
            "requests_per_deployment_per_pass": per_pass,
            "resync_seconds": RESYNC_S,
            "rss_mib": {
                "before_edits": rss_start,
                "after_edits": rss_end,
                "after_faulty_edits": rss_faulty,
            },
        }


def _names_except(names: list[str], last: int) -> list[str]:
    return names[: len(names) - last] if len(names) > last else names


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench operator", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="20 deployments, 20 edits")
    parser.add_argument("--deployments", type=int, default=None, help="default 200")
    parser.add_argument("--edits", type=int, default=None, help="default 100")
    parser.add_argument("--log", type=Path, default=None, help="append the operator's output")
    args = parser.parse_args(argv)
    n = args.deployments or (20 if args.quick else 200)
    edits = args.edits or (20 if args.quick else 100)
    result = asyncio.run(_bench(n, edits, args.log))
    base, faulty = result["edit"], result["edit_with_faults"]
    rss = result["rss_mib"]
    result["targets"] = {
        "p99_edit_under_2s": base["p99_s"] < TARGET_P99_S,
        "faults_move_no_p99": faulty["p99_s"] <= max(1.5 * base["p99_s"], base["p99_s"] + 0.5),
        "memory_flat": rss["after_faulty_edits"] <= 1.1 * rss["before_edits"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['deployments']} deployments planned in {result['plan_all_seconds']:.1f} s")
    per_pass = result["requests_per_deployment_per_pass"]
    print(f"API requests per deployment per pass: {per_pass:.2f}")
    for label, e in (("healthy", base), ("with the misbehaving ones", faulty)):
        print(
            f"SLO edit to plan ({label}): p50 {e['p50_s']:.3f} s, p99 {e['p99_s']:.3f} s, "
            f"max {e['max_s']:.3f} s over {result['edits']} edits"
        )
    print(
        f"operator memory: {rss['before_edits']:.0f} MiB before the edits, "
        f"{rss['after_edits']:.0f} after, {rss['after_faulty_edits']:.0f} after the faulty ones"
    )
    met = ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in result["targets"].items())
    print(f"targets: {met}")
    return 0
