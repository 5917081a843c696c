"""``exegpt bench runner``: the XRunner measured against the XSimulator's predictions.

On this machine the XProfiler measures a profile of a small OPT-like model (4 layers,
hidden 256, random weights, float32, one torch thread); the XScheduler plans a
high-variance workload on it under a latency bound, and the XRunner's engine runs the
plan, the best static-batching and continuous-batching configurations under the same
bound (the plan's ``baselines``) and two fidelity rows of two processes each: a 2-stage
pipeline (RoundRobin, one stage process each) and a WorkloadAware configuration (the
planner's when one meets the bound, else one built from the plan), both priced by the
simulator entry point the planner uses. Each configuration after the first is
predicted from a profile measured again just before it runs (a shared machine's speed
drifts over minutes), and the full run goes through its configurations twice, in turn,
so that how far a measurement moves between rounds stands beside its error. The
simulator is asked about the requests the engine served (not new draws from the
workload, whose sampling noise would swamp its errors):

- **throughput**: completed requests per second under a closed loop of clients that
  keeps the engine saturated (``concurrency`` requests in flight: the plan's KV slots
  plus one encode batch, so a full encode batch always waits), counted between two
  completions of the steady part (the first 20 % of the completions, and at least
  ``concurrency`` of them, are warm-up; the window ends at the last completion that
  still had a successor submitted); predicted by the analytic mode for the empirical
  workload of the requests that finished in the window;
- **latency**: the paper's, the time to generate an output of the served requests' p99
  length, queueing excluded: ``last_token - encoded`` of the closed loop's steady
  requests whose output length is within 5 % (at least 2 tokens) of the p99 length,
  their median when there are at least 20; with fewer, a least-squares line of that
  time against the output length over the steady requests of the upper half of
  output lengths, evaluated at the p99 length (``latency_method`` says which);
- **p99 end-to-end latency**: the nearest-rank p99 of ``finished - arrival`` under
  Poisson arrivals at 50 % of the throughput measured in the closed loop (the first
  10 % of arrivals are warm-up); predicted by the discrete-event mode replaying the
  same requests at their arrival times;
- **time to first token**: ``first_token - arrival`` in the same Poisson run, median
  and p99 (measured only: the simulator does not predict it).

Prediction error is ``(predicted - measured) / measured`` per metric and configuration;
the summary gives the median and worst absolute error per metric (target < 10 %), and
the same for the simulator's predictions for the workload itself (new draws). The ratio
over static batching is the plan's measured throughput over the Static baseline's, both
run in this one run (target >= 2x), with whether each measured latency (at the
workload's p99 length) meets the bound.

The workload is the ``chat`` trace (Azure LLM inference 2023) with inputs scaled by
1/32 and outputs by 1/4 (output mean 53, p99 149, max 239 tokens; coefficient of
variation 0.77); the bound is the 30th percentile of the static-batching
configurations' predicted latencies, as in ``exegpt bench paper``. Request lengths,
prompt tokens and sampling seeds come from a seeded ``numpy.random.Generator``
(``--seed``); every request samples at temperature 1.

``--quick`` profiles a coarse grid and runs fewer requests of the plan, the Static
baseline and the two fidelity rows, in one round; ``--json`` prints one JSON object
and nothing else. Also runnable as ``python -m exegpt.bench.runner``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from exegpt.bench.device import BenchDevice, NoDevice, cpu_model
from exegpt.bench.load import Driven, Job, concurrency_for, make_requests, run_replica
from exegpt.bench.paper import static_latency_percentiles, summarize_config
from exegpt.bench.profile import CPU_MODELS
from exegpt.bench.records import (
    POISSON_WARMUP_FRACTION,
    Record,
    after_warmup,
    error_pct,
    in_window,
    nearest_rank,
    open_loop_e2e_p99,
    p99_length_latency,
    served_fields,
    served_in_window,
)
from exegpt.bench.report import _jsonable, format_table, summarize
from exegpt.bench.speed import SpeedProbe, at_speed, bench_profiler, priced, speed_ratio
from exegpt.planner.architecture import Architecture, get_architecture
from exegpt.planner.costs import Group
from exegpt.planner.events import EventSimulator, Timeline
from exegpt.planner.plan import ExecutionConfig, Plan, PlanRequest, Prediction, StrategyChoice
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import schedule
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import Workload
from exegpt.planner.workload_presets import get_workload
from exegpt.runner.config import ModelConfig
from exegpt.runner.replica import ReplicaSpec

BOUND_PERCENTILE = 30  # of the static-batching configurations' latencies
# Poisson arrival rate, as a fraction of the saturated throughput the fresh profile
# predicts. Below saturation the batches are smaller and each request costs more steps,
# so at 50 % the engine is busy 70 to 90 % of the time (``busy_fraction``); at 75 %
# Continuous was 96 % busy, where the p99 of the waits multiplies any service-time error.
LOAD = 0.5
MIN_CLOSED_PER_CONCURRENCY = 4  # a closed loop runs at least 4x its concurrency
EVENTS_SEED = 0  # the discrete-event simulation's arrivals and lengths

# A small OPT-like model: per-step compute well above the engine's Python overhead,
# yet fast enough on one CPU thread.
ARCHITECTURE: Architecture = Architecture.model_validate(
    {**CPU_MODELS["opt-small"].model_dump(), "name": "opt-bench", "hidden_size": 256,
     "ffn_size": 1024}
)  # fmt: skip
# On a GPU: a real model's shape (random weights, float16), whose decode steps are
# bound by reading its weights rather than by the engine's Python.
GPU_ARCHITECTURE: Architecture = get_architecture("llama-2-7b")


def default_architecture(device: BenchDevice) -> Architecture:
    return GPU_ARCHITECTURE if device.kind == "cuda" else ARCHITECTURE


def bench_workload() -> Workload:
    """The high-variance workload: the chat trace, inputs / 32 and outputs / 4."""
    return get_workload("chat").scaled(1 / 32, 1 / 4)


@dataclass(frozen=True)
class Mode:
    """How much to run."""

    name: str
    profile_seconds: float
    midpoints: bool
    passes: int
    closed_requests: int
    poisson_requests: int
    roles: tuple[str, ...]
    poisson_runs: int = 1  # the same requests at the same arrivals: the measurement's spread
    rounds: int = 1  # every configuration, in turn, this many times: drift beside error


PIPELINE_STAGES = 2  # the pipeline row: RoundRobin over two stage processes
QUICK = Mode("quick", 7.0, False, 2, 140, 40, ("plan", "static", "pipeline", "workload-aware"))
FULL = Mode(
    "full", 60.0, True, 3, 600, 1000,
    ("plan", "static", "continuous", "pipeline", "workload-aware"), 2, rounds=2,
)  # fmt: skip


# -- one configuration ------------------------------------------------------------------------


def measure_config(
    role: str,
    config: ExecutionConfig,
    sim: Simulator,
    workload: Workload,
    mode: Mode,
    rng: np.random.Generator,
    bound: float,
    profile: Profile | None = None,
    device: BenchDevice | None = None,
) -> dict[str, Any]:
    """Run ``config`` (as ``sim``'s profile plans it) on ``device`` (default: this CPU)
    and compare it with the simulator's predictions from ``profile`` (default: the
    same) for the requests it served, and, beside them, for the workload."""
    device = device or BenchDevice.cpu()
    planned = sim.evaluate(config)
    sim = Simulator(sim.request, profile) if profile is not None else sim
    predicted = sim.evaluate(config)
    if not predicted.feasible or predicted.throughput_qps <= 0:
        raise ValueError(
            f"{role}: the simulator cannot run {summarize_config(config)} on "
            f"{sim.request.gpus} GPU(s): {predicted.reason or 'no throughput'}"
        )
    spec = ReplicaSpec(
        ModelConfig.from_architecture(sim.request.architecture),
        config,
        max_input_tokens=workload.input.max,
        max_output_tokens=workload.output.max,
        steady_decode_batch=planned.decode_batch,
        dtype=device.dtype,
        seed=1,
    )
    vocab = sim.request.architecture.vocab_size
    probe = SpeedProbe(sim.request.architecture, mode.passes, device=device)
    concurrency = concurrency_for(config, spec)
    # at least 4x the concurrency: 40 % of the completions or more in the steady window
    closed = max(mode.closed_requests, MIN_CLOSED_PER_CONCURRENCY * concurrency)
    job = Job(
        closed=make_requests(workload, closed, rng, vocab),
        concurrency=concurrency,
        poisson=make_requests(workload, mode.poisson_requests, rng, vocab),
        gaps=[float(g) for g in rng.exponential(1.0, mode.poisson_requests)],
        rate=LOAD * predicted.throughput_qps,
        poisson_runs=mode.poisson_runs,
        probe=probe if probe.whole_model else None,
        device=device,
    )
    start = time.monotonic()
    driven = run_replica(spec, job)
    seconds = time.monotonic() - start
    # what the simulator is asked: the requests the engine served, not new draws
    steady = served_in_window(driven.closed, driven.window)
    served = Workload.from_pairs(
        [r.input_tokens for r in steady], [r.output_tokens for r in steady],
        f"the {len(steady)} requests of the steady window",
    )  # fmt: skip
    replayed = Simulator(sim.request.model_copy(update={"workload": served}), sim.profile)
    events = EventSimulator(sim.request, sim.profile)
    predicted_served = replayed.evaluate(config)
    window_records = in_window(driven.closed, driven.window)
    latency = p99_length_latency(window_records, served.output_p99)
    at_bound = p99_length_latency(window_records, workload.output_p99)
    open_loop = after_warmup(driven.poisson, POISSON_WARMUP_FRACTION)
    e2e = open_loop_e2e_p99(driven.poisson)
    ttft = [r.ttft for r in open_loop]
    measured = {
        "throughput_qps": driven.window.throughput,
        "latency_s": latency.seconds,
        "e2e_p99_s": e2e,
        "ttft_median_s": statistics.median(ttft),
        "ttft_p99_s": nearest_rank(ttft, 99),
        "latency_at_workload_p99_s": at_bound.seconds,
    }
    pred = {
        "throughput_qps": predicted_served.throughput_qps,
        "latency_s": predicted_served.latency_s,
        "e2e_p99_s": replay_e2e_p99(events, config, driven.poisson),
    }
    # the plan's own figures, for the workload's distribution (new draws: sampling noise)
    drawn = events.run(config, np.random.default_rng(EVENTS_SEED), arrival_rate=driven.rate)
    pred_workload = {
        "throughput_qps": predicted.throughput_qps,
        "latency_s": predicted.latency_s,
        "e2e_p99_s": drawn.e2e_p99_s,
    }
    measured_workload = {**measured, "latency_s": at_bound.seconds}
    return {
        "role": role,
        "strategy": config.strategy,
        "config": config.model_dump(exclude_defaults=True),
        "summary": summarize_config(config),
        "processes": spec.topology().world,
        # each process as it ran: its pid, chain and stage, and the CPU it spent
        "ranks": [asdict(r) for r in driven.ranks],
        "predicted": {**pred, "decode_batch": predicted_served.decode_batch},
        "measured": measured,
        "error_pct": {k: error_pct(v, measured[k]) for k, v in pred.items()},
        "workload_prediction": {
            "predicted": {
                **pred_workload,
                "decode_batch": predicted.decode_batch,
                "e2e_p99_s_analytic": predicted.e2e_p99_s,
            },
            "error_pct": {k: error_pct(v, measured_workload[k]) for k, v in pred_workload.items()},
        },
        "meets_bound": bool(at_bound.seconds <= bound),
        **served_fields(len(steady), served, latency, workload),
        "closed_loop": {
            "requests": len(driven.closed),
            "concurrency": job.concurrency,
            "window_s": driven.window.seconds,
            "window_completions": driven.window.completions,
        },
        "poisson": {
            "requests": len(driven.poisson),
            "rate_qps": driven.rate,
            "load": LOAD,
            "busy_fraction": driven.busy_fraction,
            "counted": len(open_loop),
        },
        "poisson_again": [
            repeat_row(events, config, again, e2e, pred["e2e_p99_s"]) for again in driven.again
        ],
        "machine_speed": speed_row(sim.request, sim.profile, config, driven, e2e, job.probe),
        "steps": _steps_check(
            driven.steps, config, replayed, predicted_served, driven.window.seconds
        ),
        # the Poisson run's steps against the same profile: whether the machine kept pace
        "poisson_steps": _steps_check(
            driven.poisson_steps, config, replayed, predicted_served, None
        ),
        "seconds": seconds,
    }


def speed_row(
    request: PlanRequest,
    profile: Profile,
    config: ExecutionConfig,
    driven: Driven,
    e2e: float,
    probe: SpeedProbe | None,
) -> dict[str, Any] | None:
    """The probe's reading of the machine around the Poisson run against ``profile``'s
    tables (``ratio`` above 1: slower than priced), and the Poisson run replayed with
    every timing scaled to the mean of the two readings (``at_speed``): what the
    prediction would have been, had the profile been measured at the run's speed."""
    if probe is None or not driven.probed:
        return None
    prices = priced(profile, probe.points)
    ratios = [speed_ratio(seconds, prices) for seconds in driven.probed]
    factor = statistics.fmean(ratios)
    events = EventSimulator(request, at_speed(profile, factor))
    replayed = replay_e2e_p99(events, config, driven.poisson)
    return {
        "points": [list(p) for p in probe.points],
        "priced_s": list(prices),
        "probed_s": [list(seconds) for seconds in driven.probed],
        "ratio_before": ratios[0],
        "ratio_after": ratios[-1],
        "factor": factor,
        "predicted_e2e_p99_s": replayed,
        "error_pct": error_pct(replayed, e2e),
    }


