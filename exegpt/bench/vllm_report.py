"""The report of ``exegpt bench vllm``: the plan's throughput over the baselines'
within each round, the summary of the prediction errors and targets, and the table
for the console."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from exegpt.bench.report import METRICS, _stats, by_role_summary, summarize

TARGET_OVER_VLLM = 1.3  # on the tight bound; never below 1.0 on any
TARGET_OVER_STATIC = 2.0
TARGET_ERROR_PCT = 10.0  # median absolute error per metric


def ratios(rows: Sequence[dict[str, Any]], base: str, bound: float) -> dict[str, Any]:
    """The plan's throughput over ``base``'s, measured in each round (both in the same
    round) and predicted (the planner's figures for the workload): per round, and
    their median.

    Where the plan is ``base``'s configuration (the planner chose stock vLLM, or
    Static), the plan runs the same servers as the baseline: the ratio is 1 by
    identity. The two rows are still served; their quotient is reported as
    ``served_twice``, what the machine's drift alone makes of one configuration."""
    per_round = []
    same = False
    for turn in sorted({r.get("round", 0) for r in rows}):
        by = {r["role"]: r for r in rows if r.get("round", 0) == turn}
        plan, other = by.get("plan"), by.get(base)
        if plan is None or other is None:
            continue
        same = plan["config"] == other["config"]
        mp, mb = plan["measured"]["throughput_qps"], other["measured"]["throughput_qps"]
        pp = plan["workload_prediction"]["predicted"]["throughput_qps"]
        pb = other["workload_prediction"]["predicted"]["throughput_qps"]
        per_round.append({
            "round": turn, "plan_qps": mp, f"{base}_qps": mb,
            "measured": 1.0 if same else mp / mb, "predicted": 1.0 if same else pp / pb,
            **({"served_twice": mp / mb} if same else {}),
            "plan_meets_bound": plan["meets_bound"],
            f"{base}_meets_bound": other["meets_bound"],
        })  # fmt: skip
    if not per_round:
        return {"bound_s": bound}
    out = {
        "bound_s": bound,
        "same_configuration": same,
        "measured": statistics.median(r["measured"] for r in per_round),
        "predicted": statistics.median(r["predicted"] for r in per_round),
        "rounds": per_round,
    }
    if same:
        out["served_twice"] = statistics.median(r["served_twice"] for r in per_round)
    return out


