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
  with ``--duration-minutes M``, edits go on for M minutes while the operator's (and
  this process's) resident memory is sampled, and the fitted slope (MiB per minute) is
  reported with the first and last samples;
- the same edits again with three misbehaving deployments: one whose worker never
  answers its ``/metrics`` (a drift check is due every 30 s, the least the CRD allows),
  one whose API reads hang (answered after an hour) and one whose status writes are
  answered 422 for good. This phase lasts until the hung worker's deployment has been
  through two drift checks (and at least ``--edits`` edits), and reports what that
  deployment's status then says.

The emulator serves in this process, so a pause of this process (its garbage
collector, above all) delays every answer and shows in the edits' latency: the
emulator keeps only the last requests and the last versions of each object (a bounded
memory), and the result reports this process's stalls, its peak memory, and for each
edit over 2 s how much of it this process was stalled.

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
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from exegpt.operator import names as operator_names
from exegpt.operator.settings import OperatorSettings

from . import finite_json
from .stalls import Stalls, peak_rss_mib

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
# What the emulator keeps: the requests of the quiet window (a few thousand at 200
# deployments) with room to spare, and two versions of each object (a deleted one keeps
# its last state).
KEEP_REQUESTS = 20_000
KEEP_VERSIONS = 2
KEEP_EVENTS = 2_000  # the newest Events (an API server drops them after an hour)
DRIFT_INTERVAL_S = 30  # the hung worker's deployment: the least intervalSeconds allowed
DRIFT_CHECKS = 2  # the faulty phase lasts until that deployment has had this many
OPERATOR_STOP_S = 30.0  # SIGTERM, then this long for the operator to exit, then SIGKILL
SLOW_KEPT = 200  # slow edits listed in the result


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
async def _operator(
    url: str, log: Path, stop: dict[str, Any]
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The operator process, its output appended to ``log``; stopped as a pod is
    (SIGTERM, then SIGKILL after ``OPERATOR_STOP_S``), with ``stop`` told how: its exit
    code, the seconds it took, and the warnings and errors it logged meanwhile."""
    env = {
        **os.environ,
        "EXEGPT_KUBE_HOST": url,
        "EXEGPT_KUBE_INSECURE": "true",
        "EXEGPT_NAMESPACES": NAMESPACE,
        "EXEGPT_LIVENESS_ENDPOINT": "",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exegpt", "operator"], env=env, stdout=out, stderr=out
        )
        try:
            yield proc
        finally:
            logged = log.stat().st_size
            begin = time.monotonic()
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, OPERATOR_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
            stop.update(
                seconds=time.monotonic() - begin,
                exit_code=proc.returncode,
                killed=proc.returncode == -9,
                warnings_and_errors=_noted(log, logged),
            )


def _noted(log: Path, offset: int) -> list[str]:
    """The WARNING, ERROR and CRITICAL lines of ``log`` from ``offset`` on (the first
    300 characters of at most 50), and the exceptions' last lines."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").splitlines()
    noted = [
        line
        for line in lines
        if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL"))
        or line.startswith(("RuntimeError", "Traceback"))
    ]
    return [line[:300] for line in noted[:50]]


def _status(cluster: Any, name: str) -> dict[str, Any]:
    # Read in place (no copy): the bench polls every deployment.
    obj = cluster.peek(EXEGPT_API, "exegptdeployments", NAMESPACE, name) or {}
    return obj.get("status") or {}


def _bound(cluster: Any, name: str) -> float | None:
    value = (_status(cluster, name).get("plan") or {}).get("latencyBoundSeconds")
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


@dataclass(frozen=True)
class Edit:
    """One SLO edit: its number, when it was made (``time.monotonic``), and the seconds
    to its plan in status (None: not within ``EDIT_TIMEOUT_S``)."""

    index: int
    begin: float
    seconds: float | None

    @property
    def latency(self) -> float:
        """The seconds, ``inf`` for a timeout (it sorts last)."""
        return math.inf if self.seconds is None else self.seconds


async def _edit(cluster: Any, name: str, i: int) -> Edit:
    bound = _edit_bound(i)
    begin = time.monotonic()
    await cluster.patch_deployment(name, {"spec": {"slo": {"latency": f"{bound}s"}}})
    ok = await _wait(functools.partial(_has_bound, cluster, name, bound), EDIT_TIMEOUT_S, 0.02)
    edit = Edit(i, begin, time.monotonic() - begin if ok else None)
    took = f"{edit.seconds:.2f} s" if edit.seconds is not None else "timed out"
    _progress(f"edit {i}: {name} to {bound} s: {took}")
    return edit


async def _edits(cluster: Any, names: list[str], count: int, start: int) -> list[Edit]:
    """``count`` sequential SLO edits."""
    return [await _edit(cluster, names[i % len(names)], start + i) for i in range(count)]


async def _edits_for(
    cluster: Any, names: list[str], minutes: float, start: int, pid: int, every_s: float
) -> tuple[list[Edit], list[tuple[float, float, float]]]:
    """Sequential SLO edits for ``minutes``, the resident memory of the operator and of
    this process sampled every ``every_s`` seconds: (edits, [(minute, MiB, MiB)])."""
    out: list[Edit] = []
    samples: list[tuple[float, float, float]] = []
    begin = time.monotonic()
    end = begin + 60.0 * minutes

    def sample() -> None:
        samples.append(((time.monotonic() - begin) / 60.0, _rss_mib(pid), _rss_mib(os.getpid())))

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(sampler())
    try:
        i = start
        while time.monotonic() < end:
            out.append(await _edit(cluster, names[(i - start) % len(names)], i))
            i += 1
    finally:
        task.cancel()
    sample()
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


def percentiles(edits: list[Edit]) -> dict[str, Any]:
    """p50, p99 and max of the edits' latencies, a timed-out edit counting as longer
    than any (``inf``: null in JSON once it reaches a percentile), and the count of
    those timed out."""
    s = sorted(e.latency for e in edits)
    if not s:
        return {"p50_s": None, "p99_s": None, "max_s": None, "timed_out": 0}
    p99 = s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]
    return {
        "p50_s": s[(len(s) - 1) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2,
        "p99_s": p99,
        "max_s": s[-1],
        "timed_out": sum(e.seconds is None for e in edits),
    }


def _slow(edits: list[Edit], stalls: Stalls) -> dict[str, Any]:
    """The edits over the target (all those timed out included), each with the seconds
    of it this process was stalled (its loop or its collector)."""
    slow = [e for e in edits if e.latency > TARGET_P99_S]
    listed: list[dict[str, Any]] = [
        {
            "edit": e.index,
            "seconds": e.seconds,
            "bench_stalled_seconds": round(
                stalls.overlapping(e.begin, e.begin + (e.seconds or EDIT_TIMEOUT_S)), 3
            ),
        }
        for e in slow
    ]
    mostly = sum(1 for x in listed if x["bench_stalled_seconds"] >= 0.5 * (x["seconds"] or 0))
    return {
        "over_target": len(slow),
        "over_5s": sum(1 for e in slow if e.latency > 5.0),
        "mostly_bench_stalled": mostly,
        "edits": listed[:SLOW_KEPT],
    }


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


async def _hung_worker(cluster: Any, port: int) -> str:
    """A deployment whose ready workers never answer ``/metrics``: drift checks every
    ``DRIFT_INTERVAL_S`` hang until the operator's deadline."""
    name = "hung-worker"
    drift = {"mode": "Observe", "intervalSeconds": DRIFT_INTERVAL_S}
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


def _checked_at(cluster: Any, name: str) -> str | None:
    value = (_status(cluster, name).get("workload") or {}).get("checkedAt")
    return str(value) if value else None


def _conditions(cluster: Any, name: str, *types: str) -> dict[str, Any]:
    """The named conditions of a deployment's status: status, reason, message."""
    out: dict[str, Any] = {}
    for c in _status(cluster, name).get("conditions") or []:
        if c.get("type") in types:
            out[c["type"]] = {
                "status": c.get("status"),
                "reason": c.get("reason"),
                "message": str(c.get("message") or "")[:300],
            }
    return out


async def _faulty_edits(
    cluster: Any, names: list[str], start: int, least: int, worker: str
) -> tuple[list[Edit], list[str], float]:
    """Sequential SLO edits of ``names`` while the misbehaving deployments misbehave:
    at least ``least`` of them, and until ``worker`` has been through ``DRIFT_CHECKS``
    drift checks (or ``DRIFT_INTERVAL_S`` times their number plus two, at most):
    (edits, the check times seen, seconds)."""
    begin = time.monotonic()
    cap = begin + DRIFT_INTERVAL_S * (DRIFT_CHECKS + 2) + 60.0
    checks: list[str] = []
    out: list[Edit] = []
    i = start
    while len(out) < least or (len(checks) < DRIFT_CHECKS and time.monotonic() < cap):
        out.append(await _edit(cluster, names[(i - start) % len(names)], i))
        i += 1
        at = _checked_at(cluster, worker)
        if at is not None and at not in checks:
            checks.append(at)
            _progress(f"{worker}: drift check {len(checks)} at {at}")
    return out, checks, time.monotonic() - begin


async def _bench(
    n: int, edits: int, log: Path | None, minutes: float | None = None
) -> dict[str, Any]:
    h = _harness()
    stalls = Stalls()
    timed_out: list[str] = []
    stop: dict[str, Any] = {}
    with contextlib.ExitStack() as files:
        if log is None:
            log = Path(files.enter_context(tempfile.TemporaryDirectory())) / "operator.log"
        async with stalls.watching():
            result = await _measure(h, stalls, timed_out, log, stop, n, edits, minutes)
    result["operator_stop"] = stop
    return result


async def _measure(
    h: ModuleType,
    stalls: Stalls,
    timed_out: list[str],
    log: Path,
    stop: dict[str, Any],
    n: int,
    edits: int,
    minutes: float | None,
) -> dict[str, Any]:
    async with (
        h.running_cluster(
            keep_requests=KEEP_REQUESTS, keep_versions=KEEP_VERSIONS, keep_events=KEEP_EVENTS
        ) as cluster,
        _operator(cluster.url, log, stop) as proc,
        _silent_server() as silent,
    ):
        names = [f"d{i:03d}" for i in range(n)]
        begin = time.monotonic()
        for name in names:
            await cluster.create(_body(name))
        plan_deadline = 60.0 + 3.0 * n
        planned = await _wait(
            lambda: all(_bound(cluster, x) is not None for x in names), plan_deadline, 0.2
        )
        plan_all = time.monotonic() - begin if planned else float("inf")
        if not planned:
            missing = sum(_bound(cluster, x) is None for x in names)
            timed_out.append(f"plan_all: {missing} of {n} without a plan after {plan_deadline:g} s")
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
        bench_memory: dict[str, Any] | None = None
        if minutes:
            every = max(5.0, 60.0 * minutes / 200)
            base, series = await _edits_for(cluster, healthy, minutes, 0, proc.pid, every)
            memory = _memory([(t, m) for t, m, _ in series])
            bench_memory = _memory([(t, b) for t, _, b in series])
            _progress(
                f"{minutes:g} min of edits: {memory['start_mib']:.1f} -> "
                f"{memory['end_mib']:.1f} MiB, {memory['slope_mib_per_min']:+.3f} MiB/min"
            )
        else:
            base = await _edits(cluster, healthy, edits, 0)
        rss_end = _rss_mib(proc.pid)
        clean = percentiles(base)
        _progress(f"{len(base)} edits: p99 {clean['p99_s']:.3f} s")

        # A worker that never answers; a deployment whose API reads hang; another whose
        # status writes are refused for good.
        worker = await _hung_worker(cluster, silent)
        hung, refused = names[-1], names[-2]
        cluster.fail(
            "get", "configmaps", status=0, delay=3600, times=10**9,
            name=operator_names.plan_configmap(hung),
        )  # fmt: skip
        cluster.fail("patch", "exegptdeployments/status", status=422, times=10**9, name=refused)
        for name in (hung, refused):
            await cluster.patch_deployment(name, {"spec": {"slo": {"latency": "2.0s"}}})
        await asyncio.sleep(RESYNC_S)
        faulty, checks, faulty_s = await _faulty_edits(cluster, healthy, len(base), edits, worker)
        with_faults = percentiles(faulty)
        rss_faulty = _rss_mib(proc.pid)
        for label, phase in (("edits", clean), ("faulty_edits", with_faults)):
            if phase["timed_out"]:
                timed_out.append(
                    f"{label}: {phase['timed_out']} without their plan after {EDIT_TIMEOUT_S:g} s"
                )
        if len(checks) < DRIFT_CHECKS:
            timed_out.append(
                f"faulty phase: {worker} had {len(checks)} of {DRIFT_CHECKS} drift checks "
                f"in {faulty_s:.0f} s"
            )
        emulator = cluster.emulator
        return {
            "deployments": n,
            "plan_all_seconds": plan_all,
            "edits": len(base),
            "faulty_edits": len(faulty),
            "edit": clean,
            "edit_with_faults": with_faults,
            "slow_edits": _slow(base, stalls),
            "slow_faulty_edits": _slow(faulty, stalls),
            "faulty_phase": {
                "seconds": faulty_s,
                "edits": len(faulty),
                "clean_p99_s": clean["p99_s"],
                "faulty_p99_s": with_faults["p99_s"],
                "hung_worker": {
                    "name": worker,
                    "drift_interval_seconds": DRIFT_INTERVAL_S,
                    "drift_checks_seen": len(checks),
                    "checked_at": checks,
                    "conditions": _conditions(
                        cluster, worker, "WorkloadDrift", "Available", "Degraded"
                    ),
                },
                "hung_reads": {"name": hung, "conditions": _conditions(cluster, hung, "Degraded")},
                "refused_status_writes": {
                    "name": refused,
                    "conditions": _conditions(cluster, refused, "Degraded", "Planned"),
                },
            },
            "hung_worker_drift_condition": _conditions(cluster, worker, "WorkloadDrift")
            .get("WorkloadDrift", {})
            .get("reason"),
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
            "bench_process": {
                "rss_mib": _rss_mib(os.getpid()),
                "peak_rss_mib": peak_rss_mib(),
                "memory_over_time": bench_memory,
                "stalls": stalls.summary(),
            },
            "emulator": {
                "requests_served": len(emulator.request_log),
                "requests_kept": len(emulator.request_log) - emulator.request_log.first,
                "keep_requests": KEEP_REQUESTS,
                "versions_kept": emulator.versions_kept(),
                "keep_versions": KEEP_VERSIONS,
                "objects": len(emulator._objects),
                "keep_events": KEEP_EVENTS,
            },
            "timed_out": timed_out,
        }


def targets(p99: float | None, faulty_p99: float | None, memory_flat: bool) -> dict[str, bool]:
    """Whether the targets are met: p99 under 2 s, the misbehaving deployments moving
    the others' p99 by at most half again or 0.5 s, flat memory (a p99 that timed out
    or is missing meets none)."""
    met = {"p99_edit_under_2s": False, "faults_move_no_p99": False, "memory_flat": memory_flat}
    if p99 is None or not math.isfinite(p99):
        return met
    met["p99_edit_under_2s"] = p99 < TARGET_P99_S
    if faulty_p99 is not None and math.isfinite(faulty_p99):
        met["faults_move_no_p99"] = faulty_p99 <= max(1.5 * p99, p99 + 0.5)
    return met


def _s(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _names_except(names: list[str], last: int) -> list[str]:
    return names[: len(names) - last] if len(names) > last else names


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench operator", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="20 deployments, 20 edits")
    parser.add_argument("--deployments", type=int, default=None, help="default 200")
    parser.add_argument(
        "--edits", type=int, default=None,
        help="edits without --duration-minutes, and the least with the misbehaving "
        "deployments (default 100)",
    )  # fmt: skip
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
    result["targets"] = targets(base["p99_s"], faulty["p99_s"], flat)
    if args.json:
        print(finite_json.dumps(result))
        return 0
    print(
        f"{result['deployments']} deployments planned in {_s(result['plan_all_seconds'], '.1f')} s"
    )
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
            f"SLO edit to plan ({label}): p50 {_s(e['p50_s'])} s, p99 {_s(e['p99_s'])} s, "
            f"max {_s(e['max_s'])} s over {count} edits ({e['timed_out']} timed out)"
        )
    phase = result["faulty_phase"]
    worker = phase["hung_worker"]
    drift = worker["conditions"].get("WorkloadDrift") or {}
    print(
        f"faulty phase: {phase['seconds']:.0f} s; {worker['name']} had "
        f"{worker['drift_checks_seen']} drift checks, WorkloadDrift "
        f"{drift.get('status')} {drift.get('reason')}"
    )
    bench = result["bench_process"]
    print(
        f"this process (the emulator): {bench['rss_mib']:.0f} MiB, at most "
        f"{bench['peak_rss_mib']:.0f} MiB; longest loop stall "
        f"{bench['stalls']['max_loop_lag_seconds']:.2f} s"
    )
    for t in result["timed_out"]:
        print(f"timed out: {t}")
    stop = result["operator_stop"]
    print(
        f"operator stop: {stop['seconds']:.1f} s, exit code {stop['exit_code']}, "
        f"{len(stop['warnings_and_errors'])} warning or error lines meanwhile"
    )
    for line in stop["warnings_and_errors"]:
        print(f"  {line}")
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