def repeat_row(
    events: EventSimulator,
    config: ExecutionConfig,
    records: Sequence[Record],
    first_e2e: float,
    first_predicted: float,
) -> dict[str, float]:
    """A repeat of the Poisson run (the same requests at the same gaps) beside the
    first: how far its measured e2e p99 moved (``moved_pct``), and the replay's
    error for it."""
    measured = open_loop_e2e_p99(records)
    predicted = replay_e2e_p99(events, config, records)
    return {
        "e2e_p99_s": measured,
        "predicted_e2e_p99_s": predicted,
        "error_pct": error_pct(predicted, measured),
        "moved_pct": error_pct(measured, first_e2e),
        "predicted_moved_pct": error_pct(predicted, first_predicted),
    }


def replay_closed_loop(
    events: EventSimulator,
    config: ExecutionConfig,
    records: Sequence[Record],
    concurrency: int,
) -> Timeline:
    """The simulator's run of a closed loop's own requests: in the order they were sent,
    with their lengths, ``concurrency`` at once and each later one sent as an earlier one
    finishes. The replay takes arrival times, so the loop's are found by passes: every
    request arriving at once first, then each request from the ``concurrency + 1``-th
    arriving when the replay finished as many as precede it by ``concurrency``, until the
    arrivals stop moving. A loop that keeps more in flight than the engine admits never
    runs dry, and the second pass settles it; one that keeps fewer settles a request
    further each pass (one in flight: about as many passes as requests)."""
    order = sorted(records, key=lambda r: r.arrival)
    ins = [r.input_tokens for r in order]
    outs = [r.output_tokens for r in order]
    n = len(order)
    arrival = np.zeros(n)
    timeline = events.replay(config, arrival, ins, outs)
    for _ in range(2 * n + 2):
        sent = np.zeros(n)
        sent[concurrency:] = np.sort(timeline.done)[: max(n - concurrency, 0)]
        if np.allclose(sent, arrival, rtol=0.0, atol=1e-9):
            break
        arrival = sent
        timeline = events.replay(config, arrival, ins, outs)
    return timeline


