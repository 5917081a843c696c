"""``exegpt bench paper``: the ExeGPT paper's evaluation matrix, in the simulator.

For every scenario of the paper's matrix (model x task x latency bound) the planner
(``schedule``) runs on the analytic profile of the paper's hardware, and the plan is
compared with the best static-batching (FasterTransformer-like) and continuous-batching
(ORCA/vLLM-like) configurations that meet the same bound.

Matrix:

* T5-11B, OPT-13B, GPT-3 39B and GPT-3 101B on tasks S, T and C1, 16 x A100-80GB
  (two 8-GPU nodes);
* GPT-3 101B, 175B and 341B on tasks G, C1 and C2, 48 x A40 (six 8-GPU nodes);
* four bounds each: the 10th, 30th and 70th percentile of the latencies of the
  static-batching configurations (every memory-feasible Static point of the scheduler's
  discretised space), and no bound.

``--json`` prints one JSON object (scenarios, summary, targets, environment) and nothing
else; otherwise a fixed-width table. ``--quick`` runs a representative subset,
``--exhaustive`` also searches the whole discretised space and reports the gap,
``--scenario MODEL/TASK[@CLUSTER][/BOUND]`` (repeatable) picks scenarios; ``@a100`` or
``@a40`` is needed only to pick one of GPT-3 101B's two C1 scenarios.

Also runnable as ``python -m exegpt.bench.paper``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import (
    Candidate,
    Engine,
    ExecutionConfig,
    Infeasible,
    Plan,
    PlanRequest,
    PlanResult,
)
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import BATCH_GRID, STAGE_CHOICES, schedule
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload_presets import get_workload

# -- the matrix ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    label: str
    gpu: str
    gpus: int
    gpus_per_node: int


A100_16 = Cluster("a100", "nvidia-a100-80gb", 16, 8)
A40_48 = Cluster("a40", "nvidia-a40", 48, 8)


@dataclass(frozen=True)
class Pair:
    """One model on one task and cluster; expanded into one scenario per bound."""

    model: str
    task: str
    cluster: Cluster

    @property
    def name(self) -> str:
        """``model/task``, with ``@cluster`` where the matrix has the pair on both
        clusters (GPT-3 101B on C1)."""
        base = f"{self.model}/{self.task}"
        return f"{base}@{self.cluster.label}" if base in _AMBIGUOUS else base


MATRIX: tuple[Pair, ...] = (
    *(
        Pair(m, t, A100_16)
        for m in ("t5-11b", "opt-13b", "gpt3-39b", "gpt3-101b")
        for t in ("S", "T", "C1")
    ),
    *(
        Pair(m, t, A40_48)
        for m in ("gpt3-101b", "gpt3-175b", "gpt3-341b")
        for t in ("G", "C1", "C2")
    ),
)

_AMBIGUOUS: frozenset[str] = frozenset(
    f"{p.model}/{p.task}"
    for p in MATRIX
    if sum((q.model, q.task) == (p.model, p.task) for q in MATRIX) > 1
)

QUICK: tuple[str, ...] = ("opt-13b/S", "opt-13b/C1", "gpt3-175b/G")
QUICK_EXHAUSTIVE: tuple[str, ...] = ("opt-13b/S/p30", "gpt3-175b/G/p10")
"""With ``--quick --exhaustive``, only these scenarios also run the exhaustive search."""

PERCENTILES: tuple[int, ...] = (10, 30, 70)
BOUND_LABELS: tuple[str, ...] = (*(f"p{q}" for q in PERCENTILES), "none")

TARGET_MEAN_RATIO = 2.9
TARGET_MAX_RATIO = 10.0
TARGET_SEARCH_S = 5.0
TARGET_EXHAUSTIVE_GAP = 0.01


# -- the static space and its latency percentiles -----------------------------------------


def static_configs(request: PlanRequest, profile: Profile) -> list[ExecutionConfig]:
    """Every Static configuration of the scheduler's discretised space: pipelines of
    ``stages`` x ``tp`` GPUs that tile the budget exactly (``STAGE_CHOICES``, the
    profile's TP degrees up to a node), ``stages`` or ``2 * stages`` micro-batches on a
    pipeline (one without), and every batch of ``BATCH_GRID``."""
    gpus, node = request.gpus, request.gpus_per_node
    layers = profile.architecture.decode_layers
    out: list[ExecutionConfig] = []
    for tp in sorted(set(profile.tp_degrees)):
        if tp > node or gpus % tp:
            continue
        for stages in STAGE_CHOICES:
            if stages > layers or stages * tp > gpus or gpus % (stages * tp):
                continue
            micros = (1,) if stages == 1 else (stages, 2 * stages)
            for micro in micros:
                for batch in BATCH_GRID:
                    out.append(
                        ExecutionConfig(
                            strategy="Static",
                            replicas=gpus // (stages * tp),
                            tensor_parallel=tp,
                            pipeline_stages=stages,
                            micro_batches=micro,
                            encode_batch=batch,
                        )
                    )
    return out


def static_latencies(request: PlanRequest, profile: Profile) -> list[float]:
    """Sorted latencies of the memory-feasible Static configurations."""
    sim = Simulator(request, profile)
    lat = []
    for config in static_configs(request, profile):
        p = sim.evaluate(config)
        if p.feasible and p.throughput_qps > 0:
            lat.append(p.latency_s)
    return sorted(lat)


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) by the nearest-rank method: always one of
    the values."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is not in (0, 100]")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


def static_latency_percentiles(
    request: PlanRequest, profile: Profile, qs: Sequence[float] = PERCENTILES
) -> tuple[float, ...]:
    """The ``qs`` percentiles of the latencies of the memory-feasible Static
    configurations (nearest rank: each is the latency of a real configuration).

    Raises ``ValueError`` when no Static configuration fits in memory."""
    lat = static_latencies(request, profile)
    if not lat:
        raise ValueError(
            f"no static-batching configuration of {request.architecture.name} fits on "
            f"{request.gpus} x {request.gpu.name}"
        )
    return tuple(nearest_rank(lat, q) for q in qs)


# -- one scenario ---------------------------------------------------------------------------


def summarize_config(c: ExecutionConfig) -> str:
    """A one-line description of a configuration's shape and batch variables."""
    reps = f"{c.replicas}x" if c.replicas > 1 else ""
    micro = f" mb{c.micro_batches}" if c.micro_batches > 1 else ""
    pipe = f"PP{c.pipeline_stages}xTP{c.tensor_parallel}"
    if c.strategy == "RoundRobin":
        scope = f"({c.tp_scope})" if c.tensor_parallel > 1 and c.tp_scope != "all" else ""
        return (
            f"RRA {reps}[{pipe}{scope}]{micro} B_E={c.encode_batch} N_D={c.decode_steps_per_encode}"
        )
    if c.strategy == "WorkloadAware":
        enc = f"PP{c.encode_stages}xTP{c.encode_tp}"
        return f"WAA {reps}[E {enc} | D {pipe}]{micro} B_E={c.encode_batch} B_D={c.decode_batch}"
    if c.strategy == "Static":
        return f"Static {reps}[{pipe}]{micro} B={c.encode_batch}"
    return f"Continuous {reps}[{pipe}]{micro} B={c.decode_batch}"


def _sig(x: float | None, digits: int = 6) -> float | None:
    """``x`` rounded to ``digits`` significant digits (for a stable, readable JSON)."""
    if x is None or not math.isfinite(x):
        return x
    rounded: float = float(f"{x:.{digits}g}")
    return rounded


def _candidate_json(c: Candidate | None) -> dict[str, Any] | None:
    if c is None:
        return None
    p = c.predicted
    return {
        "strategy": c.config.strategy,
        "summary": summarize_config(c.config),
        "throughput_qps": _sig(p.throughput_qps),
        "latency_s": _sig(p.latency_s),
        "e2e_p99_s": _sig(p.e2e_p99_s),
        "memory_per_gpu_gib": _sig(p.memory_per_gpu_bytes / 2**30, 4),
        "config": c.config.model_dump(),
    }


def _ratio(a: float, b: Candidate | None) -> float | None:
    if b is None or b.predicted.throughput_qps <= 0:
        return None
    return a / float(b.predicted.throughput_qps)


@dataclass(frozen=True)
class Scenario:
    pair: Pair
    bound: str
    bound_s: float | None

    @property
    def name(self) -> str:
        return f"{self.pair.name}/{self.bound}"


def _request(pair: Pair, bound_s: float | None, engine: Engine = "ExeGPT") -> PlanRequest:
    return PlanRequest(
        architecture=get_architecture(pair.model),
        gpu=get_gpu(pair.cluster.gpu),
        gpus=pair.cluster.gpus,
        gpus_per_node=pair.cluster.gpus_per_node,
        workload=get_workload(pair.task),
        latency_bound_s=bound_s,
        executable_only=True,  # only what the engine deploys
        engine=engine,
    )


def run_scenario(
    scenario: Scenario,
    profile: Profile,
    *,
    exhaustive: bool,
    static_feasible: int,
    engine: Engine = "ExeGPT",
) -> dict[str, Any]:
    """Plan one scenario (and its exhaustive check if asked); a JSON-ready record."""
    pair = scenario.pair
    request = _request(pair, scenario.bound_s, engine)
    cpu0 = time.process_time()
    result = schedule(request, profile)
    cpu = time.process_time() - cpu0
    rec: dict[str, Any] = {
        "id": scenario.name,
        **_pair_fields(pair),
        "bound": scenario.bound,
        "bound_s": _sig(scenario.bound_s),
        "static_space_feasible": static_feasible,
        "status": result.kind,
        "search": {
            "seconds": round(result.search.seconds, 4),
            "cpu_seconds": round(cpu, 4),
            "evaluated": result.search.evaluated,
            "space": result.search.space,
            "pruned": result.search.pruned,
            "truncated": result.search.truncated,
        },
        "exhaustive": None,
    }
    if isinstance(result, Infeasible):
        rec.update(
            message=result.message,
            best_latency_s=_sig(result.best_latency_s),
            exegpt=None,
            static=None,
            continuous=None,
            ratio_static=None,
            ratio_continuous=None,
            checks=None,
        )
    else:
        qps = result.predicted.throughput_qps
        static = result.baselines.get("Static")
        cont = result.baselines.get("Continuous")
        exe = _candidate_json(Candidate(config=result.config, predicted=result.predicted))
        assert exe is not None
        exe["reason"] = result.reason
        rs, rc = _ratio(qps, static), _ratio(qps, cont)
        rec.update(
            exegpt=exe,
            static=_candidate_json(static),
            continuous=_candidate_json(cont),
            ratio_static=_sig(rs, 5),
            ratio_continuous=_sig(rc, 5),
            checks={
                "within_bound": scenario.bound_s is None
                or result.predicted.latency_s <= scenario.bound_s,
                "fits_memory": result.predicted.feasible,
                "at_least_static": static is None or qps >= static.predicted.throughput_qps,
            },
        )
    if exhaustive:
        rec["exhaustive"] = _exhaustive_record(request, profile, result)
    return rec


def _exhaustive_record(
    request: PlanRequest, profile: Profile, default: PlanResult
) -> dict[str, Any]:
    cpu0 = time.process_time()
    full = schedule(request, profile, exhaustive=True)
    cpu = time.process_time() - cpu0
    out: dict[str, Any] = {
        "status": full.kind,
        "seconds": round(full.search.seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "evaluated": full.search.evaluated,
        "throughput_qps": None,
        "summary": None,
        "static_qps": None,
        "gap": None,
    }
    if isinstance(full, Plan):
        best = full.predicted.throughput_qps
        static = full.baselines.get("Static")
        out.update(
            throughput_qps=_sig(best),
            summary=summarize_config(full.config),
            static_qps=_sig(static.predicted.throughput_qps) if static else None,
        )
        mine = default.predicted.throughput_qps if isinstance(default, Plan) else 0.0
        out["gap"] = _sig(1.0 - mine / best, 4) if best > 0 else 0.0
    elif isinstance(default, Infeasible):
        out["gap"] = 0.0
    return out


# -- selection ------------------------------------------------------------------------------


def _match(spec: str) -> tuple[list[Pair], str | None]:
    """The matrix pairs ``MODEL/TASK[@CLUSTER]`` names (case-insensitive)."""
    model, _, rest = spec.partition("/")
    task, _, cluster = rest.partition("@")
    return [
        p
        for p in MATRIX
        if p.model.lower() == model.lower()
        and p.task.lower() == task.lower()
        and (not cluster or p.cluster.label == cluster.lower())
    ], cluster or None


def select(
    names: Sequence[str], quick: bool
) -> tuple[list[tuple[Pair, tuple[str, ...]]], list[str]]:
    """The pairs to run, each with the bound labels to run, and unknown names.

    A name is ``MODEL/TASK[@CLUSTER][/BOUND]``; without ``@CLUSTER`` it selects the pair
    on every cluster it runs on, without ``/BOUND`` every bound."""
    wanted: dict[Pair, list[str]] = {}
    unknown: list[str] = []
    if not names:
        names = QUICK if quick else [p.name for p in MATRIX]
    for raw in names:
        parts = raw.strip().split("/")
        pairs = _match("/".join(parts[:2]))[0] if len(parts) in (2, 3) else []
        labels = BOUND_LABELS
        if len(parts) == 3:
            label = parts[2].lower()
            labels = (label,) if label in BOUND_LABELS else ()
        if not pairs or not labels:
            unknown.append(raw)
            continue
        for pair in pairs:
            have = wanted.setdefault(pair, [])
            have.extend(lab for lab in labels if lab not in have)
    order = {p: i for i, p in enumerate(MATRIX)}
    chosen = sorted(wanted, key=order.__getitem__)
    return [(p, tuple(b for b in BOUND_LABELS if b in wanted[p])) for p in chosen], unknown


def run_pairs(
    pairs: Iterable[tuple[Pair, tuple[str, ...]]],
    *,
    exhaustive: bool | Sequence[str],
    progress: bool = False,
    engine: Engine = "ExeGPT",
) -> list[dict[str, Any]]:
    """Every selected scenario's record, in matrix order. ``exhaustive`` is a flag or the
    scenario names to run the exhaustive search on."""
    records: list[dict[str, Any]] = []
    profiles: dict[tuple[str, str], Profile] = {}
    for pair, labels in pairs:
        key = (pair.model, pair.cluster.gpu)
        if key not in profiles:
            profiles[key] = analytic_profile(
                get_architecture(pair.model), get_gpu(pair.cluster.gpu)
            )
        profile = profiles[key]
        base = _request(pair, None, engine)
        lat = static_latencies(base, profile)
        bounds: dict[str, float | None] = {"none": None}
        if lat:
            for q in PERCENTILES:
                bounds[f"p{q}"] = nearest_rank(lat, q)
        for label in labels:
            if label not in bounds:
                records.append(_no_static_record(pair, label))
                continue
            scenario = Scenario(pair, label, bounds[label])
            exh = (
                exhaustive
                if isinstance(exhaustive, bool)
                else scenario.name.lower() in {n.lower() for n in exhaustive}
            )
            t0 = time.monotonic()
            records.append(
                run_scenario(
                    scenario, profile, exhaustive=exh, static_feasible=len(lat), engine=engine
                )
            )
            if progress:
                print(
                    f"  {scenario.name}: {time.monotonic() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return records


def _pair_fields(pair: Pair) -> dict[str, Any]:
    """What every record of ``pair``'s scenarios says of its model, task and cluster."""
    return {
        "model": pair.model,
        "task": pair.task,
        "cluster": pair.cluster.label,
        "gpu": pair.cluster.gpu,
        "gpus": pair.cluster.gpus,
        "gpus_per_node": pair.cluster.gpus_per_node,
    }


def _no_static_record(pair: Pair, label: str) -> dict[str, Any]:
    return {
        "id": f"{pair.name}/{label}",
        **_pair_fields(pair),
        "bound": label,
        "bound_s": None,
        "static_space_feasible": 0,
        "status": "Infeasible",
        "message": "no static-batching configuration fits in memory: no percentile bound",
        "best_latency_s": None,
        "exegpt": None,
        "static": None,
        "continuous": None,
        "ratio_static": None,
        "ratio_continuous": None,
        "checks": None,
        "search": None,
        "exhaustive": None,
    }


# -- summary --------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "mean": None, "geomean": None, "min": None, "max": None}
    return {
        "n": len(values),
        "mean": _sig(statistics.fmean(values), 4),
        "geomean": _sig(statistics.geometric_mean(values), 4),
        "min": _sig(min(values), 4),
        "max": _sig(max(values), 4),
    }


def _strategy_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts = {"RoundRobin": 0, "WorkloadAware": 0}
    for r in records:
        if r["exegpt"] is not None:
            s = r["exegpt"]["strategy"]
            counts[s] = counts.get(s, 0) + 1
    return counts


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate figures over the scenarios."""
    planned = [r for r in records if r["exegpt"] is not None]
    rs = [r["ratio_static"] for r in planned if r["ratio_static"] is not None]
    rc = [r["ratio_continuous"] for r in planned if r["ratio_continuous"] is not None]
    searched = [r["search"]["seconds"] for r in records if r["search"] is not None]
    cpu = [r["search"]["cpu_seconds"] for r in records if r["search"] is not None]
    gaps = [
        r["exhaustive"]["gap"]
        for r in records
        if r["exhaustive"] is not None and r["exhaustive"]["gap"] is not None
    ]
    best = max(planned, key=lambda r: r["ratio_static"] or 0.0, default=None)
    worst_gap = max(
        (r for r in records if r["exhaustive"] and (r["exhaustive"]["gap"] or 0.0) > 0),
        key=lambda r: r["exhaustive"]["gap"],
        default=None,
    )

    def ratios_where(pred: Any, key: str = "ratio_static") -> dict[str, float | int | None]:
        return _stats([r[key] for r in planned if r[key] and pred(r)])

    return {
        "scenarios": len(records),
        "planned": len(planned),
        "infeasible": [r["id"] for r in records if r["exegpt"] is None],
        "ratio_static": _stats(rs),
        "ratio_static_best": best["id"] if best is not None and rs else None,
        "ratio_continuous": _stats(rc),
        "ratio_static_by_bound": {
            b: ratios_where(lambda r, b=b: r["bound"] == b) for b in BOUND_LABELS
        },
        "ratio_static_by_cluster": {
            c.gpu: ratios_where(lambda r, c=c: r["gpu"] == c.gpu) for c in (A100_16, A40_48)
        },
        "ratio_continuous_by_bound": {
            b: ratios_where(lambda r, b=b: r["bound"] == b, "ratio_continuous")
            for b in BOUND_LABELS
        },
        "strategies": _strategy_counts(planned),
        "strategies_by_bound": {
            b: _strategy_counts(r for r in planned if r["bound"] == b) for b in BOUND_LABELS
        },
        "search_seconds": {
            "max": max(searched, default=None),
            "mean": _sig(statistics.fmean(searched), 4) if searched else None,
            "cpu_max": max(cpu, default=None),
        },
        "evaluated_max": max(
            (r["search"]["evaluated"] for r in records if r["search"] is not None), default=None
        ),
        "exhaustive": {
            "runs": len(gaps),
            "max_gap": max(gaps, default=None),
            "worst": worst_gap["id"] if worst_gap is not None else None,
            "seconds_max": max(
                (r["exhaustive"]["seconds"] for r in records if r["exhaustive"]), default=None
            ),
        },
        "checks": {
            "bound_violations": [
                r["id"] for r in planned if r["checks"] and not r["checks"]["within_bound"]
            ],
            "below_static": [
                r["id"] for r in planned if r["checks"] and not r["checks"]["at_least_static"]
            ],
            "static_baseline_missing": [r["id"] for r in planned if r["static"] is None],
        },
    }


def targets(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's headline figures and the search targets: met or not."""
    mean = summary["ratio_static"]["mean"]
    mx = summary["ratio_static"]["max"]
    search = summary["search_seconds"]["max"]
    gap = summary["exhaustive"]["max_gap"]
    return {
        "mean_ratio_over_static": {
            "target": f">= {TARGET_MEAN_RATIO}",
            "value": mean,
            "met": mean is not None and mean >= TARGET_MEAN_RATIO,
        },
        "max_ratio_over_static": {
            "target": f">= {TARGET_MAX_RATIO:g}",
            "value": mx,
            "met": mx is not None and mx >= TARGET_MAX_RATIO,
        },
        "search_seconds_per_scenario": {
            "target": f"<= {TARGET_SEARCH_S:g}",
            "value": search,
            "met": search is not None and search <= TARGET_SEARCH_S,
        },
        "gap_to_exhaustive": {
            "target": f"<= {TARGET_EXHAUSTIVE_GAP:.0%}",
            "value": gap,
            "met": None if gap is None else gap <= TARGET_EXHAUSTIVE_GAP,
        },
    }


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "cpu_count": os.cpu_count(),
    }


def build_report(
    names: Sequence[str] = (),
    *,
    quick: bool = False,
    exhaustive: bool = False,
    progress: bool = False,
    command: str = "",
    engine: Engine = "ExeGPT",
) -> dict[str, Any]:
    """The whole benchmark as a JSON-ready dict; raises ``KeyError`` on unknown names."""
    pairs, unknown = select(names, quick)
    if unknown:
        raise KeyError(", ".join(unknown))
    exh: bool | Sequence[str] = exhaustive
    if exhaustive and quick and not names:
        exh = QUICK_EXHAUSTIVE
    t0 = time.monotonic()
    records = run_pairs(pairs, exhaustive=exh, progress=progress, engine=engine)
    summary = summarize(records)
    summary["wall_seconds"] = round(time.monotonic() - t0, 2)
    return {
        "benchmark": "paper",
        "command": command,
        "engine": engine,
        "mode": "quick" if quick and not names else ("selected" if names else "full"),
        "exhaustive": exh if isinstance(exh, bool) else list(exh),
        "percentile_method": "nearest-rank over the memory-feasible Static configurations",
        "scenarios": records,
        "summary": summary,
        "targets": targets(summary),
        "environment": environment(),
    }


# -- table ----------------------------------------------------------------------------------


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _qps(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 10 else f"{x:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table, then the summary and the targets."""
    exh = any(r["exhaustive"] for r in report["scenarios"])
    head = (
        f"{'scenario':<24} {'bound s':>8} {'ExeGPT':>8} {'Static':>8} {'Contin.':>8} "
        f"{'xStat':>6} {'xCont':>6} {'lat s':>7} {'srch s':>6} {'evals':>6}"
        + (f" {'gap':>6}" if exh else "")
        + "  plan / static baseline"
    )
    lines = [
        "ExeGPT vs static and continuous batching (throughput in queries/s, simulated on "
        "analytic profiles)",
        head,
        "-" * len(head),
    ]
    for r in report["scenarios"]:
        cells = f"{r['id']:<24} {_num(r['bound_s'], '8.2f') if r['bound_s'] else 'none':>8} "
        if r["exegpt"] is None:
            msg = r.get("message", "infeasible")
            lines.append(cells + f"INFEASIBLE: {msg}")
            continue
        e, s, c = r["exegpt"], r["static"], r["continuous"]
        gap = ""
        if exh:
            g = r["exhaustive"]["gap"] if r["exhaustive"] else None
            shown = "-" if g is None else f"{100 * g:.1f}%"
            gap = f" {shown:>6}"
        lines.append(
            cells + f"{_qps(e['throughput_qps']):>8} {_qps(s['throughput_qps'] if s else None):>8} "
            f"{_qps(c['throughput_qps'] if c else None):>8} "
            f"{_num(r['ratio_static'], '6.2f'):>6} {_num(r['ratio_continuous'], '6.2f'):>6} "
            f"{e['latency_s']:>7.2f} {r['search']['seconds']:>6.2f} "
            f"{r['search']['evaluated']:>6}{gap}  {e['summary']}"
            + (f"  /  {s['summary']}" if s else "")
        )
    sm = report["summary"]
    rs, rc = sm["ratio_static"], sm["ratio_continuous"]
    lines += [
        "",
        f"scenarios: {sm['scenarios']} ({sm['planned']} planned, "
        f"{len(sm['infeasible'])} infeasible{': ' if sm['infeasible'] else ''}"
        f"{', '.join(sm['infeasible'])})",
        f"ExeGPT / Static:      mean {_num(rs['mean'], '.2f')}x  geomean "
        f"{_num(rs['geomean'], '.2f')}x  min {_num(rs['min'], '.2f')}x  max "
        f"{_num(rs['max'], '.2f')}x ({sm['ratio_static_best']})",
        f"ExeGPT / Continuous:  mean {_num(rc['mean'], '.2f')}x  min "
        f"{_num(rc['min'], '.2f')}x  max {_num(rc['max'], '.2f')}x",
        "ExeGPT / Static by bound:   "
        + "  ".join(
            f"{b} {_num(v['mean'], '.2f')}x" for b, v in sm["ratio_static_by_bound"].items()
        ),
        "ExeGPT / Contin. by bound:  "
        + "  ".join(
            f"{b} {_num(v['mean'], '.2f')}x" for b, v in sm["ratio_continuous_by_bound"].items()
        ),
        "ExeGPT / Static by cluster: "
        + "  ".join(
            f"{g} {_num(v['mean'], '.2f')}x" for g, v in sm["ratio_static_by_cluster"].items()
        ),
        "strategy chosen:      "
        + "  ".join(f"{k} {v}" for k, v in sm["strategies"].items())
        + "   by bound: "
        + "  ".join(
            f"{b} RRA {v.get('RoundRobin', 0)}/WAA {v.get('WorkloadAware', 0)}"
            for b, v in sm["strategies_by_bound"].items()
        ),
        f"search: max {_num(sm['search_seconds']['max'], '.2f')} s (CPU "
        f"{_num(sm['search_seconds']['cpu_max'], '.2f')} s), mean "
        f"{_num(sm['search_seconds']['mean'], '.2f')} s per scenario; at most "
        f"{sm['evaluated_max']} configurations evaluated",
    ]
    ex = sm["exhaustive"]
    if ex["runs"]:
        lines.append(
            f"exhaustive: {ex['runs']} runs, max gap {100 * ex['max_gap']:.2f} %"
            + (f" ({ex['worst']})" if ex["worst"] else "")
            + f", slowest {ex['seconds_max']:.1f} s"
        )
    checks = sm["checks"]
    for key, label in (
        ("bound_violations", "plans over their bound"),
        ("below_static", "plans below the static baseline"),
        ("static_baseline_missing", "scenarios with no static baseline"),
    ):
        if checks[key]:
            lines.append(f"WARNING: {label}: {', '.join(checks[key])}")
    lines += ["", "targets:"]
    for name, t in report["targets"].items():
        met = {True: "met", False: "MISSED", None: "not run"}[t["met"]]
        value = t["value"]
        shown = "-" if value is None else f"{value:.4g}"
        lines.append(f"  {name:<30} {t['target']:>8}  {shown:>8}  {met}")
    env = report["environment"]
    lines.append(
        f"\nPython {env['python']}, {env['cpu_count']} CPUs; wall {sm['wall_seconds']:.1f} s"
    )
    return "\n".join(lines)


# -- CLI --------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exegpt bench paper",
        description=(
            "The ExeGPT paper's evaluation matrix in the simulator: ExeGPT's plan against "
            "static and continuous batching under the same latency bound."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON object only")
    p.add_argument(
        "--engine",
        choices=("ExeGPT", "vLLM"),
        default="ExeGPT",
        help="the engine every plan and baseline is priced for (default: the own engine; "
        "vLLM does not run T5, whose rows are then infeasible)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a representative subset ({', '.join(QUICK)}; all four bounds)",
    )
    p.add_argument(
        "--exhaustive",
        action="store_true",
        help="also search the whole discretised space and report the gap "
        f"(with --quick: only {', '.join(QUICK_EXHAUSTIVE)})",
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="MODEL/TASK[@CLUSTER][/BOUND]",
        help="run only this scenario (repeatable), e.g. opt-13b/S, gpt3-175b/G/p10 or "
        "gpt3-101b/C1@a40; "
        f"bounds: {', '.join(BOUND_LABELS)}",
    )
    p.add_argument(
        "--list", action="store_true", help="list the model/task pairs of the matrix and exit"
    )
    p.add_argument("--progress", action="store_true", help="report each scenario's time on stderr")
    p.add_argument(
        "--markdown",
        metavar="REPORT.json",
        help="print the per-scenario Markdown table of a recorded --json report and exit",
    )
    return p


def format_markdown(report: dict[str, Any]) -> str:
    """The per-scenario table of ``docs/benchmarks.md``, from a ``--json`` report."""
    head = (
        "| scenario | bound (s) | ExeGPT (q/s) | ExeGPT plan | Static (q/s) | Continuous (q/s) "
        "| x Static | x Cont. | latency (s) | search (s) | evaluated | gap |\n"
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in report["scenarios"]:
        if r.get("status") != "Plan":
            lines.append(f"| {r['id']} | {_num(r.get('bound_s'), '.2f')} | infeasible |" + " |" * 9)
            continue
        ex, st, co = r["exegpt"], r.get("static") or {}, r.get("continuous") or {}
        gap = (r.get("exhaustive") or {}).get("gap")
        lines.append(
            f"| {r['id']} | {_num(r.get('bound_s'), '.2f') if r.get('bound_s') else 'none'} "
            f"| {_qps(ex['throughput_qps'])} | {ex['summary'].replace('|', chr(92) + '|')} "
            f"| {_qps(st.get('throughput_qps'))} | {_qps(co.get('throughput_qps'))} "
            f"| {_num(r.get('ratio_static'), '.2f')} | {_num(r.get('ratio_continuous'), '.2f')} "
            f"| {_num(ex['latency_s'], '.2f')} | {_num(r['search']['seconds'], '.2f')} "
            f"| {r['search']['evaluated']:,} | {'-' if gap is None else f'{100 * gap:.1f} %'} |"
        )
    return "\n".join(lines)


def iter_names() -> Iterator[str]:
    for p in MATRIX:
        yield f"{p.name}  ({p.cluster.gpus} x {p.cluster.gpu})"


def run(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.list:
        print("\n".join(iter_names()))
        return 0
    if args.markdown:
        with open(args.markdown, encoding="utf-8") as f:
            print(format_markdown(json.load(f)))
        return 0
    try:
        report = build_report(
            args.scenario,
            quick=args.quick,
            exhaustive=args.exhaustive,
            progress=args.progress,
            command=shlex.join(["exegpt", "bench", "paper", *argv]),
            engine=args.engine,
        )
    except KeyError as exc:
        print(
            f"exegpt bench paper: unknown scenario {exc.args[0]}; expected "
            f"MODEL/TASK[@CLUSTER][/BOUND] with bound one of {', '.join(BOUND_LABELS)} "
            "(see --list)",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
