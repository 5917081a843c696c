"""The report of ``exegpt bench runner``: the summary of its prediction errors over the
configurations, and the report as strict JSON or as a table for the console."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

TARGET_RATIO = 2.0
METRICS = ("throughput_qps", "latency_s", "e2e_p99_s")


def _stats(values: Sequence[float]) -> dict[str, float]:
    finite = [abs(v) for v in values if math.isfinite(v)]
    if not finite:
        return {"median_abs_pct": math.nan, "worst_abs_pct": math.nan}
    return {"median_abs_pct": statistics.median(finite), "worst_abs_pct": max(finite)}


def summarize(
    configs: Sequence[dict[str, Any]], bound: float, target_error_pct: float
) -> dict[str, Any]:
    """Errors per metric over the configurations (against ``target_error_pct``), and
    the ratio over static batching."""
    metrics = METRICS
    errors = {m: _stats([c["error_pct"][m] for c in configs]) for m in metrics}
    every = [c["error_pct"][m] for c in configs for m in metrics]
    overall = _stats(every)
    one = [c for c in configs if c.get("processes", 1) == 1]
    one_process = {m: _stats([c["error_pct"][m] for c in one]) for m in metrics}
    # the plan's figures for the workload against the same measurements (sampling noise in)
    of_workload = [c["workload_prediction"]["error_pct"] for c in one if "workload_prediction" in c]
    workload_one_process = {m: _stats([e[m] for e in of_workload]) for m in metrics}
    # the Poisson run repeated: how far its measured e2e p99 moved, and the replay's errors
    again = [a for c in one for a in c.get("poisson_again", [])]
    repeats = {
        "runs": len(again),
        "moved_pct": _stats([a["moved_pct"] for a in again]),
        "error_pct": _stats([a["error_pct"] for a in again]),
    }
    # the machine around each Poisson run, and the e2e p99 replayed at that speed
    speed = _machine_speed(one)
    by_role = {c["role"]: c for c in configs}
    ratio: dict[str, Any] = {"target": TARGET_RATIO, "bound_s": bound}
    plan, static = by_role.get("plan"), by_role.get("static")
    if plan is not None and static is not None:
        mp, ms = plan["measured"]["throughput_qps"], static["measured"]["throughput_qps"]
        # the planner's ratio: its predictions for the workload
        pp = plan["workload_prediction"]["predicted"]["throughput_qps"]
        ps = static["workload_prediction"]["predicted"]["throughput_qps"]
        ratio.update(
            plan_qps=mp, static_qps=ms, measured=mp / ms, predicted=pp / ps,
            plan_latency_s=plan["measured"]["latency_at_workload_p99_s"],
            static_latency_s=static["measured"]["latency_at_workload_p99_s"],
            plan_meets_bound=plan["meets_bound"], static_meets_bound=static["meets_bound"],
        )  # fmt: skip
        ratio["target_met"] = bool(mp / ms >= TARGET_RATIO)
    return {
        "errors_pct": errors,
        "overall_pct": overall,
        "errors_pct_one_process": one_process,
        "errors_pct_workload_one_process": workload_one_process,
        "target_error_pct": target_error_pct,
        # the target is for the profile's setting: one process (one thread) per replica
        "error_target_met": {
            m: bool(one_process[m]["worst_abs_pct"] < target_error_pct) for m in metrics
        },
        "ratio_over_static": ratio,
        "poisson_repeats_one_process": repeats,
        "machine_speed_one_process": speed,
        "machine_speed": _machine_speed(configs),
        "by_role": by_role_summary(configs),
    }


def _machine_speed(configs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The probe's readings around the configurations' Poisson runs, in percent slower
    than their profiles priced, and the e2e p99 replay's error at that speed."""
    probed = [c["machine_speed"] for c in configs if c.get("machine_speed")]
    return {
        "ratio_before": _stats([100 * (p["ratio_before"] - 1) for p in probed]),
        "ratio_after": _stats([100 * (p["ratio_after"] - 1) for p in probed]),
        "e2e_error_pct_at_probed_speed": _stats([p["error_pct"] for p in probed]),
    }