def replay_e2e_p99(
    events: EventSimulator, config: ExecutionConfig, records: Sequence[Record]
) -> float:
    """The simulator's p99 end-to-end latency for a Poisson run's own requests: each
    arriving when it did, with its lengths, counted after the same warm-up."""
    order = sorted(records, key=lambda r: r.arrival)
    timeline = events.replay(
        config,
        [r.arrival for r in order],
        [r.input_tokens for r in order],
        [r.output_tokens for r in order],
    )
    skip = math.ceil(POISSON_WARMUP_FRACTION * len(order))
    return nearest_rank([float(v) for v in timeline.e2e[skip:]], 99)


def _steps_check(
    steps: dict[str, dict[str, float]],
    config: ExecutionConfig,
    sim: Simulator,
    predicted: Prediction,
    window_s: float | None,
) -> dict[str, Any]:
    """The steady window's steps as measured, beside the profile's tables for a step of
    the same mean batch (the model's work, without what serving adds to a step): decode
    at the workload's mean context (Static: the mean input plus half the batch's
    expected longest output); encode at the steps' mean prompt (packed encodings cost
    their tokens) or, for Static, at their mean longest prompt (it pads a batch to its
    longest). Then, given the steady window (``window_s``), what serving added: the
    window's seconds beyond the tables' steps, per step, beside the profile's
    ``engine`` curve, and of it the seconds between the steps (the engine's loop; the
    rest is the chain's handling of a command and the step's slowdown in the engine).
    Where a prediction misses, this says whether the steps, the engine or the batching
    differ."""
    k, m = sim.costs, sim.m
    if config.strategy == "WorkloadAware":
        enc, dec = sim.workload_aware_groups(config)
    else:
        enc = dec = Group(config.pipeline_stages, config.tensor_parallel)
    out: dict[str, Any] = {"predicted_decode_batch": predicted.decode_batch}
    engine = 0.0  # the profile's engine seconds of the window's steps
    tables = 0.0  # the tables' seconds of the window's steps
    if "decode" in steps:
        d = steps["decode"]
        context = m.mean_context
        if config.strategy == "Static":  # every slot decodes until the batch's longest ends
            context = m.mean_input + m.expected_max_steps(config.encode_batch) / 2
        own = k.engine_step(d["mean_batch"])
        model = k.iteration(dec, d["mean_batch"], context, config.micro_batches) - own
        engine += own * d["steps"]
        tables += model * d["steps"]
        out["decode"] = {
            **d,
            "model_seconds": model,
            "error_pct": error_pct(model, d["mean_seconds"]),
        }
    if "encode" in steps:
        e = steps["encode"]
        padded = config.strategy == "Static"
        length = e["mean_longest_prompt"] if padded else e["mean_prompt"]
        own = k.engine_step(e["mean_batch"])
        model = k.encode_latency(enc, e["mean_batch"], length) - own * enc.stages
        engine += own * e["steps"]
        tables += model * e["steps"]
        out["encode"] = {
            **e,
            "model_seconds": model,
            "model_at": "mean longest prompt" if padded else "mean prompt",
            "error_pct": error_pct(model, e["mean_seconds"]),
        }
    count = sum(x["steps"] for x in steps.values())
    busy = sum(x["steps"] * x["mean_seconds"] for x in steps.values())
    if count and window_s is not None and config.strategy != "WorkloadAware":
        # (WorkloadAware: two loops, whose steps overlap)
        beyond = (window_s - tables) / count
        out["engine"] = {
            "seconds_per_step": beyond,
            "between_steps_s": (window_s - busy) / count,
            "model_seconds": engine / count,
            "error_pct": error_pct(engine / count, beyond),
        }
    return out


