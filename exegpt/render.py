"""Plans as a JSON document and as a readable table (pure functions, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from exegpt.planner.describe import config_summary as config_summary
from exegpt.planner.plan import (
    Candidate,
    ExecutionConfig,
    Infeasible,
    Plan,
    PlanRequest,
    Prediction,
)
from exegpt.planner.workload import Workload

GIB = 1024**3
BASELINES = (("Static", "static"), ("Continuous", "continuous"))


def _finite(x: float | None) -> float | None:
    """JSON has no NaN or infinity: such values become null."""
    if x is None or not math.isfinite(x):
        return None
    return x


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return _finite(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def config_to_dict(config: ExecutionConfig) -> dict[str, Any]:
    out = config.model_dump(mode="json")
    out["gpus_per_replica"] = config.gpus_per_replica
    out["total_gpus"] = config.total_gpus
    return out


def prediction_to_dict(predicted: Prediction) -> dict[str, Any]:
    out = predicted.model_dump(mode="json")
    out["memory_per_gpu_gib"] = predicted.memory_per_gpu_bytes / GIB
    return out


def candidate_to_dict(candidate: Candidate) -> dict[str, Any]:
    """A candidate as the prediction's fields plus ``strategy`` and ``config``."""
    return {
        "strategy": candidate.config.strategy,
        **prediction_to_dict(candidate.predicted),
        "config": config_to_dict(candidate.config),
    }