def by_role_summary(configs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per role, over its rounds: the prediction errors per metric, how far each
    measurement moved from the role's first round (``moved_pct``: the drift of the
    machine and of the measurement, beside the error) and the speed probe's readings
    (percent slower than the profile priced, before and after each Poisson run)."""
    out: dict[str, dict[str, Any]] = {}
    for role in dict.fromkeys(c["role"] for c in configs):
        rows = sorted((c for c in configs if c["role"] == role), key=lambda c: c.get("round", 0))
        first = rows[0]["measured"]
        probes = [c["machine_speed"] for c in rows if c.get("machine_speed")]
        out[role] = {
            "strategy": rows[0].get("strategy"),
            "chosen": rows[0].get("chosen", "planner"),
            "processes": rows[0].get("processes", 1),
            "rounds": len(rows),
            "errors_pct": {m: _stats([c["error_pct"][m] for c in rows]) for m in METRICS},
            "moved_pct": {
                m: _stats([_moved(c["measured"][m], first[m]) for c in rows[1:]]) for m in METRICS
            },
            "probe_slower_pct": _stats(
                [100 * (p[k] - 1) for p in probes for k in ("ratio_before", "ratio_after")]
            ),
        }
    return out


def _moved(value: float, first: float) -> float:
    if not (math.isfinite(value) and math.isfinite(first) and first > 0):
        return math.nan
    return 100.0 * (value - first) / first


# -- output -----------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    """``x`` with NaN and infinities as null (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _steps_line(steps: dict[str, Any]) -> str:
    parts = []
    d, e = steps.get("decode"), steps.get("encode")
    if d:
        parts.append(
            f"decode {1e3 * d['mean_seconds']:.2f} ms at batch {d['mean_batch']:.1f} "
            f"(model {1e3 * d['model_seconds']:.2f} ms)"
        )
    if e:
        parts.append(
            f"encode {1e3 * e['mean_seconds']:.1f} ms at batch {e['mean_batch']:.1f} "
            f"(model {1e3 * e['model_seconds']:.1f} ms at the {e['model_at']})"
        )
    g = steps.get("engine")
    if g:
        parts.append(
            f"engine {1e6 * g['seconds_per_step']:.0f} us per step, "
            f"{1e6 * g['between_steps_s']:.0f} between steps "
            f"(profile {1e6 * g['model_seconds']:.0f} us)"
        )
    return "steps: " + "; ".join(parts)


def format_table(report: dict[str, Any]) -> str:
    w = 48
    lines = [
        f"{report['model']['name']} on {report['environment']['cpus']} CPU core(s), "
        f"workload {report['workload']['name']}, bound {report['latency_bound_s']:.3f} s "
        f"({report['bound_rule']})",
        "",
        f"{'role':15} {'configuration':{w - 16}} {'metric':17} {'predicted':>10} "
        f"{'measured':>10} {'error %':>8}",
    ]
    names = (("throughput_qps", "throughput q/s", ".2f"), ("latency_s", "p99-len latency s",
             ".3f"), ("e2e_p99_s", "e2e p99 s", ".3f"))  # fmt: skip
    for c in report["configs"]:
        summary = c["summary"] if len(c["summary"]) <= w - 16 else c["summary"][: w - 18] + ".."
        role = c["role"] + (f" #{c.get('round', 0) + 1}" if report.get("rounds", 1) > 1 else "")
        for i, (key, label, fmt) in enumerate(names):
            head = f"{role:15} {summary:{w - 16}}" if i == 0 else " " * w
            lines.append(
                f"{head} {label:17} {_num(c['predicted'][key], fmt):>10} "
                f"{_num(c['measured'][key], fmt):>10} {_num(c['error_pct'][key], '+.1f'):>8}"
            )
        m = c["measured"]
        lat = c["latency_measurement"]
        wp = c["workload_prediction"]
        lines.append(
            f"{'':{w}} for the workload (new draws): "
            + ", ".join(
                f"{_num(wp['predicted'][key], fmt)} ({_num(wp['error_pct'][key], '+.1f')} %)"
                for key, _, fmt in names
            )
        )
        lines.append(
            f"{'':{w}} {'TTFT median/p99 s':17} {'':>10} "
            f"{_num(m['ttft_median_s'], '.3f')}/{_num(m['ttft_p99_s'], '.3f')}"
        )
        lines.append(
            f"{'':{w}} latency at {lat['p99_length']} tokens (the served p99): {lat['method']} "
            f"of {lat['requests']} requests; at {lat['workload_p99_length']} tokens "
            f"{_num(m['latency_at_workload_p99_s'], '.3f')} s "
            f"{'meets' if c['meets_bound'] else 'misses'} the bound; "
            f"{c['processes']} process(es)"
        )
        if len(c.get("ranks", [])) > 1:
            lines.append(
                f"{'':{w}} processes: "
                + ", ".join(
                    f"{r['chain']} stage {r['stage']} (pid {r['pid']}, CPU {r['cpu_s']:.1f} s)"
                    for r in c["ranks"]
                )
            )
        lines.append(f"{'':{w}} {_steps_line(c['steps'])}")
        lines.append(f"{'':{w}} Poisson run's {_steps_line(c['poisson_steps'])}")
        for a in c.get("poisson_again", []):
            lines.append(
                f"{'':{w}} the Poisson run again: e2e p99 {_num(a['e2e_p99_s'], '.3f')} s "
                f"({_num(a['moved_pct'], '+.1f')} % from the first), predicted "
                f"{_num(a['predicted_e2e_p99_s'], '.3f')} s ({_num(a['error_pct'], '+.1f')} %)"
            )
        speed = c.get("machine_speed")
        if speed:
            lines.append(
                f"{'':{w}} the machine against the profile's steps: "
                f"{_num(100 * (speed['ratio_before'] - 1), '+.1f')} % before the Poisson run, "
                f"{_num(100 * (speed['ratio_after'] - 1), '+.1f')} % after; e2e p99 replayed "
                f"at that speed {_num(speed['predicted_e2e_p99_s'], '.3f')} s "
                f"({_num(speed['error_pct'], '+.1f')} %)"
            )
    s = report["summary"]
    lines.append("")
    for key, label, _ in names:
        e, one = s["errors_pct"][key], s["errors_pct_one_process"][key]
        lines.append(
            f"{label:18} error: median {_num(e['median_abs_pct'], '.1f')} %, worst "
            f"{_num(e['worst_abs_pct'], '.1f')} %; one-process configurations: median "
            f"{_num(one['median_abs_pct'], '.1f')} %, worst {_num(one['worst_abs_pct'], '.1f')} % "
            f"(target < {s['target_error_pct']:g} %: "
            f"{'met' if s['error_target_met'][key] else 'missed'}); "
            f"the workload's prediction: worst "
            f"{_num(s['errors_pct_workload_one_process'][key]['worst_abs_pct'], '.1f')} %"
        )
    rp = s["poisson_repeats_one_process"]
    if rp["runs"]:
        lines.append(
            f"the Poisson runs repeated ({rp['runs']}): measured e2e p99 moved by "
            f"{_num(rp['moved_pct']['median_abs_pct'], '.1f')} % (median), "
            f"{_num(rp['moved_pct']['worst_abs_pct'], '.1f')} % (worst); their prediction "
            f"error: worst {_num(rp['error_pct']['worst_abs_pct'], '.1f')} %"
        )
    ms = s["machine_speed_one_process"]["e2e_error_pct_at_probed_speed"]
    if math.isfinite(ms["worst_abs_pct"]):
        lines.append(
            f"e2e p99 replayed at the speed the probe read around each Poisson run: error "
            f"median {_num(ms['median_abs_pct'], '.1f')} %, worst "
            f"{_num(ms['worst_abs_pct'], '.1f')} % (a diagnostic; the target is judged above)"
        )
    for role, b in s.get("by_role", {}).items():
        errs = ", ".join(
            f"{label} {_num(b['errors_pct'][key]['median_abs_pct'], '.1f')} %"
            for key, label, _ in names
        )
        moved = ", ".join(
            f"{_num(b['moved_pct'][key]['worst_abs_pct'], '.1f')} %" for key, _, _ in names
        )
        lines.append(
            f"{role} ({b['chosen']}, {b['processes']} process(es), {b['rounds']} round(s)): "
            f"median error {errs}; measured moved between rounds (worst) {moved}; the probe "
            f"read the machine {_num(b['probe_slower_pct']['median_abs_pct'], '.1f')} % "
            f"(median), {_num(b['probe_slower_pct']['worst_abs_pct'], '.1f')} % (worst) off "
            "the profile's speed"
        )
    r = s["ratio_over_static"]
    if "measured" in r:
        lines.append(
            f"plan / static throughput: {r['measured']:.2f}x measured "
            f"({r['plan_qps']:.2f} / {r['static_qps']:.2f} q/s), {r['predicted']:.2f}x "
            f"predicted; target >= {r['target']:g}x: {'met' if r['target_met'] else 'missed'}; "
            f"measured latency {r['plan_latency_s']:.3f} s (plan) and "
            f"{r['static_latency_s']:.3f} s (static) against the {r['bound_s']:.3f} s bound"
        )
    for note in report["notes"]:
        lines.append(f"note: {note}")
    lines.append(
        f"({report['seconds']:.0f} s, of which profiling {report['profile_seconds']:.0f} s)"
    )
    return "\n".join(lines)
