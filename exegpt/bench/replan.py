"""``exegpt bench replan``: how long the operator takes from an SLO edit to the new plan
in the deployment's status.

For each model/task pair of the paper's matrix (analytic profile, the paper's
clusters), a deployment is created and planned with the 70th-percentile static
latency as its bound and its workers made ready; then ``spec.slo.latency`` is edited to
the 30th percentile, then the 10th, then removed, and each edit's reconcile pass is
timed: parse, profile lookup, XScheduler search, rendering and applying the children,
writing the status. The API is the in-memory one (``MemoryKube``), so the figure is
the operator's own latency, excluding API round trips and watch delivery (a few
milliseconds on a real cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from exegpt.operator.memkube import MemoryKube
from exegpt.operator.reconcile import Context, reconcile
from exegpt.operator.settings import OperatorSettings
from exegpt.operator.spec import API_VERSION, KIND
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.workload_presets import canonical_name

from .paper import MATRIX, QUICK, Pair, _request, static_latency_percentiles

TARGET_S = 1.0
KEY = ("exegptdeployments", "default", "bench")


def _body(pair: Pair, latency: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": pair.model},
        "hardware": {
            "gpus": pair.cluster.gpus,
            "gpuType": pair.cluster.gpu,
            "gpusPerNode": pair.cluster.gpus_per_node,
        },
        "workload": {"preset": canonical_name(pair.task)},
        "profiling": {"mode": "Analytic"},
    }
    if latency:
        spec["slo"] = {"latency": latency}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "bench", "namespace": "default", "uid": "bench", "generation": 1},
        "spec": spec,
    }


async def _scenario(pair: Pair) -> list[dict[str, Any]]:
    request = _request(pair, None)
    profile = analytic_profile(request.architecture, request.gpu)
    p10, p30, p70 = static_latency_percentiles(request, profile, (10, 30, 70))
    kube = MemoryKube()
    ctx = Context(kube=kube, settings=OperatorSettings(), events=lambda *_: None)
    kube.objects[KEY] = _body(pair, f"{p70:.4f}s")
    await reconcile(kube.objects[KEY], ctx)
    for (plural, _, _), obj in kube.objects.items():
        if plural == "statefulsets":
            n = obj["spec"]["replicas"]
            obj["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}
    rows = []
    for label, bound in (("p70->p30", p30), ("p30->p10", p10), ("p10->none", None)):
        body = kube.objects[KEY]
        before = (body.get("status") or {}).get("plan", {}).get("inputsHash")
        if bound is None:
            body["spec"].pop("slo", None)
        else:
            body["spec"]["slo"] = {"latency": f"{bound:.4f}s"}
        body["metadata"]["generation"] += 1
        start = time.perf_counter()
        outcome = await reconcile(body, ctx)
        seconds = time.perf_counter() - start
        status = kube.objects[KEY].get("status") or {}
        plan = status.get("plan") or {}
        conditions: list[dict[str, Any]] = status.get("conditions", [])
        planned = next((c for c in conditions if c["type"] == "Planned"), {})
        rows.append(
            {
                "scenario": pair.name,
                "edit": label,
                "bound_s": bound,
                "seconds": seconds,
                "search_seconds": plan.get("searchSeconds"),
                "replanned": plan.get("inputsHash") != before,
                "planned": planned.get("status") == "True",
                "strategy": plan.get("strategy"),
                "children_written": len(outcome.writes),
            }
        )
    return rows


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench replan", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="three model/task pairs only")
    args = parser.parse_args(argv)
    pairs = [p for p in MATRIX if not args.quick or p.name in QUICK]
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        rows.extend(asyncio.run(_scenario(pair)))
    secs = [r["seconds"] for r in rows]
    summary = {
        "edits": len(rows),
        "all_replanned": all(r["replanned"] and r["planned"] for r in rows),
        "seconds_max": max(secs),
        "seconds_mean": statistics.fmean(secs),
        "seconds_median": statistics.median(secs),
        "worst": max(rows, key=lambda r: r["seconds"])["scenario"],
        "target_s": TARGET_S,
        "target_met": max(secs) < TARGET_S,
    }
    if args.json:
        print(json.dumps({"rows": rows, "summary": summary}))
        return 0
    print(f"{'scenario':22} {'edit':10} {'bound s':>9} {'pass s':>7} {'search s':>8} "
          f"{'strategy':13} {'writes':>6}")  # fmt: skip
    for r in rows:
        bound = "none" if r["bound_s"] is None else f"{r['bound_s']:.3f}"
        print(
            f"{r['scenario']:22} {r['edit']:10} {bound:>9} {r['seconds']:7.3f} "
            f"{r['search_seconds'] or 0:8.3f} {r['strategy'] or '-':13} "
            f"{r['children_written']:6d}"
        )
    s = summary
    print(
        f"\n{s['edits']} SLO edits: replan to status in {s['seconds_median']:.3f} s median, "
        f"{s['seconds_max']:.3f} s max ({s['worst']}); target < {TARGET_S:g} s: "
        f"{'met' if s['target_met'] else 'missed'}"
    )
    return 0