def workload_to_dict(workload: Workload) -> dict[str, Any]:
    def dist(d: Any, p99: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": d.mean, "std": d.std, "max": d.max}
        if p99:
            out["p99"] = d.percentile(99)
        return out

    return {
        "name": workload.name,
        "input": dist(workload.input, False),
        "output": dist(workload.output, True),
        "correlation": workload.correlation,
    }


def request_to_dict(request: PlanRequest) -> dict[str, Any]:
    return {
        "model": request.architecture.name,
        "dtype": request.dtype,
        "gpu_type": request.gpu.name,
        "gpus": request.gpus,
        "gpus_per_node": request.gpus_per_node,
        "strategy": request.strategy,
        "engine": request.engine,
        "latency_bound_s": request.latency_bound_s,
        "latency_margin": request.latency_margin,
        "min_gain": request.min_gain,
        "workload": workload_to_dict(request.workload),
    }


def _ratio(a: float, b: float | None) -> float | None:
    if b is None or b <= 0 or not math.isfinite(a) or not math.isfinite(b):
        return None
    return a / b


def _clean_doc(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _clean(doc)
    return out


def plan_to_dict(result: Plan | Infeasible, request: PlanRequest) -> dict[str, Any]:
    """The plan document (``exegpt plan --json``).

    For a ``Plan``: ``kind``, ``strategy``, ``config``, ``predicted`` (every
    ``Prediction`` field), ``baselines`` (``static`` / ``continuous``: the best such
    configuration under the same bound, as prediction fields plus ``config``, or
    null), ``ratios`` (ExeGPT's throughput over each baseline's), ``search``,
    ``alternatives``, ``latency_bound_s``, ``reason`` and ``request``.
    For an ``Infeasible``: ``kind``, ``latency_bound_s``, ``best_latency_s``,
    ``message``, ``best`` (or null), ``search`` and ``request``.
    Non-finite numbers are written as null, so the document is strict JSON.
    """
    search = result.search.model_dump(mode="json")
    if isinstance(result, Infeasible):
        return _clean_doc(
            {
                "kind": "Infeasible",
                "latency_bound_s": result.latency_bound_s,
                "best_latency_s": result.best_latency_s,
                "message": result.message,
                "best": candidate_to_dict(result.best) if result.best else None,
                "search": search,
                "request": request_to_dict(request),
            }
        )
    baselines: dict[str, Any] = {}
    ratios: dict[str, float | None] = {}
    for key, name in BASELINES:
        cand = result.baselines.get(key)
        baselines[name] = candidate_to_dict(cand) if cand is not None else None
        ratios[f"over_{name}"] = _ratio(
            result.predicted.throughput_qps,
            cand.predicted.throughput_qps if cand is not None else None,
        )
    return _clean_doc(
        {
            "kind": "Plan",
            "strategy": result.strategy,
            "engine": result.engine,
            "config": config_to_dict(result.config),
            "predicted": prediction_to_dict(result.predicted),
            "baselines": baselines,
            "ratios": ratios,
            "search": search,
            "alternatives": [candidate_to_dict(c) for c in result.alternatives],
            "latency_bound_s": result.latency_bound_s,
            "reason": result.reason,
            "request": request_to_dict(request),
        }
    )


# -- the table ----------------------------------------------------------------------------


def _num(x: float | None, fmt: str = ".2f") -> str:
    x = _finite(x)
    return "-" if x is None else format(x, fmt)


def _seconds(x: float | None) -> str:
    x = _finite(x)
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _header(request: PlanRequest) -> list[str]:
    a, w = request.architecture, request.workload
    params = a.total_params() / 1e9
    bound = (
        "none (maximum throughput)"
        if request.latency_bound_s is None
        else f"{_seconds(request.latency_bound_s)} to generate a p99-length output "
        f"({w.output.percentile(99)} tokens)"
    )
    if request.planning_bound_s is not None and request.latency_margin:
        bound += (
            f"; planned within {_seconds(request.planning_bound_s)} "
            f"({request.latency_margin:.0%} kept free)"
        )
    rows = [
        ("model", f"{a.name} ({params:.1f}B parameters, {request.dtype})"),
        (
            "hardware",
            f"{request.gpus} x {request.gpu.name} ({request.gpus_per_node} per node, "
            f"{request.gpu.memory_gib:.0f} GiB each)",
        ),
        (
            "workload",
            f"{w.name}: input mean {w.input.mean:.0f} max {w.input.max}; output mean "
            f"{w.output.mean:.0f} p99 {w.output.percentile(99)} max {w.output.max}; "
            f"correlation {w.correlation:g}",
        ),
        ("latency bound", bound),
        ("strategy", _strategy(request)),
        ("engine", request.engine),
    ]
    return [f"  {k:<14} {v}" for k, v in rows]


def _strategy(request: PlanRequest) -> str:
    if request.strategy != "Auto" or not request.min_gain:
        return request.strategy
    return (
        f"Auto (a schedule replaces a simpler one when predicted more than "
        f"{request.min_gain:.0%} faster)"
    )


def _comparison(rows: Sequence[tuple[str, Candidate | None]]) -> list[str]:
    head = (
        f"  {'':<11} {'strategy':<14} {'queries/s':>10} {'tokens/s':>10} {'latency':>9} "
        f"{'p99 e2e':>9} {'GiB/GPU':>8}  configuration"
    )
    out = [head, "  " + "-" * (len(head) - 2)]
    for label, cand in rows:
        if cand is None:
            out.append(f"  {label:<11} {'-':<14} {'no configuration meets the bound'}")
            continue
        p = cand.predicted
        out.append(
            f"  {label:<11} {cand.config.strategy:<14} {_num(p.throughput_qps):>10} "
            f"{_num(p.throughput_tps, ',.0f'):>10} {_seconds(p.latency_s):>9} "
            f"{_seconds(p.e2e_p99_s):>9} {_num(p.memory_per_gpu_bytes / GIB, '.1f'):>8}  "
            f"{config_summary(cand.config, p)}"
        )
    return out


def _search(result: Plan | Infeasible) -> str:
    s = result.search
    how = "exhaustive search" if s.exhaustive else "branch and bound"
    if s.truncated:
        how += "; stopped at the time limit, the rest unsearched"
    return (
        f"search: {s.seconds:.2f} s, {s.evaluated:,} configurations simulated "
        f"of {s.space:,} ({how})"
    )


def plan_to_table(result: Plan | Infeasible, request: PlanRequest) -> str:
    """The plan as a fixed-width report: the request, the chosen plan and its
    prediction, the Static and Continuous baselines with their ratios, and the search."""
    lines = ["ExeGPT plan", *_header(request), ""]
    if isinstance(result, Infeasible):
        if result.search.truncated:
            lines.append("NOT PLANNED: the search stopped at its time limit")
        elif result.latency_bound_s is None or result.best_latency_s is None:
            lines.append("INFEASIBLE: no configuration fits in memory")
        else:
            lines.append("INFEASIBLE: no configuration meets the latency bound")
        lines.append(f"  {result.message}")
        lines.append(f"  lowest reachable latency: {_seconds(result.best_latency_s)}")
        if result.best is not None:
            lines += ["", *_comparison([("fastest", result.best)])]
        lines += ["", _search(result)]
        return "\n".join(lines) + "\n"

    c, p = result.config, result.predicted
    lines.append(f"Chosen plan: {result.strategy} on {result.engine}")
    if result.reason:
        lines.append(f"  {result.reason}")
    detail: list[tuple[str, str]] = [
        (
            "GPUs",
            f"{c.total_gpus} of {request.gpus} in use: {_plural(c.replicas, 'replica')} x "
            f"{_plural(c.gpus_per_replica, 'GPU')}",
        ),
    ]
    if c.strategy == "WorkloadAware":
        detail += [
            (
                "encode GPUs",
                f"{c.encode_gpus} ({_plural(c.encode_stages, 'stage')} x TP {c.encode_tp})",
            ),
            (
                "decode GPUs",
                f"{c.decode_gpus} ({_plural(c.pipeline_stages, 'stage')} x TP {c.tensor_parallel})",
            ),
        ]
    else:
        scope = "" if c.tp_scope == "all" else f" ({c.tp_scope} phase only)"
        detail += [
            ("tensor parallel", f"{c.tensor_parallel}{scope}"),
            ("pipeline stages", str(c.pipeline_stages)),
        ]
    detail.append(("B_E", f"{c.encode_batch} (encode batch)"))
    if c.strategy == "RoundRobin":
        detail += [
            ("N_D", f"{c.decode_steps_per_encode} (decode iterations per encode)"),
            ("B_D", f"{p.decode_batch:.1f} (steady decode batch that B_E and N_D give)"),
        ]
    else:
        detail.append(
            ("B_D", f"{c.decode_batch} (target decode batch; steady {p.decode_batch:.1f})")
        )
    detail += [
        ("micro-batches", str(c.micro_batches)),
        (
            "throughput",
            f"{_num(p.throughput_qps)} queries/s, {_num(p.throughput_tps, ',.0f')} tokens/s",
        ),
        (
            "latency",
            f"{_seconds(p.latency_s)} (p99-length output); p99 e2e {_seconds(p.e2e_p99_s)}",
        ),
        (
            "memory/GPU",
            f"{p.memory_per_gpu_bytes / GIB:.1f} GiB of {request.gpu.memory_gib:.0f} GiB",
        ),
    ]
    lines += [f"  {k:<16} {v}" for k, v in detail]

    rows: list[tuple[str, Candidate | None]] = [
        ("Plan", Candidate(config=result.config, predicted=result.predicted))
    ]
    rows += [(label, result.baselines.get(label)) for label, _ in BASELINES]
    lines += ["", "Against the baselines (same GPUs, same bound)", *_comparison(rows)]
    ratios = []
    for label, _ in BASELINES:
        cand = result.baselines.get(label)
        r = _ratio(p.throughput_qps, cand.predicted.throughput_qps if cand else None)
        ratios.append(f"{r:.2f}x over {label}" if r is not None else f"n/a over {label}")
    lines.append("  throughput: " + ", ".join(ratios))

    if result.alternatives:
        alt = [(f"#{i + 2}", cand) for i, cand in enumerate(result.alternatives)]
        lines += ["", "Next best", *_comparison(alt)]
    lines += ["", _search(result)]
    return "\n".join(lines) + "\n"