# -- the bench --------------------------------------------------------------------------------


def measure_profile(
    architecture: Architecture,
    mode: Mode,
    seconds: float,
    log: Callable[[str], None],
    device: BenchDevice | None = None,
) -> Profile:
    """The XProfiler's profile of ``architecture`` on ``device`` (default: this CPU,
    one thread)."""
    return bench_profiler(
        architecture, seconds=seconds, midpoints=mode.midpoints, passes=mode.passes, log=log,
        device=device,
    ).run()  # fmt: skip


def plan_request(
    architecture: Architecture,
    workload: Workload,
    gpus: int = 1,
    bound: float | None = None,
    strategy: StrategyChoice = "Auto",
    device: BenchDevice | None = None,
) -> PlanRequest:
    """The planner's request for ``device``: on the CPU, one process per "GPU"."""
    device = device or BenchDevice.cpu()
    return PlanRequest(
        architecture=architecture, gpu=device.gpu, gpus=gpus, gpus_per_node=gpus,
        dtype=device.dtype, workload=workload, latency_bound_s=bound, strategy=strategy,
        executable_only=True,
    )  # fmt: skip


@dataclass(frozen=True)
class Entry:
    """One configuration the bench runs: its role, how it was chosen (``planner``: the
    XScheduler's plan or baseline; ``fixed``: built here as a fidelity check, priced by
    the same :meth:`Simulator.evaluate` the planner calls) and the simulator that
    prices it (its request names the GPUs the configuration uses)."""

    role: str
    config: ExecutionConfig
    sim: Simulator
    chosen: str = "planner"


