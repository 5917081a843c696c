"""``exegpt bench repricing``: the plans of an earlier ``exegpt bench paper --json``
record, priced again by the current simulator.

A plan chosen under one pricing keeps its configuration; what changes is what the
simulator now predicts for it. For every scenario whose plan is a multi-stage
RoundRobin pipeline (``--all``: every plan) this prints the throughput and p99-length
latency then and now, the cycle's change (the ratio of the two throughputs) and
whether the plan still meets its scenario's bound. With ``--json``, one JSON object.

    exegpt bench repricing --record OLD_PAPER.json [--json] [--all] [--engine vLLM]
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import cache
from pathlib import Path
from typing import Any

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import Engine, ExecutionConfig, PlanRequest
from exegpt.planner.profile import Profile
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload_presets import get_workload


@cache
def _profile(model: str, gpu: str) -> Profile:
    return analytic_profile(get_architecture(model), get_gpu(gpu))


def reprice(scenario: dict[str, Any], engine: Engine = "ExeGPT") -> dict[str, Any] | None:
    """One scenario of a paper record, its plan priced again for ``engine``; None
    without a plan."""
    plan = scenario.get("exegpt")
    if not plan:
        return None
    config = ExecutionConfig(**plan["config"])
    request = PlanRequest(
        architecture=get_architecture(scenario["model"]),
        gpu=get_gpu(scenario["gpu"]),
        gpus=scenario["gpus"],
        gpus_per_node=scenario["gpus_per_node"],
        workload=get_workload(scenario["task"]),
        latency_bound_s=scenario["bound_s"],
        engine=engine,
    )
    now = Simulator(request, _profile(scenario["model"], scenario["gpu"])).evaluate(config)
    bound = scenario["bound_s"]
    return {
        "id": scenario["id"],
        "plan": plan["summary"],
        "multi_stage_round_robin": config.strategy == "RoundRobin" and config.pipeline_stages > 1,
        "qps_then": plan["throughput_qps"],
        "qps_now": now.throughput_qps,
        "cycle_change_pct": 100.0 * (plan["throughput_qps"] / now.throughput_qps - 1.0),
        "latency_then_s": plan["latency_s"],
        "latency_now_s": now.latency_s,
        "bound_s": bound,
        "exceeds_bound_now": bound is not None and now.latency_s > bound,
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="exegpt bench repricing", description=__doc__)
    parser.add_argument("--record", type=Path, required=True, help="a paper --json record")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--all", action="store_true", help="every plan, not only multi-stage RR")
    parser.add_argument(
        "--engine",
        choices=("ExeGPT", "vLLM"),
        default="ExeGPT",
        help="price for this engine (vLLM: overlapped pipeline steps)",
    )
    args = parser.parse_args(argv)
    record = json.loads(args.record.read_text())
    priced = (reprice(s, args.engine) for s in record["scenarios"])
    rows = [r for r in priced if r is not None]
    if not args.all:
        rows = [r for r in rows if r["multi_stage_round_robin"]]
    changes = [r["cycle_change_pct"] for r in rows]
    bounded = [r for r in rows if r["bound_s"] is not None]
    summary = {
        "plans": len(rows),
        "cycle_change_pct": {
            "min": min(changes, default=0.0),
            "median": statistics.median(changes) if changes else 0.0,
            "max": max(changes, default=0.0),
        },
        "bounded": len(bounded),
        "exceed_bound_now": sum(r["exceeds_bound_now"] for r in bounded),
    }
    if args.json:
        out = {"record": str(args.record), "engine": args.engine, "rows": rows, "summary": summary}
        print(json.dumps(out))
        return 0
    print(f"{'scenario':22} {'plan':36} {'q/s then':>9} {'q/s now':>9} {'cycle':>7} "
          f"{'lat then':>8} {'lat now':>8} {'bound':>7}")  # fmt: skip
    for r in rows:
        bound = "none" if r["bound_s"] is None else f"{r['bound_s']:.3g}"
        flag = " EXCEEDS" if r["exceeds_bound_now"] else ""
        print(
            f"{r['id']:22} {r['plan'][:36]:36} {r['qps_then']:9.2f} {r['qps_now']:9.2f} "
            f"{r['cycle_change_pct']:+6.1f}% {r['latency_then_s']:8.3f} "
            f"{r['latency_now_s']:8.3f} {bound:>7}{flag}"
        )
    c = summary["cycle_change_pct"]
    print(
        f"\n{summary['plans']} plans: cycle {c['min']:+.1f} % to {c['max']:+.1f} % "
        f"(median {c['median']:+.1f} %); {summary['exceed_bound_now']} of "
        f"{summary['bounded']} bounded scenarios now exceed their bound"
    )
    return 0
