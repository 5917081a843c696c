"""``exegpt bench vllm``: its pure parts with small builders (which configurations run
and how each is rendered, the closed loop's concurrency, the ratios and the summary,
vLLM's counters, the client's reading of a stream against a server that streams as
vLLM does). The figures themselves are for docs/vllm.md: starting real vLLM servers
takes about a minute each on a shared CPU, so no end-to-end run is made here
(``tests/runner/test_vllm_workload_aware.py`` and ``tests/operator/test_vllm_flow.py``
start servers from the same arguments)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from builders import spec

from exegpt.bench import vllm as bench
from exegpt.bench import vllm_report as report
from exegpt.bench.device import BenchDevice
from exegpt.bench.openai_load import Client, Request, RequestFailed, Timed, make_requests, records
from exegpt.bench.paper import static_latency_percentiles
from exegpt.bench.runner import bench_workload
from exegpt.bench.speed import at_speed
from exegpt.bench.vllm_overhead import (
    LONG_OUTPUTS,
    PROMPT_TOKENS,
    SHORT_OUTPUTS,
    Churn,
    Point,
    churn,
    churn_requests,
    decode_step,
    handover_cost,
    join_cost,
    model_step,
    probe_order,
    with_handover,
    with_join,
    with_overhead,
)
from exegpt.bench.vllm_servers import (
    _process,
    counters_between,
    parse_counters,
    render,
    stop_on_sigterm,
)
from exegpt.bench.vllm_speed import (
    CONTEXT,
    Reading,
    Readings,
    at_readings,
    lone_request_e2e,
    read_speed,
    speed_fields,
    with_request_overhead,
)
from exegpt.operator.spec import parse_spec
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.costs import Group
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import schedule
from exegpt.planner.vllm_args import KvTransfer
from exegpt.planner.vllm_schedule import SCHEDULER_CLS
from exegpt.runner.vllm_profiler import step_prediction


@pytest.fixture(scope="module")
def profile() -> Profile:
    device = BenchDevice.cpu()
    return analytic_profile(bench.CPU_MODEL, device.gpu, "float32")


@pytest.fixture(scope="module")
def loose(profile: Profile) -> tuple[Plan, float]:
    """The loose bound's plan (the planner's choice for vLLM: an ExeGPT schedule or a
    baseline; the pipeline row runs a RoundRobin schedule either way)."""
    workload = bench_workload()
    request = bench.plan_request(bench.CPU_MODEL, workload, None)
    (bound,) = static_latency_percentiles(request, profile, [bench.BOUNDS["loose"]])
    plan = schedule(bench.plan_request(bench.CPU_MODEL, workload, bound), profile)
    assert isinstance(plan, Plan)
    return plan, bound


ALL = ("plan", "vllm", "static", "pipeline", "workload-aware")


@pytest.fixture(scope="module")
def by(profile: Profile, loose: tuple[Plan, float]) -> dict[str, bench.Entry]:
    """Every row of the loose bound, by role."""
    plan, bound = loose
    request = bench.plan_request(bench.CPU_MODEL, bench_workload(), bound)
    entries, _ = bench.select(plan, request, profile, ALL)
    return {e.role: e for e in entries}


def _arg(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_plan_and_its_baselines_run_as_the_operator_renders_them(
    profile: Profile, loose: tuple[Plan, float]
) -> None:
    plan, bound = loose
    request = bench.plan_request(bench.CPU_MODEL, bench_workload(), bound)
    entries, notes = bench.select(plan, request, profile, ALL)

    assert [e.role for e in entries] == list(ALL)
    if plan.config.strategy == "RoundRobin":
        assert notes == []
    else:  # the pipeline row is the best RoundRobin plan, and a note says so
        assert len(notes) == 1 and "best RoundRobin plan" in notes[0]
    by = {e.role: e for e in entries}
    assert by["plan"].plan == plan
    stock, static = plan.baselines["Continuous"], plan.baselines["Static"]
    assert stock is not None and static is not None
    assert by["vllm"].config == stock.config and by["static"].config == static.config
    assert all(e.plan.engine == "vLLM" for e in entries)
    assert by["pipeline"].config.pipeline_stages == 2 == by["pipeline"].config.micro_batches
    assert by["pipeline"].sim.request.gpus == 2 == by["workload-aware"].sim.request.gpus

    model = Path("/weights/m")
    stock_args = render(by["vllm"].plan, "server", model, 194, 239, 8000)
    assert "--scheduler-cls" not in stock_args
    assert int(_arg(stock_args, "--max-num-seqs")) == stock.config.decode_batch
    plan_args = render(plan, "server", model, 194, 239, 8000)
    if plan.config.strategy == "RoundRobin":
        assert _arg(plan_args, "--scheduler-cls") == SCHEDULER_CLS
        schedule_doc = json.loads(_arg(plan_args, "--additional-config"))["exegpt"]
        assert schedule_doc["encode_batch"] == plan.config.encode_batch
    static_args = render(by["static"].plan, "server", model, 194, 239, 8000)
    assert json.loads(_arg(static_args, "--additional-config"))["exegpt"]["mode"] == "Static"
    assert _arg(render(by["pipeline"].plan, "server", model, 194, 239, 8000),
                "--pipeline-parallel-size") == "2"  # fmt: skip


def test_the_pipeline_row_runs_the_best_round_robin_plan_when_the_plan_is_not(
    profile: Profile, loose: tuple[Plan, float]
) -> None:
    plan, bound = loose
    request = bench.plan_request(bench.CPU_MODEL, bench_workload(), bound)
    static = plan.baselines["Static"]
    assert static is not None
    as_static = bench.as_plan(plan, static.config)  # a plan whose schedule is Static
    entries, notes = bench.select(as_static, request, profile, ("plan", "pipeline"))

    pipeline = {e.role: e for e in entries}["pipeline"]
    rr = schedule(request.model_copy(update={"strategy": "RoundRobin"}), profile)
    assert isinstance(rr, Plan)
    assert pipeline.config.strategy == "RoundRobin"
    assert pipeline.config.encode_batch == rr.config.encode_batch
    assert pipeline.config.decode_steps_per_encode == rr.config.decode_steps_per_encode
    assert pipeline.config.pipeline_stages == 2
    assert any("best RoundRobin plan" in n and "the plan is Static" in n for n in notes)


def test_a_failure_is_told_by_its_error_line() -> None:
    exc = RuntimeError("pipeline exited 1:\nINFO start\nValueError: PP is not supported\nbye")
    assert bench.failure(exc) == "ValueError: PP is not supported"
    assert bench.failure(RuntimeError("no server")) == "no server"


@pytest.mark.parametrize(
    ("config", "steady", "expected"),
    [
        (ExecutionConfig(strategy="RoundRobin", encode_batch=3, decode_batch=60,
                         decode_steps_per_encode=20), 7.2, 8 + 6),
        (ExecutionConfig(strategy="Static", encode_batch=8, decode_batch=8), 8, 16),
        (ExecutionConfig(strategy="Continuous", decode_batch=6), 6, 12),
        (ExecutionConfig(strategy="WorkloadAware", encode_gpus=1, decode_gpus=1,
                         encode_batch=2, decode_batch=9), 9, 13),
    ],
)  # fmt: skip
def test_a_closed_loop_keeps_the_server_saturated(
    config: ExecutionConfig, steady: float, expected: int
) -> None:
    assert bench.concurrency(config, steady) == expected


def _row(role: str, measured: float, predicted: float, turn: int = 0, **kw: Any) -> dict[str, Any]:
    errors = kw.pop("errors", {m: 0.0 for m in ("throughput_qps", "latency_s", "e2e_p99_s")})
    metrics = {"throughput_qps": measured, "latency_s": 1.0, "e2e_p99_s": 2.0}
    return {
        "role": role, "round": turn, "bound": kw.pop("bound", "tight"),
        "config": kw.pop("config", {"strategy": role}),
        "measured": {**metrics, "latency_at_workload_p99_s": 1.0},
        "predicted": dict(metrics), "error_pct": errors,
        "workload_prediction": {"predicted": {"throughput_qps": predicted}, "error_pct": errors},
        "meets_bound": kw.pop("meets_bound", True), "processes": 1,
    }  # fmt: skip


def test_ratios_are_taken_within_each_round_and_their_median_reported() -> None:
    rows = [
        _row("plan", 30, 60, 0), _row("vllm", 20, 50, 0),
        _row("plan", 24, 60, 1), _row("vllm", 20, 50, 1),
        _row("plan", 40, 60, 2), _row("vllm", 20, 50, 2),
    ]  # fmt: skip
    r = report.ratios(rows, "vllm", 0.5)

    assert [x["measured"] for x in r["rounds"]] == [1.5, 1.2, 2.0]
    assert r["measured"] == 1.5 and r["predicted"] == pytest.approx(1.2)
    assert report.ratios(rows, "static", 0.5) == {"bound_s": 0.5}


def test_a_plan_that_is_the_baseline_is_one_times_it_and_its_repeat_is_reported() -> None:
    stock = {"strategy": "Continuous", "decode_batch": 32}
    rows = [
        _row("plan", 40, 50, 0, config=stock), _row("vllm", 44, 50, 0, config=stock),
        _row("plan", 45, 50, 1, config=stock), _row("vllm", 43, 50, 1, config=stock),
    ]  # fmt: skip
    r = report.ratios(rows, "vllm", 2.0)

    assert r["same_configuration"] is True
    assert r["measured"] == 1.0 and r["predicted"] == 1.0
    assert [x["served_twice"] for x in r["rounds"]] == [40 / 44, 45 / 43]
    assert r["served_twice"] == pytest.approx((40 / 44 + 45 / 43) / 2)
    # another configuration is compared as measured
    rows[1]["config"] = rows[3]["config"] = {"strategy": "Continuous", "decode_batch": 16}
    other = report.ratios(rows, "vllm", 2.0)
    assert other["same_configuration"] is False and "served_twice" not in other
    assert other["measured"] == pytest.approx((40 / 44 + 45 / 43) / 2)


def test_the_summary_gives_median_and_worst_errors_ratios_and_targets() -> None:
    def errs(t: float, lat: float, e2e: float) -> dict[str, float]:
        return {"throughput_qps": t, "latency_s": lat, "e2e_p99_s": e2e}

    rows = [
        _row("plan", 30, 60, errors=errs(5, -4, 30)),
        _row("vllm", 20, 50, errors=errs(-8, 12, -2)),
        _row("static", 10, 20, errors=errs(20, 2, math.nan)),
        _row("plan", 35, 70, bound="loose", meets_bound=False, errors=errs(1, 1, 1)),
        _row("vllm", 40, 60, bound="loose", errors=errs(1, 1, 1)),
    ]
    s = report.summary(rows, {"tight": 0.5, "loose": 2.0})

    assert s["errors_pct"]["throughput_qps"] == {"median_abs_pct": 5.0, "worst_abs_pct": 20.0}
    assert s["errors_pct"]["e2e_p99_s"]["worst_abs_pct"] == 30.0  # NaN left out
    assert s["error_target_met"] == {"throughput_qps": True, "latency_s": True, "e2e_p99_s": True}
    assert s["ratio_over_vllm"]["measured"] == 1.5 and s["ratio_over_static"]["measured"] == 3.0
    assert s["ratio_over_vllm"]["predicted"] == pytest.approx(1.2)
    assert s["bounds"]["loose"]["ratio_over_vllm"]["measured"] == pytest.approx(35 / 40)
    assert s["plan_meets_bound"] is False  # the loose bound's plan missed
    assert s["targets"]["over_vllm_tight_met"] and s["targets"]["over_static_met"]
    assert s["targets"]["over_vllm_never_below_1"] is False


METRICS = """\
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
vllm:iteration_tokens_total_sum{engine="0",model_name="bench"} 1200.0
vllm:iteration_tokens_total_count{engine="0",model_name="bench"} 100.0
vllm:request_prefill_time_seconds_sum{engine="0",model_name="bench"} 2.0
vllm:request_prefill_time_seconds_count{engine="0",model_name="bench"} 40.0
vllm:request_queue_time_seconds_sum{engine="0",model_name="bench"} 8.0
vllm:num_preemptions_total{engine="0",model_name="bench"} 0.0
vllm:num_requests_running{engine="0",model_name="bench"} 3.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="bench",source="local_compute"} 50.0
vllm:prompt_tokens_by_source_total{engine="0",source="external_kv_transfer"} 256.0
"""


def test_the_engines_counters_are_read_and_differenced() -> None:
    before = parse_counters(METRICS)
    after = parse_counters(
        METRICS.replace("1200.0", "3200.0").replace(" 100.0", " 300.0")
        .replace(" 2.0\n", " 3.0\n").replace(" 40.0", " 60.0")
    )  # fmt: skip

    assert before["steps"] == 100 and before["queue_s"] == 8
    d = counters_between(before, after)
    assert d["steps"] == 200 and d["mean_step_tokens"] == 10
    assert d["prefills"] == 20 and d["mean_prefill_s"] == pytest.approx(0.05)
    assert d["mean_queue_s"] == 0
    assert before["prompt_local"] == 50 and before["prompt_loaded"] == 256


def test_a_record_counts_the_prefill_before_the_first_token() -> None:
    t = Timed(5, 10, arrival=1.0, first_token=2.0, last_token=3.0, finished=3.1)

    r = t.record(0.25)
    assert (r.encoded, r.first_token, r.generation, r.ttft, r.e2e) == (1.75, 2.0, 1.25, 1.0, 2.1)
    assert t.record(5.0).encoded == 1.0  # never before it arrived


# -- the client against a server that streams as vLLM's does -----------------------------------


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["max_tokens"] < 1:
        return web.json_response({"error": "max_tokens"}, status=400)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    made = body["max_tokens"] - (1 if body["prompt"][0] == 99 else 0)  # 99: one short
    for i in range(made):
        chunk = {"choices": [{"index": 0, "text": f" w{i}"}], "usage": None}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.002)
    usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": made}}
    await resp.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
    return resp


@pytest.fixture(scope="module")
def streaming() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/completions", _completions)
    runner = web.AppRunner(app)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_the_client_times_streamed_tokens_in_a_closed_loop_and_poisson_arrivals(
    streaming: str,
) -> None:
    client = Client(streaming, "bench")
    reqs = [Request((5, 6, 7), n, i) for i, n in enumerate([3, 8, 5, 1, 6])]

    closed = client.closed_loop(reqs, 2)
    assert sorted(t.output_tokens for t in closed) == [1, 3, 5, 6, 8]
    for t in closed:
        assert t.arrival < t.first_token <= t.last_token <= t.finished
        assert t.input_tokens == 3
    long = next(t for t in closed if t.output_tokens == 8)
    assert long.last_token - long.first_token >= 7 * 0.002 * 0.9

    poisson = client.poisson(reqs, [1.0] * 5, rate=200.0)
    arrivals = sorted(t.arrival for t in poisson)  # as scheduled, however late sent
    assert [b - a for a, b in itertools.pairwise(arrivals)] == pytest.approx([0.005] * 4)
    assert all(t.arrival < t.first_token for t in poisson)


def test_the_client_refuses_an_answer_short_of_its_tokens(streaming: str) -> None:
    client = Client(streaming, "bench")
    with pytest.raises(RequestFailed, match="asked for 4 tokens, got 3"):
        client.closed_loop([Request((99, 6), 4, 0)], 1)
    with pytest.raises(RequestFailed, match="400"):
        client.closed_loop([Request((5,), 0, 0)], 1)


def test_the_servers_overhead_becomes_the_profiles_engine_curve(profile: Profile) -> None:
    points = [
        Point(b, 96, model_step(profile, b, 80) + 1e-3 + 2e-4 * b, model_step(profile, b, 80))
        for b in (1, 8, 32)
    ]
    served = with_overhead(profile, points)

    assert served.engine is not None
    for b in (1, 8, 32, 16):  # on the line, and between its points
        assert served.engine.step.at(b) == pytest.approx(1e-3 + 2e-4 * b)
        # the model's part is the profile's; the whole step is the server's
        assert model_step(served, b, 80) == pytest.approx(model_step(profile, b, 80))
        assert step_prediction(served, 1, "decode", b, 80) == pytest.approx(
            model_step(profile, b, 80) + 1e-3 + 2e-4 * b
        )
    assert "measured through vLLM's OpenAI server" in served.provenance.notes


def test_the_shaped_rows_are_measured_on_servers_of_their_shape(
    profile: Profile, by: dict[str, bench.Entry]
) -> None:
    model = Path("/weights/m")

    # a pipeline: its stages under the ExeGPT schedule, one request started every
    # iteration into the smaller batch in flight, so two batches of 8 fill it
    pipe = bench.shape_probe(by["pipeline"], (1, 8))
    c = pipe.config
    assert (c.strategy, c.pipeline_stages, c.micro_batches) == ("RoundRobin", 2, 2)
    assert (c.encode_batch, c.decode_steps_per_encode, c.decode_batch) == (1, 1, 16)
    args = render(pipe, "server", model, 194, 239, 8000)
    assert _arg(args, "--pipeline-parallel-size") == "2"
    assert _arg(args, "--scheduler-cls") == SCHEDULER_CLS

    pair = bench.shape_probe(by["workload-aware"], (1, 8))
    assert pair.config.strategy == "WorkloadAware"
    assert (pair.config.encode_gpus, pair.config.decode_gpus) == (1, 1)
    assert pair.config.decode_batch == 8 == pair.config.encode_batch
    decode = render(pair, "decode", model, 194, 239, 8000, KvTransfer.shared_directory("/kv"))
    assert _arg(decode, "--max-num-seqs") == "8"
    assert json.loads(_arg(decode, "--kv-transfer-config"))["kv_role"] == "kv_both"

    # an iteration of the probe's pipeline: two micro-batches of 8 through both stages,
    # no engine curve; a WorkloadAware decode server is one stage
    bare = profile.model_copy(update={"engine": None})
    one = model_step(bare, 8, 80)
    two = bench.shape_price(by["pipeline"], profile)(8, 80)
    costs = bench.Simulator(by["pipeline"].sim.request, bare).costs
    assert two == pytest.approx(costs.iteration(Group(2, 1), 16, 80, 2))
    assert one < two < 2 * one
    assert bench.shape_price(by["workload-aware"], profile)(8, 80) == pytest.approx(one)


def test_what_serving_adds_is_priced_at_each_measured_batch_not_on_a_fitted_line(
    profile: Profile,
) -> None:
    # not linear in the batch (as measured here): a line through these would price
    # batch 8 at about 1 ms
    adds = {1: 0.65e-3, 8: 1.56e-3, 32: 1.60e-3, 96: 6.71e-3}
    points = [Point(b, 96, model_step(profile, b, 80) + a, model_step(profile, b, 80))
              for b, a in adds.items()]  # fmt: skip
    served = with_overhead(profile, points)

    assert served.engine is not None
    for b, a in adds.items():
        assert served.engine.step.at(b) == pytest.approx(a)
    assert served.engine.step.at(4) == pytest.approx(0.65e-3 + (1.56e-3 - 0.65e-3) * 3 / 7)
    # a server faster than the model's step at some batch adds nothing there
    faster = [Point(1, 96, 1e-3, 2e-3), Point(8, 96, 5e-3, 4e-3)]
    curve = with_overhead(profile, faster).engine
    assert curve is not None and curve.step.at(1) == 0.0 and curve.step.at(8) == pytest.approx(1e-3)


def test_a_measured_batch_below_a_smaller_one_is_pooled_with_it(profile: Profile) -> None:
    # as measured at 17:34 UTC: batch 4 below batch 2 (the machine's drift between them)
    adds = {1: 0.37e-3, 2: 0.97e-3, 4: 0.28e-3, 8: 1.22e-3, 16: 1.15e-3, 32: 2.89e-3}
    points = [Point(b, 96, model_step(profile, b, 80) + a, model_step(profile, b, 80))
              for b, a in adds.items()]  # fmt: skip
    curve = with_overhead(profile, points).engine
    assert curve is not None
    got = [curve.step.at(b) for b in adds]
    assert got == pytest.approx([0.37e-3, 0.625e-3, 0.625e-3, 1.185e-3, 1.185e-3, 2.89e-3])
    assert got == sorted(got)


def test_the_probe_takes_the_batches_in_turn() -> None:
    assert probe_order((1, 8, 32), 3) == [1, 8, 32, 1, 8, 32, 1, 8, 32]
    assert probe_order((4,), 2) == [4, 4]


def test_a_shapes_overhead_is_charged_once_per_stage(profile: Profile) -> None:
    # a two-stage server whose step is the model's two stages plus 1 ms per stage
    points = [Point(b, 96, 2e-3 + 2e-3 + 4e-4 * b, 2e-3 + 4e-4 * b, stages=2) for b in (1, 8)]
    assert [p.overhead_s for p in points] == pytest.approx([1e-3, 1e-3])
    served = with_overhead(profile, points)
    assert served.engine is not None and served.engine.step.at(4) == pytest.approx(1e-3)


# -- what a WorkloadAware pair's hand-over costs its decode server ---------------------------


def _decode_server(joins: float, context: float, handover: float) -> Churn:
    """A load on a decode server whose step is the model's (2 ms plus 10 us a token of
    context), 1 ms of serving, and ``handover`` per join."""
    model = 2e-3 + 1e-5 * context
    return Churn(model + 1e-3 + joins * handover, joins, model)


def test_a_hand_over_costs_what_the_short_loads_add_per_join() -> None:
    short = [_decode_server(8 / 24, 44, 0.012) for _ in range(3)]
    long = [_decode_server(8 / 96, 80, 0.012) for _ in range(3)]
    # the model's step at each load's context is taken out: its shorter contexts do not
    # hide part of the cost
    assert handover_cost(short, long) == pytest.approx(0.012)
    # the median of each: one round caught in a slow moment moves nothing
    slow = Churn(short[0].step_s * 1.4, short[0].joins_per_step, short[0].model_step_s)
    assert handover_cost([*short[:2], slow], long) == pytest.approx(0.012)
    # a pair whose hand-over is free reads 0, never less
    assert handover_cost([_decode_server(8 / 24, 44, 0.0)], long[:1]) == pytest.approx(0.0)
    faster = Churn(short[0].model_step_s, short[0].joins_per_step, short[0].model_step_s)
    assert handover_cost([faster], long) == 0.0
    with pytest.raises(ValueError, match="join more often"):
        handover_cost(long, short)
    with pytest.raises(ValueError, match="short and long"):
        handover_cost([], long)


def _stock_server(joins: float, context: float, prefill: float, join: float) -> Churn:
    """A load on a stock server: the model's decode step (2 ms plus 10 us a token of
    context), 1 ms of serving, and each join's prompt (``prefill``) and admission
    (``join``)."""
    model = 2e-3 + 1e-5 * context
    return Churn(model + 1e-3 + joins * (prefill + join), joins, model)


def test_a_join_costs_what_the_short_loads_add_per_join_beyond_the_prompt() -> None:
    short = [_stock_server(8 / 24, 44, 0.003, 0.004) for _ in range(3)]
    long = [_stock_server(8 / 96, 80, 0.003, 0.004) for _ in range(3)]
    # the prompt's encoding, which the profile prices, is taken out
    assert join_cost(short, long, 0.003) == pytest.approx(0.004)
    assert handover_cost(short, long) == pytest.approx(0.007)  # the decode side has no prompt
    # a server whose admissions are free reads 0, never less, even where the prompts ran
    # faster than priced
    free = [_stock_server(8 / 24, 44, 0.002, 0.0)], [_stock_server(8 / 96, 80, 0.002, 0.0)]
    assert join_cost(*free, 0.003) == 0.0


def test_the_hand_over_loads_keep_a_full_batch_joining_and_leaving(streaming: str) -> None:
    rng = np.random.default_rng(0)
    short = churn_requests(48, SHORT_OUTPUTS, rng, 2048)
    long = churn_requests(12, LONG_OUTPUTS, rng, 2048)
    assert all(len(r.prompt) == PROMPT_TOKENS for r in short + long)
    assert {r.max_tokens for r in short} <= set(range(SHORT_OUTPUTS[0], SHORT_OUTPUTS[1] + 1))
    assert {r.max_tokens for r in long} <= set(range(LONG_OUTPUTS[0], LONG_OUTPUTS[1] + 1))
    assert len({r.seed for r in short}) == 48

    # on the stand-in server (a token every 2 ms): each request joins once and stays as
    # many steps as its tokens, so a full batch of 2 sees 2 / mean output joins a step
    priced: list[tuple[float, float]] = []

    def price(b: float, n: float) -> float:
        priced.append((b, n))
        return 1e-3

    load = churn(Client(streaming, "bench"), 2, short[:8], price)
    mean = sum(r.max_tokens for r in short[:8]) / 8
    assert load.joins_per_step == pytest.approx(2 / mean)
    assert priced == [(2, PROMPT_TOKENS + mean / 2)]
    assert load.model_step_s == 1e-3
    assert 0.002 <= load.step_s < 0.02
    # a stock server's loads keep no spare request in flight: the batch is what is sent
    stock = churn(Client(streaming, "bench"), 2, short[8:16], price, spare=0)
    assert stock.joins_per_step == pytest.approx(2 / (sum(r.max_tokens for r in short[8:16]) / 8))


def test_a_profile_carries_the_hand_over_through_every_rewrite(profile: Profile) -> None:
    served = with_handover(with_overhead(profile, [Point(1, 96, 5e-3, 4e-3)]), 0.012)
    assert served.engine is not None and served.engine.handover_s == 0.012
    assert served.engine.step.at(1) == pytest.approx(1e-3)
    # what the server adds to a request is set beside it, not in its place
    both = with_request_overhead(served, 0.02)
    assert both.engine is not None
    assert (both.engine.handover_s, both.engine.request_s) == (0.012, 0.02)
    # a slower machine hands over slower too
    slow = at_speed(both, 1.5).engine
    assert slow is not None and slow.handover_s == pytest.approx(0.018)
    assert with_handover(profile.model_copy(update={"engine": None}), 0.01).engine is not None
    # and so does a join, and the engine curve measured again keeps both
    joined = with_join(both, 0.004)
    remeasured = with_overhead(joined, [Point(1, 96, 6e-3, 4e-3)]).engine
    assert remeasured is not None
    assert (remeasured.join_s, remeasured.handover_s, remeasured.request_s) == (0.004, 0.012, 0.02)
    assert remeasured.step.at(1) == pytest.approx(2e-3)
    slower = at_speed(joined, 1.5).engine
    assert slower is not None and slower.join_s == pytest.approx(0.006)


def test_only_the_workload_aware_pair_is_measured_handing_over(
    profile: Profile, by: dict[str, bench.Entry], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    asked: dict[str, int | None] = {}

    def measured(probe: Plan, *args: Any, churn_batch: int | None = None, **kw: Any) -> Any:
        asked[probe.config.strategy] = churn_batch
        points = [Point(b, 96, 6e-3 + 1e-4 * b, 4e-3 + 1e-4 * b) for b in (1, 8)]
        loads = []
        if churn_batch is not None:
            loads = [(_decode_server(8 / 24, 44, 0.01), _decode_server(8 / 96, 80, 0.01))] * 3
        return points, 1.0, loads

    monkeypatch.setattr(bench, "measure_overhead", measured)
    entries = [(r, by[r]) for r in ("plan", "pipeline", "workload-aware")]
    out, shapes = bench.measure_shapes(
        entries, profile, tmp_path, bench_workload(), bench.FULL, tmp_path, {},
        np.random.default_rng(0), lambda _: None,
    )  # fmt: skip
    assert asked == {"RoundRobin": None, "WorkloadAware": 8}
    got = {name: e.sim.profile.engine for name, e in out}
    assert got["workload-aware"] is not None and got["pipeline"] is not None
    assert got["workload-aware"].handover_s == pytest.approx(0.01)
    assert got["pipeline"].handover_s == 0.0
    assert out[0][1] is by["plan"]  # a one-server row keeps its profile
    assert shapes["workload-aware"]["handover"]["seconds"] == pytest.approx(0.01)
    assert len(shapes["workload-aware"]["handover"]["loads"]) == 3
    assert "handover" not in shapes["pipeline"]


def test_the_servers_decode_step_leaves_out_the_connections_and_the_prefill() -> None:
    # three requests decoded together at 10 ms a step after a prefill that ended at
    # different times (one connection was slow to open): 95 decode steps each
    timed = [
        Timed(32, 96, arrival=0.0, first_token=f, last_token=f + 0.95, finished=f + 0.951)
        for f in (0.30, 0.31, 0.90)
    ]
    assert decode_step(timed) == pytest.approx(0.01)
    # whereas first request to last token over the steps would count the waits
    assert (max(t.last_token for t in timed) - 0.0) / 96 > 0.018


# -- the machine's speed, read on a row's own servers ----------------------------------------


def test_the_machines_speed_is_read_on_the_servers_a_batch_at_a_time(streaming: str) -> None:
    # the stand-in server streams a token every 2 ms (and a little more: the event loop)
    client = Client(streaming, "bench")
    reading = read_speed(client, 1e-3, np.random.default_rng(0), 100, repeats=2)

    assert 1.9e-3 <= reading.seconds < 6e-3 and reading.batch == 1
    assert reading.priced == 1e-3 and reading.factor == pytest.approx(reading.seconds / 1e-3)
    # the request's end-to-end latency as the client saw it: at least its 95 decode steps
    assert 95 * reading.seconds < reading.e2e_s < 95 * reading.seconds + 0.5
    # four requests at once, each streamed at its own pace by the stand-in
    four = read_speed(client, 1e-3, np.random.default_rng(0), 100, repeats=1, batch=4)
    assert four.batch == 4 and 1.9e-3 <= four.seconds < 6e-3
    with pytest.raises(ValueError, match="repeats"):
        read_speed(client, 1e-3, np.random.default_rng(0), 100, repeats=0)
    with pytest.raises(ValueError, match="batch"):
        read_speed(client, 1e-3, np.random.default_rng(0), 100, batch=0)
    with pytest.raises(ValueError, match="positive"):
        read_speed(client, 0.0, np.random.default_rng(0), 100)


def _readings(lone: float, poisson: float, closed: float, e2e: float = math.nan) -> Readings:
    """Readings of factors ``lone``, ``poisson`` and ``closed`` (priced at 1 ms)."""
    return Readings(
        Reading(lone * 1e-3, 1e-3, e2e), Reading(poisson * 1e-3, 1e-3, batch=2),
        Reading(closed * 1e-3, 1e-3, batch=8),
    )  # fmt: skip


def test_a_rows_readings_say_how_far_the_machine_moved_while_it_ran() -> None:
    got = speed_fields(_readings(1.5, 1.8, 2.0), Reading(2.2e-3, 1e-3, batch=8))
    assert got["factor_before"] == pytest.approx(2.0) and got["factor_after"] == pytest.approx(2.2)
    assert got["moved_pct"] == pytest.approx(10.0)
    assert got["lone_factor"] == pytest.approx(1.5) and got["poisson_factor"] == pytest.approx(1.8)
    assert (got["lone_batch"], got["poisson_batch"], got["closed_batch"]) == (1, 2, 8)
    assert speed_fields(_readings(1.5, 1.8, 2.0), None)["moved_pct"] is None


def test_the_reading_is_priced_as_the_rows_profile_prices_a_batch_decoding(
    profile: Profile, by: dict[str, bench.Entry]
) -> None:
    one = step_prediction(profile, 1, "decode", 1, CONTEXT)  # the model's step and the engine's
    assert bench.reading_price(by["vllm"]) == pytest.approx(one)
    assert bench.reading_price(by["workload-aware"]) == pytest.approx(one)  # its decode server
    two = by["pipeline"].sim.costs.iteration(Group(2, 1), 1, CONTEXT, 1)
    assert bench.reading_price(by["pipeline"]) == pytest.approx(two) and two > one
    eight = step_prediction(profile, 1, "decode", 8, CONTEXT)
    assert bench.reading_price(by["vllm"], 8) == pytest.approx(eight) and eight > one


def test_the_speed_is_read_at_the_batches_the_rows_loads_run(by: dict[str, bench.Entry]) -> None:
    rng = np.random.default_rng(0)
    workload = bench_workload()
    requests = make_requests(workload, 200, rng, bench.CPU_MODEL.vocab_size)
    gaps = [float(g) for g in rng.exponential(1.0, 200)]
    stock = by["vllm"]
    cap = stock.config.decode_batch
    rate = stock.sim.evaluate(stock.config).throughput_qps
    # the closed loop's batch as predicted (at most the server's max_num_seqs); the
    # Poisson run's, what its replay keeps running: fewer at a lighter load
    heavy = bench.reading_batches(stock, cap - 0.4, requests, gaps, 0.9 * rate)
    light = bench.reading_batches(stock, cap, requests, gaps, 0.1 * rate)
    assert heavy is not None and light is not None
    poisson, closed = heavy
    assert closed == cap and 1 <= poisson <= cap
    assert light[0] < poisson or poisson == 1
    # the ExeGPT schedule is read at most an encode batch at a time: one prefill admits it
    rr = ExecutionConfig(strategy="RoundRobin", encode_batch=4, decode_steps_per_encode=10)
    one_stage = bench.Entry("plan", bench.as_plan(stock.plan, rr), stock.sim, "fixed")
    read = bench.reading_batches(one_stage, 30.0, requests, gaps, 0.5 * rate)
    assert read is not None and read[1] == 4
    # a pipeline is not read: no batch sent at once runs the steps its profile prices
    pipeline = by["pipeline"]
    assert pipeline.config.pipeline_stages == 2
    assert bench.reading_batches(pipeline, 20.0, requests, gaps, 1.0) is None


def test_what_the_server_adds_to_a_request_is_its_reading_beyond_its_priced_steps(
    by: dict[str, bench.Entry],
) -> None:
    entry = by["vllm"]
    profile, request, config = entry.sim.profile, entry.sim.request, entry.config
    slow = at_speed(profile, 2.0)
    steps = lone_request_e2e(slow, request, config)  # the prefill and 95 decode steps
    assert steps > 95 * 2 * bench.reading_price(entry) * 0.9

    # the lone request read twice as slow and 20 ms longer than its steps; the loads'
    # batches read 3x and 4x as slow
    closed, poisson = at_readings(profile, _readings(2.0, 3.0, 4.0, steps + 0.020), request, config)
    for got, factor in ((closed, 4.0), (poisson, 3.0)):
        assert got.engine is not None and got.engine.request_s == pytest.approx(0.020)
        assert got.tensor_parallel == at_speed(profile, factor).tensor_parallel
    # a request faster than its priced steps adds nothing (never below zero) ...
    faster, _ = at_readings(profile, _readings(2.0, 3.0, 4.0, 0.5 * steps), request, config)
    assert faster.engine is not None and faster.engine.request_s == 0.0
    # ... and a reading without the request's latency leaves the profile's own
    plain, _ = at_readings(profile, _readings(2.0, 3.0, 4.0), request, config)
    own = profile.engine.request_s if profile.engine is not None else 0.0
    assert plain.engine is not None and plain.engine.request_s == own


def test_the_profile_carries_what_the_probe_added_to_its_lone_requests(
    profile: Profile, by: dict[str, bench.Entry]
) -> None:
    request = by["vllm"].sim.request
    stock = ExecutionConfig(strategy="Continuous", decode_batch=96)
    steps = lone_request_e2e(profile, request, stock)
    points = [
        Point(1, 96.0, 0.004, 0.003, request_e2e_s=steps + 0.012),
        Point(8, 98.0, 0.006, 0.005, request_e2e_s=steps + 0.9),  # eight at once: not used
    ]
    got = bench.served_by_probe(profile, points, request, stock)
    assert got.engine is not None and got.engine.request_s == pytest.approx(0.012)
    assert bench.served_by_probe(profile, points[1:], request, stock) == profile
    # a measurement kept before the requests' latency was: nothing added
    old = [Point(1, 96.0, 0.004, 0.003)]
    assert bench.served_by_probe(profile, old, request, stock) == profile


def _served(start: float, streams: int, each: int, seconds: float, gap: float) -> list[Timed]:
    """``streams`` requests in flight at a time, each stream running ``each`` requests of
    ``seconds`` back to back (``gap``: the streams' offsets)."""
    out = []
    for s in range(streams):
        t = start + s * gap
        for _ in range(each):
            out.append(Timed(30, 40, t, t + 0.02, t + seconds - 0.001, t + seconds))
            t += seconds
    return out


def _runs(before: Reading | None, after: Reading | None) -> bench.Runs:
    counters = {"steps": 400.0, "mean_step_tokens": 8.0, "mean_prefill_s": 0.01}
    poisson = [Timed(30, 40, 0.1 * i, 0.1 * i + 0.02, 0.1 * i + 0.3, 0.1 * i + 0.301)
               for i in range(30)]  # fmt: skip
    return bench.Runs(
        poisson, _served(10.0, 4, 10, 0.4, 0.1), 5.0, 4, counters, counters,
        speed_before=before, speed_after=after,
    )  # fmt: skip


def test_a_row_is_judged_on_its_profile_with_the_speeds_read_before_its_loads_beside_it(
    profile: Profile, loose: tuple[Plan, float]
) -> None:
    plan, bound = loose
    workload = bench_workload()
    request = bench.plan_request(bench.CPU_MODEL, workload, bound)
    entry = next(e for e in bench.select(plan, request, profile, ("vllm",))[0] if e.role == "vllm")

    plain = bench.evaluate(entry, _runs(None, None), workload, bound, None)
    assert plain["speed_reading"] == {}

    # the machine twice as slow as profiled at the closed loop's batch before it, 2.2x
    # after it, 3x at the Poisson run's batch
    row = bench.evaluate(
        entry, _runs(_readings(1.5, 3.0, 2.0), Reading(2.2e-3, 1e-3, batch=8)),
        workload, bound, None,
    )  # fmt: skip
    read = row["speed_reading"]
    assert read["factor_before"] == pytest.approx(2.0) and read["moved_pct"] == pytest.approx(10)
    assert read["request_overhead_s"] == 0.0  # the readings carry no request latency
    # judged: the profile as measured at the start of the run, reading or not
    assert row["predicted"] == plain["predicted"]
    assert row["error_pct"] == plain["error_pct"] and row["measured"] == plain["measured"]
    # beside it, at the speeds read: the closed loop's steps twice as long (one stage,
    # one GPU: no communication to keep), the Poisson run's three times
    got = read["at_speed_read"]["predicted"]
    assert got["throughput_qps"] == pytest.approx(
        plain["predicted"]["throughput_qps"] / 2, rel=1e-6
    )
    assert got["latency_s"] == pytest.approx(2 * plain["predicted"]["latency_s"])
    runs = _runs(None, None)
    loads = bench.Loads(records(runs.closed, 0.01), runs.concurrency, records(runs.poisson, 0.01))
    slower = bench.predict_served(
        request, request, profile, entry.config, loads, at_speed(entry.sim.profile, 3.0)
    )
    assert got["e2e_p99_s"] == pytest.approx(slower["e2e_p99_s"])
    assert got["e2e_p99_s"] > plain["predicted"]["e2e_p99_s"]
    assert read["at_speed_read"]["error_pct"]["latency_s"] == pytest.approx(
        100 * (got["latency_s"] / row["measured"]["latency_s"] - 1)
    )

    # a lone request that took 30 ms beyond its priced steps: every request's e2e at
    # the speeds read carries them; the latency does not move, and the closed loop
    # (four in flight, fewer than the server admits) serves fewer a second: each request
    # it sends as one finishes reaches the engine 30 ms later
    slow = at_speed(entry.sim.profile, 1.5)
    e2e = lone_request_e2e(slow, entry.sim.request, entry.config) + 0.030
    late = bench.evaluate(
        entry, _runs(_readings(1.5, 3.0, 2.0, e2e), Reading(2.2e-3, 1e-3, batch=8)),
        workload, bound, None,
    )["speed_reading"]  # fmt: skip
    assert late["request_overhead_s"] == pytest.approx(0.030)
    later = late["at_speed_read"]["predicted"]
    assert later["e2e_p99_s"] == pytest.approx(got["e2e_p99_s"] + 0.030)
    assert later["throughput_qps"] < got["throughput_qps"]
    assert later["latency_s"] == got["latency_s"]


def test_the_summary_sets_the_errors_at_the_speeds_read_beside_the_judged_ones() -> None:
    def read(factor: float, moved: float, error: float) -> dict[str, Any]:
        errors = {"throughput_qps": error, "latency_s": -error, "e2e_p99_s": 2 * error}
        return {
            "lone_factor": factor - 0.1, "poisson_factor": factor + 0.05,
            "closed_factor": factor, "moved_pct": moved,
            "at_speed_read": {"predicted": {}, "error_pct": errors},
        }  # fmt: skip

    rows = [_row("plan", 30, 60), _row("vllm", 20, 50), _row("static", 10, 20)]
    assert "speed_readings" not in report.summary(rows, {"tight": 0.5})
    for r, got in zip(rows, (read(0.8, 5, 20), read(0.7, -12, -30), read(0.9, 1, 10)), strict=True):
        r["speed_reading"] = got
    s = report.summary(rows, {"tight": 0.5})

    assert s["errors_pct_at_speed_read"]["throughput_qps"]["median_abs_pct"] == 20
    assert s["errors_pct_at_speed_read"]["e2e_p99_s"]["worst_abs_pct"] == 60
    assert s["speed_readings"]["factor_before_min"] == 0.7
    assert s["speed_readings"]["factor_before_max"] == pytest.approx(0.95)
    assert s["speed_readings"]["lone_factor_min"] == pytest.approx(0.6)
    assert s["speed_readings"]["moved_during_row_pct"] == {
        "median_abs_pct": 5, "worst_abs_pct": 12
    }  # fmt: skip


def test_the_bench_plans_with_the_resources_defaults() -> None:
    # what a user who sets neither field gets: the defaults of the resource
    defaults = parse_spec(spec())
    assert bench.LATENCY_MARGIN == defaults.slo.latency_margin == 0.1
    assert bench.MIN_GAIN == defaults.min_gain == 0.1
    request = bench.plan_request(bench.CPU_MODEL, bench_workload(), 1.0, min_gain=0.1)
    assert request.min_gain == 0.1


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--latency-margin", "0.8", "--latency-margin: give a fraction from 0 to 0.5"),
        ("--latency-margin", "-0.1", "--latency-margin: give a fraction from 0 to 0.5"),
        ("--min-gain", "1.5", "--min-gain: give a fraction from 0 to 1"),
        ("--min-gain", "-0.1", "--min-gain: give a fraction from 0 to 1"),
    ],
)
def test_a_planning_setting_out_of_range_is_refused_before_anything_runs(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.run(["--quick", flag, value])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_bench_searches_at_the_percentile_and_the_user_bound_is_above_it() -> None:
    bounds = bench.bench_bounds([0.36, 1.8], 0.1)
    assert bounds == pytest.approx([0.4, 2.0])
    request = bench.plan_request(bench.CPU_MODEL, bench_workload(), bounds[0], margin=0.1)
    assert request.planning_bound_s == pytest.approx(0.36)
    assert bench.bench_bounds([0.36], 0.0) == [0.36]


def test_the_bench_plans_with_the_margin_its_baselines_share() -> None:
    wl = bench_workload()
    request = bench.plan_request(bench.CPU_MODEL, wl, 1.0, margin=0.1)
    assert request.planning_bound_s == pytest.approx(0.9)


def test_a_terminated_bench_stops_what_it_started(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with (
            pytest.raises(SystemExit) as ended,
            _process("server", ["sleep", "60"], tmp_path / "log", "http://x", {}) as p,
        ):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert ended.value.code == 128 + signal.SIGTERM
        assert p.proc.poll() is not None  # the child was stopped on the way out
    finally:
        signal.signal(signal.SIGTERM, before)