def pipeline_config(plan: ExecutionConfig) -> ExecutionConfig:
    """The pipeline row: RoundRobin over ``PIPELINE_STAGES`` stages of one process each,
    with the plan's encode batch and encodes per decode step, the decode batch split in
    as many micro-batches as stages (so that both stages work at once)."""
    return ExecutionConfig(
        strategy="RoundRobin", pipeline_stages=PIPELINE_STAGES, micro_batches=PIPELINE_STAGES,
        encode_batch=plan.encode_batch, decode_batch=plan.decode_batch,
        decode_steps_per_encode=plan.decode_steps_per_encode,
    )  # fmt: skip


def workload_aware_config(plan: ExecutionConfig, steady_decode_batch: float) -> ExecutionConfig:
    """The WorkloadAware row when no WorkloadAware plan meets the bound: one encoder and
    one decoder process, the plan's encode batch, and the plan's predicted steady
    decode batch as the decoder's target."""
    return ExecutionConfig(
        strategy="WorkloadAware", encode_gpus=1, decode_gpus=1, encode_batch=plan.encode_batch,
        decode_batch=max(1, round(steady_decode_batch)),
    )  # fmt: skip


def _configs(
    mode: Mode,
    architecture: Architecture,
    workload: Workload,
    profile: Profile,
    bound: float,
    device: BenchDevice,
) -> tuple[list[Entry], list[str]]:
    """The configurations to run, and notes on what was left out."""
    notes: list[str] = []
    request = plan_request(architecture, workload, 1, bound, device=device)
    plan = schedule(request, profile)
    if not isinstance(plan, Plan):
        raise RuntimeError(f"no plan meets the {bound:.3f} s bound: {plan.message}")
    sim = Simulator(request, profile)
    out = [Entry("plan", plan.config, sim)]
    for role, key in (("static", "Static"), ("continuous", "Continuous")):
        base = plan.baselines.get(key)
        if role not in mode.roles:
            continue
        if base is None:
            notes.append(f"no {key} configuration meets the bound")
            continue
        out.append(Entry(role, base.config, sim))
    two = [r for r in ("pipeline", "workload-aware") if r in mode.roles]
    if two and not device.fits(2):
        notes.append(f"{' and '.join(two)} need two GPUs (one process each); {device.gpus} here")
        two = []
    if "pipeline" in two:
        pipe = plan_request(architecture, workload, PIPELINE_STAGES, bound, "RoundRobin", device)
        out.append(
            Entry("pipeline", pipeline_config(plan.config), Simulator(pipe, profile), "fixed")
        )
    if "workload-aware" in two:
        pair = plan_request(architecture, workload, 2, bound, "WorkloadAware", device)
        waa = schedule(pair, profile)
        if isinstance(waa, Plan):
            out.append(Entry("workload-aware", waa.config, Simulator(pair, profile)))
        else:
            steady = plan.predicted.decode_batch
            config = workload_aware_config(plan.config, steady)
            notes.append(
                f"no WorkloadAware plan meets the bound ({waa.message}); the workload-aware "
                f"row runs {summarize_config(config)}, built from the plan"
            )
            out.append(Entry("workload-aware", config, Simulator(pair, profile), "fixed"))
    return out, notes


