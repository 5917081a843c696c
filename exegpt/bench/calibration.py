"""``exegpt bench calibration``: the analytic cost model against measured GPU timings.

Prints, per GPU type and operator group, the median / 90th-percentile / worst absolute
percent error of the analytic time against the measured medians (vidur's Llama-2
kernel and NCCL timings), plus an out-of-sample check (GEMM constants fitted on
Llama-2-7B, error on Llama-2-70B). ``--fit`` re-fits the efficiency constants and
prints them in the form ``exegpt/planner/analytic.py`` hard-codes.

Also runnable as ``python -m exegpt.bench.calibration``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exegpt.planner.analytic import Efficiency
from exegpt.planner.calibration import (
    DATA_ENV,
    comm_report,
    compute_report,
    data_available,
    default_data_dir,
    fit_all,
    fitted_fields,
    format_constants,
    holdout_check,
    load_compute,
    load_network,
)

HOLDOUT = ("nvidia-a100-80gb", "llama-2-7b", "llama-2-70b")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exegpt bench calibration",
        description="Compare the analytic cost model with measured GPU timings.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"vidur data folder (default: ${DATA_ENV} or ../shared/data/vidur)",
    )
    p.add_argument(
        "--fit", action="store_true", help="re-fit the constants, print them, report their errors"
    )
    return p


def build_report(data_dir: Path, fit: bool = False) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    compute, network = load_compute(data_dir), load_network(data_dir)
    efficiencies: Mapping[str, Efficiency] | None = fit_all(data_dir) if fit else None
    comp = compute_report(compute, efficiencies)
    comm = comm_report(network, efficiencies)
    gpu, fit_on, test_on = HOLDOUT
    holdout = holdout_check(compute, gpu, fit_on, test_on)

    out: dict[str, Any] = {
        "data_dir": str(data_dir),
        "constants": "fitted now (--fit)" if fit else "hard-coded in planner/analytic.py",
        "compute": {},
        "overall": {k: v.as_dict() for k, v in comp["all"].items()},
        "all_reduce": {},
        "send_recv": {},
        "holdout": {
            "gpu": gpu,
            "fit_on": fit_on,
            "test_on": test_on,
            "linear": holdout.as_dict(),
        },
    }
    for g, stats in comp.items():
        if g == "all":
            continue
        out["compute"][g] = {
            "linear": stats["linear"].as_dict(),
            "elementwise": stats["elementwise"].as_dict(),
            "layer": stats["layer"].as_dict(),
            "ops": {k: v.as_dict() for k, v in stats.items() if "/" in k},
        }
    for g, stats in comm.items():
        out["all_reduce"][g] = {"all": stats["all_reduce"].as_dict()} | {
            k.split("/")[1]: v.as_dict() for k, v in stats.items() if k.startswith("all_reduce/")
        }
        out["send_recv"][g] = {
            "intra": stats["send_recv_intra"].as_dict(),
            "inter": stats["send_recv_inter"].as_dict(),
        }
    if efficiencies is not None:
        out["fitted"] = {g: fitted_fields(e) for g, e in sorted(efficiencies.items())}
        out["fitted_source"] = format_constants(efficiencies)
    return out


def _row(gpu: str, what: str, s: Mapping[str, Any]) -> str:
    return (
        f"{gpu:18s} {what:44s} {s['n']:6d} {s['median_pct_err']:8.1f} {s['p90_pct_err']:7.1f} "
        f"{s['worst_pct_err']:8.1f} {s['bias_pct']:+7.1f}   {s['worst_at']}"
    )


def format_table(report: Mapping[str, Any]) -> str:
    head = (
        f"{'GPU':18s} {'operators':44s} {'n':>6s} {'median%':>8s} {'p90%':>7s} "
        f"{'worst%':>8s} {'bias%':>7s}   worst at"
    )
    lines = [
        "Analytic cost model vs measured timings (absolute percent error of predicted time)",
        f"data: {report['data_dir']}",
        f"constants: {report['constants']}",
        "",
        head,
        "-" * len(head),
    ]
    for g, c in report["compute"].items():
        lines.append(_row(g, "linear (QKV, out, MLP up, down)", c["linear"]))
        lines.append(_row(g, "elementwise (norm, rope, act, add)", c["elementwise"]))
        lines.append(_row(g, "layer without attention (sum of ops)", c["layer"]))
        for op, s in c["ops"].items():
            lines.append(_row("", "  " + op, s))
    for group, s in report["overall"].items():
        lines.append(_row("all", group, s))
    lines.append("")
    for g, ar in report["all_reduce"].items():
        for k, s in ar.items():
            lines.append(_row(g, f"all-reduce {k}", s))
        for k, s in report["send_recv"][g].items():
            lines.append(_row(g, f"send/recv {k}-node", s))
    h = report["holdout"]
    lines.append("")
    lines.append(
        f"out of sample: GEMM constants fitted on {h['fit_on']} only, "
        f"error on {h['test_on']} ({h['gpu']}):"
    )
    lines.append(_row(h["gpu"], "linear", h["linear"]))
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    data_dir: Path = args.data or default_data_dir()
    if not data_available(data_dir):
        print(
            f"exegpt bench calibration: no calibration data in {data_dir} "
            f"(expected profiling/compute and profiling/network; set --data or ${DATA_ENV})",
            file=sys.stderr,
        )
        return 2
    report = build_report(data_dir, fit=args.fit)
    if args.json:
        print(json.dumps(report, sort_keys=False))
        return 0
    if args.fit:
        print("Fitted constants (paste into planner/analytic.py):")
        print(report["fitted_source"])
        print()
    print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