def speed_readings(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where the machine's speed was read right before each load (``vllm_speed.py``):
    the errors of the rows predicted at those speeds, beside the judged ones (from the
    profile as measured at the start of the run), the factors read (over the profile's
    time per step) and how far the machine moved while a closed loop ran."""
    read = [r["speed_reading"] for r in rows if r.get("speed_reading")]
    if not read:
        return {}
    at_read = [m["at_speed_read"]["error_pct"] for m in read]
    factors = [m[f"{load}_factor"] for m in read for load in ("poisson", "closed")]
    lone = [m["lone_factor"] for m in read]
    moved = [m["moved_pct"] for m in read if m["moved_pct"] is not None]
    return {
        "errors_pct_at_speed_read": {k: _stats([e[k] for e in at_read]) for k in METRICS},
        "speed_readings": {
            "rows": len(read),
            "factor_before_min": min(factors),
            "factor_before_max": max(factors),
            "lone_factor_min": min(lone),
            "lone_factor_max": max(lone),
            "moved_during_row_pct": _stats(moved),
        },
    }


def summary(rows: Sequence[dict[str, Any]], bounds: dict[str, float]) -> dict[str, Any]:
    """Prediction errors per metric over every configuration (pipeline and WA rows
    included), the ratios over stock vLLM and Static per bound (the tight one at the
    top level), whether the plan met its bound, and the drift between rounds."""
    base = summarize(rows, bounds.get("tight", math.nan), TARGET_ERROR_PCT)
    per_bound: dict[str, Any] = {}
    for name, bound in bounds.items():
        these = [r for r in rows if r.get("bound") == name]
        per_bound[name] = {
            "bound_s": bound,
            "ratio_over_vllm": ratios(these, "vllm", bound),
            "ratio_over_static": ratios(these, "static", bound),
            "plan_meets_bound": all(r["meets_bound"] for r in these if r["role"] == "plan"),
            "by_role": by_role_summary(these),
        }
    first = per_bound[next(iter(bounds))]
    over_vllm = [b["ratio_over_vllm"].get("measured", math.nan) for b in per_bound.values()]
    tight = per_bound.get("tight", first)
    errors = base["errors_pct"]
    bare = [
        r["without_server_overhead"]["error_pct"] for r in rows if r.get("without_server_overhead")
    ]
    return {
        "errors_pct": errors,
        **speed_readings(rows),
        "overall_pct": base["overall_pct"],
        "target_error_pct": TARGET_ERROR_PCT,
        "error_target_met": {
            m: bool(e["median_abs_pct"] <= TARGET_ERROR_PCT) for m, e in errors.items()
        },
        "errors_pct_workload": base["errors_pct_workload_one_process"],
        "errors_pct_without_server_overhead": {m: _stats([e[m] for e in bare]) for m in errors},
        "ratio_over_vllm": tight["ratio_over_vllm"],
        "ratio_over_static": tight["ratio_over_static"],
        "plan_meets_bound": all(b["plan_meets_bound"] for b in per_bound.values()),
        "targets": {
            "over_vllm_tight": TARGET_OVER_VLLM,
            "over_vllm_tight_met": bool(
                tight["ratio_over_vllm"].get("measured", math.nan) >= TARGET_OVER_VLLM
            ),
            "over_vllm_never_below_1": bool(all(r >= 1.0 for r in over_vllm if r == r)),
            "over_static": TARGET_OVER_STATIC,
            "over_static_met": bool(
                tight["ratio_over_static"].get("measured", math.nan) >= TARGET_OVER_STATIC
            ),
        },
        "bounds": per_bound,
    }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def format_table(report: dict[str, Any]) -> str:
    names = (("throughput_qps", "throughput q/s", ".2f"), ("latency_s", "p99-len latency s",
             ".3f"), ("e2e_p99_s", "e2e p99 s", ".3f"))  # fmt: skip
    bounds = ", ".join(f"{k} {v:.3f} s" for k, v in report["latency_bounds_s"].items())
    lines = [
        f"{report['model']['name']} on {report['engine']}, {report['environment']['cpus']} "
        f"CPU core(s); workload {report['workload']['name']}; bounds {bounds}",
        "",
        f"{'bound/role':22} {'configuration':34} {'metric':17} {'predicted':>10} "
        f"{'measured':>10} {'error %':>8}",
    ]
    for c in report["configs"]:
        head = f"{c['bound']}/{c['role']} #{c['round'] + 1}"
        for i, (key, label, fmt) in enumerate(names):
            left = f"{head:22} {c['summary'][:34]:34}" if i == 0 else " " * 57
            lines.append(
                f"{left} {label:17} {_num(c['predicted'][key], fmt):>10} "
                f"{_num(c['measured'][key], fmt):>10} {_num(c['error_pct'][key], '+.1f'):>8}"
            )
        m, s = c["measured"], c.get("steps", {})
        lines.append(
            f"{'':57} TTFT median/p99 {_num(m['ttft_median_s'], '.3f')}/"
            f"{_num(m['ttft_p99_s'], '.3f')} s; latency at the workload's p99 "
            f"{_num(m['latency_at_workload_p99_s'], '.3f')} s "
            f"({'meets' if c['meets_bound'] else 'misses'} the bound)"
        )
        if s:
            lines.append(
                f"{'':57} engine: {s['steps']:.0f} steps, {s['mean_decode_batch']:.1f} decodes "
                f"per step, {1e3 * s['seconds_per_step']:.2f} ms per step against the "
                f"{1e3 * s['profile_step_s']:.2f} ms priced "
                f"({_num(s['over_profile_pct'], '+.0f')} %); client CPU "
                f"{100 * c['client']['cpu_fraction']:.0f} % of a core"
            )
    summ = report["summary"]
    lines.append("")
    for key, label, _ in names:
        e = summ["errors_pct"][key]
        lines.append(
            f"{label:18} error: median {_num(e['median_abs_pct'], '.1f')} %, worst "
            f"{_num(e['worst_abs_pct'], '.1f')} % (target median <= "
            f"{summ['target_error_pct']:g} %: "
            f"{'met' if summ['error_target_met'][key] else 'missed'})"
        )
    if "speed_readings" in summ:
        ms = summ["speed_readings"]
        moved = ms["moved_during_row_pct"]
        lines.append(
            f"the machine's speed read before each load, at its batch: "
            f"{ms['factor_before_min']:.2f}x to {ms['factor_before_max']:.2f}x the profile's "
            f"time per step (a lone request: {ms['lone_factor_min']:.2f}x to "
            f"{ms['lone_factor_max']:.2f}x); it moved by {_num(moved['median_abs_pct'], '.1f')} "
            f"% (worst {_num(moved['worst_abs_pct'], '.1f')} %) while a closed loop ran"
        )
    if "errors_pct_at_speed_read" in summ:
        for key, label, _ in names:
            e = summ["errors_pct_at_speed_read"][key]
            lines.append(
                f"{label:18} error predicted at the speeds read: median "
                f"{_num(e['median_abs_pct'], '.1f')} %, worst {_num(e['worst_abs_pct'], '.1f')} %"
            )
    for name, b in summ["bounds"].items():
        for base in ("vllm", "static"):
            r = b[f"ratio_over_{base}"]
            if "measured" in r and r.get("same_configuration"):
                lines.append(
                    f"{name} bound ({r['bound_s']:.3f} s): the plan is the {base} "
                    f"configuration (1.00x); served twice, it measured {r['served_twice']:.2f}x "
                    "itself"
                )
            elif "measured" in r:
                lines.append(
                    f"{name} bound ({r['bound_s']:.3f} s): plan / {base} throughput "
                    f"{r['measured']:.2f}x measured, {r['predicted']:.2f}x predicted"
                )
        lines.append(f"{name} bound: the plan {'meets' if b['plan_meets_bound'] else 'misses'} it")
        for role, br in b["by_role"].items():
            moved = ", ".join(
                f"{_num(br['moved_pct'][k]['worst_abs_pct'], '.1f')} %" for k, _, _ in names
            )
            lines.append(f"  {role}: measured moved between rounds (worst) {moved}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    p = report["profile"]
    for point in p["serving_overhead"]:
        lines.append(
            f"server step at batch {point['batch']}: {1e3 * point['server_step_s']:.2f} ms, "
            f"the profile's model step {1e3 * point['model_step_s']:.2f} ms: serving adds "
            f"{1e3 * point['overhead_s']:.2f} ms"
        )
    for role, shape in p.get("serving_overhead_by_shape", {}).items():
        if "failed" in shape:
            lines.append(f"{role} servers' steps: not measured ({shape['failed']})")
            continue
        adds = ", ".join(
            f"{1e3 * point['overhead_s']:.2f} ms at batch {point['batch']}"
            for point in shape["points"]
        )
        lines.append(f"{role} servers ({shape['servers']}): serving adds per stage {adds}")
    lines.append(
        f"({report['seconds']:.0f} s: the profile {p['seconds']:.0f} s after its engine's "
        f"start of {p['engine_start_s']:.0f} s, the server's overhead "
        f"{p['serving_overhead_seconds']:.0f} s; load average "
        f"{', '.join(f'{x:.2f}' for x in report['environment']['load_average'])})"
    )
    return "\n".join(lines)