def bench(
    mode: Mode,
    *,
    seed: int,
    profile_seconds: float | None = None,
    log: Callable[[str], None] = lambda _m: None,
    architecture: Architecture | None = None,
    workload: Workload | None = None,
    device: BenchDevice | None = None,
) -> dict[str, Any]:
    """Profile, plan, run every configuration on ``device`` (default: this CPU); the
    report."""
    start = time.monotonic()
    device = device or BenchDevice.cpu()
    architecture = architecture or default_architecture(device)
    workload = workload or bench_workload()
    budget = profile_seconds or mode.profile_seconds
    profile = measure_profile(architecture, mode, budget, log, device)
    profiled = time.monotonic() - start
    request = plan_request(architecture, workload, device=device)
    (bound,) = static_latency_percentiles(request, profile, (BOUND_PERCENTILE,))
    configs, notes = _configs(mode, architecture, workload, profile, bound, device)
    rng = np.random.default_rng(seed)
    rows = []
    # the configurations interleaved, round after round (A B C, A B C): each measured
    # at different times, so that how far a measurement moves between rounds (the
    # machine's drift) stands beside its prediction's error
    for index, (turn, entry) in enumerate((t, e) for t in range(mode.rounds) for e in configs):
        # each configuration is predicted from a profile measured just before it runs (the
        # first: the planning one): a shared machine's speed drifts over minutes
        fresh, fresh_s = profile, profiled
        if index > 0:
            at = time.monotonic()
            fresh = measure_profile(architecture, mode, budget, log, device)
            fresh_s = time.monotonic() - at
        config = entry.config
        log(f"round {turn + 1}/{mode.rounds}, running {entry.role}: {summarize_config(config)}")
        try:
            row = measure_config(
                entry.role, config, entry.sim, workload, mode, rng, bound, fresh, device
            )
            rows.append({**row, "chosen": entry.chosen, "round": turn, "profile_seconds": fresh_s})
        except Exception as exc:  # a multi-process replica that fails is reported, not fatal
            if config.gpus_per_replica == 1:
                raise
            notes.append(f"{entry.role} ({summarize_config(config)}) failed: {exc}")
    if device.kind == "cpu" and any(r["processes"] > 1 for r in rows) and _cpus() <= 2:
        notes.append(
            f"the {max(r['processes'] for r in rows)}-process replica shares {_cpus()} cores "
            "with the driver's engine and client threads, and every step goes through gloo: "
            "the profile (one process, one thread, the other core idle) sees neither"
        )
    keys = ("name", "family", "num_layers", "hidden_size", "num_heads", "ffn_size", "vocab_size")
    return {
        "mode": mode.name,
        "model": architecture.model_dump(include=set(keys)),
        "workload": workload.describe(),
        "latency_bound_s": bound,
        "bound_rule": f"p{BOUND_PERCENTILE} of the static-batching configurations' latencies",
        "configs": rows,
        "rounds": mode.rounds,
        "summary": summarize(rows, bound, device.target_error_pct),
        "notes": notes,
        "environment": {
            "device": device.describe(),
            "gpu_type": device.gpu.name,
            "dtype": device.dtype,
            "machine": platform.machine(),
            "cpu_model": cpu_model(),
            "cpus": _cpus(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seed": seed,
        },
        "profile_seconds": profiled + sum(r["profile_seconds"] for r in rows[1:]),
        "seconds": time.monotonic() - start,
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exegpt bench runner", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--quick", action="store_true", help="no Continuous, fewer requests, one round"
    )
    parser.add_argument("--seed", type=int, default=0, help="request lengths and prompts")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, metavar="S", help="profiling budget"
    )
    parser.add_argument(
        "--requests", type=int, default=None, metavar="N",
        help="requests of each closed loop (the Poisson run gets half)",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu",
        help="cpu: the small model on one thread (target < 10 %%); cuda: llama-2-7b's shape "
        "(random float16 weights) on this node's GPU (target < 5 %%)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        device = BenchDevice.cuda() if args.device == "cuda" else BenchDevice.cpu()
    except NoDevice as exc:
        print(f"error: --device cuda: {exc}", file=sys.stderr)
        return 2

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    mode = QUICK if args.quick else FULL
    if args.requests:
        mode = replace(mode, closed_requests=args.requests, poisson_requests=args.requests // 2)
    report = bench(
        mode, seed=args.seed, profile_seconds=args.profile_seconds, log=log, device=device
    )
    if args.json:
        print(json.dumps(_jsonable(report)))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
