"""``exegpt bench operator``: the operator under load, and with misbehaving deployments.

N deployments (default 200; 20 with ``--quick``) are created on the emulated API (the
test harness's kmock emulator, serving in this process), and the real operator runs as
a separate process against it (``python -m exegpt operator``) with the settings users
get by default (a pass over every deployment each ``resync_seconds``, 10 s). Measured:

- the time from creating them all to every one having a plan;
- SLO-edit-to-plan latency (an edit of ``spec.slo.latency`` to a new bound, until the
  plan for it is in the deployment's status), p50 and p99 over sequential edits of
  different deployments;
- API requests per deployment per periodic pass, over a quiet window;
- the operator process's resident memory before and after the edits, and its growth;
  with ``--duration-minutes M``, edits go on for M minutes while the operator's resident
  memory is sampled, and the fitted slope (MiB per minute) is reported with the first
  and last samples;
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
from exegpt.operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "operator" / "harness.py"
NAMESPACE = "default"
EXEGPT_API = "exegpt.dev/v1alpha1"
TARGET_P99_S = 2.0
RESYNC_S = OperatorSettings().resync_seconds  # the default users get
EDIT_TIMEOUT_S = 30.0
# Memory is flat when the fitted growth over the run stays within this share of the
# starting resident memory per 30 minutes.
FLAT_SHARE_PER_30_MIN = 0.05


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
        "EXEGPT_KUBE_INSECURE": "true",
        "EXEGPT_NAMESPACES": NAMESPACE,
        "EXEGPT_LIVENESS_ENDPOINT": "",
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
    # Read in place (no copy): the bench polls every deployment.
    status = (cluster.peek(EXEGPT_API, "exegptdeployments", NAMESPACE, name) or {}).get(
        "status"
    ) or {}
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


def _edit_bound(i: int) -> float:
    """The SLO of edit ``i``: a new bound each edit of a deployment, all feasible."""
    return round(2.5 + 0.001 * (i % 1000), 3)


async def _edit(cluster: Any, name: str, i: int) -> float:
    """Seconds from SLO edit ``i`` of ``name`` to its plan in status (``inf`` past the
    timeout)."""
    bound = _edit_bound(i)
    begin = time.monotonic()
    await cluster.patch_deployment(name, {"spec": {"slo": {"latency": f"{bound}s"}}})
    ok = await _wait(functools.partial(_has_bound, cluster, name, bound), EDIT_TIMEOUT_S, 0.02)
    seconds = time.monotonic() - begin if ok else float("inf")
    _progress(f"edit {i}: {name} to {bound} s: {seconds:.2f} s")
    return seconds


async def _edits(cluster: Any, names: list[str], count: int, start: int) -> list[float]:
    """Seconds from each of ``count`` sequential SLO edits to its plan in status."""
    return [await _edit(cluster, names[i % len(names)], start + i) for i in range(count)]


async def _edits_for(
    cluster: Any, names: list[str], minutes: float, start: int, pid: int, every_s: float
) -> tuple[list[float], list[tuple[float, float]]]:
    """Sequential SLO edits for ``minutes``, the operator's resident memory sampled every
    ``every_s`` seconds: (edit seconds, [(minute, MiB)])."""
    out: list[float] = []
    samples: list[tuple[float, float]] = []
    begin = time.monotonic()
    end = begin + 60.0 * minutes

    async def sample() -> None:
        while True:
            samples.append(((time.monotonic() - begin) / 60.0, _rss_mib(pid)))
            await asyncio.sleep(every_s)

    sampler = asyncio.create_task(sample())
    try:
        i = start
        while time.monotonic() < end:
            out.append(await _edit(cluster, names[(i - start) % len(names)], i))
            i += 1
    finally:
        sampler.cancel()
    samples.append(((time.monotonic() - begin) / 60.0, _rss_mib(pid)))
    return out, samples


def _memory(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """The fitted slope of resident memory over the run (least squares), over its second
    half too (past the allocator's warm-up), and the first and last samples."""
    xs, ys = [t for t, _ in samples], [m for _, m in samples]
    half = [(t, m) for t, m in samples if t >= xs[-1] / 2]
    slope = statistics.linear_regression(xs, ys).slope if len(samples) > 2 else float("nan")
    late = (
        statistics.linear_regression([t for t, _ in half], [m for _, m in half]).slope
        if len(half) > 2
        else float("nan")
    )
    return {
        "minutes": xs[-1],
        "samples": len(samples),
        "start_mib": ys[0],
        "end_mib": ys[-1],
        "max_mib": max(ys),
        "slope_mib_per_min": slope,
        "second_half_slope_mib_per_min": late,
        "series": [[round(t, 3), round(m, 2)] for t, m in samples],
    }


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


async def _bench(
    n: int, edits: int, log: Path | None, minutes: float | None = None
) -> dict[str, Any]:
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
        passes = n * window / RESYNC_S
        per_pass = len(calls) / passes
        writes = [str(c) for c in calls if c.is_write]
        _progress(f"{per_pass:.2f} requests per deployment per pass, {len(writes)} writes")

        rss_start = _rss_mib(proc.pid)
        healthy = _names_except(names, 2)
        memory: dict[str, Any] | None = None
        if minutes:
            every = max(5.0, 60.0 * minutes / 200)
            base, series = await _edits_for(cluster, healthy, minutes, 0, proc.pid, every)
            memory = _memory(series)
            _progress(
                f"{minutes:g} min of edits: {memory['start_mib']:.1f} -> "
                f"{memory['end_mib']:.1f} MiB, {memory['slope_mib_per_min']:+.3f} MiB/min"
            )
        else:
            base = await _edits(cluster, healthy, edits, 0)
        rss_end = _rss_mib(proc.pid)
        _progress(f"{len(base)} edits: p99 {_percentiles(base)['p99_s']:.3f} s")

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
        faulty = await _edits(cluster, healthy, edits, len(base))
        checked = ((cluster.deployment(worker) or {}).get("status") or {}).get("conditions", [])
        drift: dict[str, Any] = next((c for c in checked if c["type"] == "WorkloadDrift"), {})
        rss_faulty = _rss_mib(proc.pid)
        return {
            "deployments": n,
            "plan_all_seconds": plan_all,
            "edits": len(base),
            "faulty_edits": len(faulty),
            "edit": _percentiles(base),
            "edit_with_faults": _percentiles(faulty),
            "hung_worker_drift_condition": drift.get("reason"),
            "requests_per_deployment_per_pass": per_pass,
            "writes_in_quiet_window": len(writes),
            "quiet_window_seconds": window,
            "resync_seconds": RESYNC_S,
            "rss_mib": {
                "before_edits": rss_start,
                "after_edits": rss_end,
                "after_faulty_edits": rss_faulty,
            },
            "memory_over_time": memory,
            "bench_process_rss_mib": _rss_mib(os.getpid()),
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
    parser.add_argument(
        "--duration-minutes", type=float, default=None,
        help="edit for this long (instead of --edits) and fit the operator's memory over it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    n = args.deployments or (20 if args.quick else 200)
    edits = args.edits or (20 if args.quick else 100)
    result = asyncio.run(_bench(n, edits, args.log, args.duration_minutes))
    base, faulty = result["edit"], result["edit_with_faults"]
    rss, memory = result["rss_mib"], result["memory_over_time"]
    if memory is not None:
        growth_30_min = abs(memory["slope_mib_per_min"]) * 30.0
        flat = growth_30_min <= FLAT_SHARE_PER_30_MIN * memory["start_mib"]
    else:
        flat = rss["after_faulty_edits"] <= 1.1 * rss["before_edits"]
    result["targets"] = {
        "p99_edit_under_2s": base["p99_s"] < TARGET_P99_S,
        "faults_move_no_p99": faulty["p99_s"] <= max(1.5 * base["p99_s"], base["p99_s"] + 0.5),
        "memory_flat": flat,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['deployments']} deployments planned in {result['plan_all_seconds']:.1f} s")
    per_pass = result["requests_per_deployment_per_pass"]
    print(
        f"API requests per deployment per pass: {per_pass:.2f}; writes while nothing "
        f"changed: {result['writes_in_quiet_window']} in {result['quiet_window_seconds']:g} s"
    )
    for label, e, count in (
        ("healthy", base, result["edits"]),
        ("with the misbehaving ones", faulty, result["faulty_edits"]),
    ):
        print(
            f"SLO edit to plan ({label}): p50 {e['p50_s']:.3f} s, p99 {e['p99_s']:.3f} s, "
            f"max {e['max_s']:.3f} s over {count} edits"
        )
    print(
        f"operator memory: {rss['before_edits']:.0f} MiB before the edits, "
        f"{rss['after_edits']:.0f} after, {rss['after_faulty_edits']:.0f} after the faulty ones"
    )
    if memory is not None:
        print(
            f"operator memory over {memory['minutes']:.1f} min of edits: "
            f"{memory['start_mib']:.1f} -> {memory['end_mib']:.1f} MiB, fitted "
            f"{memory['slope_mib_per_min']:+.3f} MiB/min "
            f"({memory['second_half_slope_mib_per_min']:+.3f} over the second half)"
        )
    met = ", ".join(f"{k} {'met' if v else 'missed'}" for k, v in result["targets"].items())
    print(f"targets: {met}")
    return 0
