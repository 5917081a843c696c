"""``exegpt bench runner``: its measurement functions on synthetic records with known
answers, and one short end-to-end run through the CLI (a small profile, few requests)
checking the JSON and the table. The figures themselves are for docs/benchmarks.md,
not asserted: the machines are shared and noisy."""

from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any

import numpy as np
import pytest
import torch

from exegpt.bench import runner as bench
from exegpt.bench.device import BenchDevice
from exegpt.bench.load import make_requests
from exegpt.bench.profile import CPU_MODELS
from exegpt.bench.records import (
    Latency,
    Record,
    Window,
    after_warmup,
    error_pct,
    in_window,
    nearest_rank,
    p99_length_latency,
    requests_for_window,
    served_fields,
    served_in_window,
    steady_window,
    window_of,
    window_size,
)
from exegpt.bench.report import _jsonable, summarize
from exegpt.cli import main
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import Architecture, get_architecture
from exegpt.planner.events import EventSimulator
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import ExecutionConfig, PlanRequest
from exegpt.planner.workload_presets import get_workload
from exegpt.runner.engine import Finished, Timings


def rec(
    output: int,
    *,
    arrival: float = 0.0,
    encoded: float = 0.0,
    first: float | None = None,
    last: float | None = None,
    finished: float | None = None,
) -> Record:
    last = encoded + output if last is None else last
    return Record(
        input_tokens=4,
        output_tokens=output,
        arrival=arrival,
        encoded=encoded,
        first_token=encoded + 0.5 if first is None else first,
        last_token=last,
        finished=last if finished is None else finished,
    )


def test_record_from_finished() -> None:
    f = Finished(7, 5, 3, "length", Timings(1.0, 1.5, 2.0, 4.0, 4.25))
    r = Record.of(f)
    assert (r.input_tokens, r.output_tokens) == (5, 3)
    assert r.generation == 2.5 and r.e2e == 3.25 and r.ttft == 1.0
    with pytest.raises(ValueError, match="request 8"):
        Record.of(Finished(8, 5, 0, "error", Timings(1.0)))


def test_steady_window_counts_whole_bursts() -> None:
    # a closed loop of 40 requests at concurrency 4 finishing in bursts of 4 every second
    records = [rec(1, finished=float(1 + i // 4)) for i in range(40)]
    w = steady_window(records, concurrency=4)
    # warm-up: the first 20 % (8 completions, the 2nd burst at t=2); the end: the
    # 36th completion (the 9th burst, t=9): 28 completions in 7 s
    assert (w.start, w.end, w.completions) == (2.0, 9.0, 28)
    assert w.throughput == pytest.approx(4.0)
    # the requests the simulator is asked about: the bursts at t=3..9
    served = served_in_window(records, w)
    assert len(served) == 28 and {r.finished for r in served} == set(map(float, range(3, 10)))
    # warm-up is at least `concurrency` completions
    w = steady_window([rec(1, finished=float(i)) for i in range(1, 41)], concurrency=10)
    assert (w.start, w.end, w.completions) == (10.0, 30.0, 20)
    with pytest.raises(ValueError, match="no steady window"):
        steady_window([rec(1, finished=float(i)) for i in range(8)], concurrency=4)


@pytest.mark.parametrize(
    ("completions", "concurrency"), [(0, 4), (2, 4), (100, 16), (480, 50), (410, 64), (99.5, 256)]
)
def test_a_closed_loop_is_sized_for_the_completions_its_window_must_hold(
    completions: float, concurrency: int
) -> None:
    n = requests_for_window(completions, concurrency)
    finished = [float(i) for i in range(1, n + 1)]
    assert window_of(finished, concurrency).completions >= completions
    # the fewest: one request less leaves a shorter window (or, below two, none)
    assert window_size(n - 1, concurrency) < max(completions, 2)


def _events() -> EventSimulator:
    arch = get_architecture("llama-2-7b")
    request = PlanRequest(
        architecture=arch, gpu=get_gpu("nvidia-a100-80gb"), gpus=1, workload=get_workload("S")
    )
    return EventSimulator(request, analytic_profile(arch, get_gpu("nvidia-a100-80gb")))


def test_a_closed_loop_is_replayed_sending_each_request_as_an_earlier_one_finishes() -> None:
    events = _events()
    config = ExecutionConfig(strategy="Continuous", decode_batch=4)
    rng = np.random.default_rng(2)
    ins, outs = (rng.integers(10, 200, 30), rng.integers(5, 60, 30))
    # sent at times that say in which order; the replay keeps that order
    sent = [rec(int(o), arrival=float(30 - k)) for k, o in enumerate(outs)]
    sent = [
        Record(int(i), r.output_tokens, r.arrival, 0, 0, 0, 0)
        for i, r in zip(ins, sent, strict=True)
    ]
    order = sorted(sent, key=lambda r: r.arrival)

    # one at a time: each request arrives as the one before it finishes
    one = bench.replay_closed_loop(events, config, sent, concurrency=1)
    alone = [
        events.replay(config, [0.0], [r.input_tokens], [r.output_tokens]).done[0] for r in order
    ]
    assert one.done == pytest.approx(np.cumsum(alone))
    assert one.arrival[1:] == pytest.approx(one.done[:-1])

    # more in flight than the engine admits: the engine never waits for the client, and
    # the replay is that of every request waiting from the start
    busy = bench.replay_closed_loop(events, config, sent, concurrency=12)
    backlog = events.replay(
        config, np.zeros(30), [r.input_tokens for r in order], [r.output_tokens for r in order]
    )
    assert busy.done == pytest.approx(backlog.done)
    assert (busy.arrival[12:] > 0).all() and (busy.arrival[:12] == 0).all()
    # its steady window, as a run's
    w = window_of(list(busy.done), 12)
    assert w == steady_window([rec(1, finished=float(t)) for t in busy.done], 12)


def test_in_window_keeps_requests_encoded_and_finished_inside() -> None:
    w = Window(10.0, 20.0, 5)
    inside = rec(3, encoded=11.0)
    early = rec(3, encoded=9.0)
    late = rec(3, encoded=18.0)  # finishes at 21
    assert in_window([inside, early, late], w) == [inside]


def test_p99_latency_band_median() -> None:
    # generation time = 0.1 + 0.01 per token; p99 length 100: band 95..105
    lengths = [96, 98, 100, 102, 104] * 4 + [94, 106, 10, 20]
    records = [rec(o, last=0.1 + 0.01 * o) for o in lengths]
    lat = p99_length_latency(records, 100)
    assert lat.method == "band median" and lat.requests == 20 and lat.band == (95, 105)
    assert lat.seconds == pytest.approx(1.1)


def test_p99_latency_line_fit_when_the_band_is_thin() -> None:
    # few requests near 60: the line over the upper half (lengths >= the median)
    records = [rec(o, last=0.2 + 0.02 * o) for o in range(5, 50, 3)]
    records.append(rec(10, last=99.0))  # below the median length: not in the fit
    lat = p99_length_latency(records, 60)
    assert lat.method == "line fit"
    assert lat.seconds == pytest.approx(0.2 + 0.02 * 60)
    assert lat.band == (57, 63)  # 5 % of 60, rounded
    assert math.isnan(p99_length_latency([], 60).seconds)


def test_percentiles_warmup_and_errors() -> None:
    values = [float(v) for v in range(1, 201)]
    assert nearest_rank(values, 99) == 198.0
    assert nearest_rank(values, 50) == 100.0
    assert nearest_rank([3.0], 99) == 3.0
    assert math.isnan(nearest_rank([], 99))
    records = [rec(1, arrival=float(10 - i)) for i in range(10)]
    kept = after_warmup(records, 0.1)
    assert sorted(r.arrival for r in kept) == [float(i) for i in range(2, 11)]
    assert error_pct(11.0, 10.0) == pytest.approx(10.0)
    assert error_pct(9.0, 10.0) == pytest.approx(-10.0)
    assert math.isnan(error_pct(1.0, 0.0)) and math.isnan(error_pct(1.0, math.nan))


def test_requests_are_seeded_and_follow_the_workload() -> None:
    wl = bench.bench_workload()
    a = make_requests(wl, 50, np.random.default_rng(3), 2048)
    b = make_requests(wl, 50, np.random.default_rng(3), 2048)
    assert a == b
    assert all(1 <= len(r.prompt) <= wl.input.max and 1 <= r.max_tokens <= wl.output.max for r in a)
    assert all(0 < t < 2048 for r in a for t in r.prompt)
    assert wl.output.std / wl.output.mean > 0.7  # the high-variance workload


def _row(
    role: str, measured_qps: float, predicted_qps: float, latency: float, workload_qps: float = 0
) -> dict[str, Any]:
    pred = {"throughput_qps": predicted_qps, "latency_s": 1.0, "e2e_p99_s": 2.0}
    meas = {
        "throughput_qps": measured_qps, "latency_s": latency, "e2e_p99_s": 2.0,
        "latency_at_workload_p99_s": latency,
    }  # fmt: skip
    of_workload = {**pred, "throughput_qps": workload_qps or predicted_qps}
    return {
        "role": role,
        "predicted": pred,
        "measured": meas,
        "error_pct": {k: error_pct(v, meas[k]) for k, v in pred.items()},
        "workload_prediction": {
            "predicted": of_workload,
            "error_pct": {k: error_pct(v, meas[k]) for k, v in of_workload.items()},
        },
        "meets_bound": latency <= 1.0,
    }


def test_summary_errors_and_ratio() -> None:
    rows = [_row("plan", 30.0, 33.0, 0.8, 36.0), _row("static", 10.0, 9.0, 1.25, 12.0)]
    s = summarize(rows, bound=1.0, target_error_pct=10.0)
    assert s["errors_pct"]["throughput_qps"] == {
        "median_abs_pct": pytest.approx(10.0),
        "worst_abs_pct": pytest.approx(10.0),
    }
    assert s["errors_pct"]["latency_s"]["worst_abs_pct"] == pytest.approx(25.0)
    assert s["error_target_met"] == {
        "throughput_qps": False,
        "latency_s": False,
        "e2e_p99_s": True,
    }
    # the target is the device's (10 % on the CPU, 5 % on a GPU)
    assert summarize(rows, bound=1.0, target_error_pct=12.0)["error_target_met"]["throughput_qps"]
    # the plan's prediction for the workload, beside the one for the served requests
    assert s["errors_pct_workload_one_process"]["throughput_qps"] == {
        "median_abs_pct": pytest.approx(20.0),
        "worst_abs_pct": pytest.approx(20.0),
    }
    r = s["ratio_over_static"]
    assert r["measured"] == pytest.approx(3.0) and r["predicted"] == pytest.approx(36 / 12)
    assert r["target_met"] and r["plan_meets_bound"] and not r["static_meets_bound"]
    # a two-process replica counts in the errors, not in the one-process target
    waa = {**_row("workload-aware", 10.0, 30.0, 1.0), "processes": 2}
    s = summarize([*rows, waa], bound=1.0, target_error_pct=10.0)
    assert s["errors_pct"]["throughput_qps"]["worst_abs_pct"] == pytest.approx(200.0)
    assert s["errors_pct_one_process"]["throughput_qps"]["worst_abs_pct"] == pytest.approx(10.0)
    assert s["error_target_met"]["e2e_p99_s"]


def test_jsonable_turns_nan_into_null() -> None:
    doc = _jsonable({"a": math.nan, "b": [1.0, math.inf], "c": (2, "x")})
    assert doc == {"a": None, "b": [1.0, None], "c": [2, "x"]}
    json.loads(json.dumps(doc, allow_nan=False))


# A tiny model and short outputs: the whole bench, fast.
TINY = Architecture.model_validate(
    {**CPU_MODELS["opt-small"].model_dump(), "name": "opt-tiny", "num_layers": 2,
     "hidden_size": 64, "ffn_size": 256, "vocab_size": 512, "max_positions": 256}
)  # fmt: skip
SMALL = bench.Mode("test", 1.5, False, 1, 80, 40, ("plan", "static"), poisson_runs=2)


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    torch.set_num_threads(1)  # as the command does (module fixtures run before autouse ones)
    wl = get_workload("chat").scaled(1 / 32, 1 / 16)
    return bench.bench(SMALL, seed=1, architecture=TINY, workload=wl)


def test_run_json(report: dict[str, Any]) -> None:
    assert report["mode"] == "test" and report["model"]["name"] == "opt-tiny"
    assert report["environment"]["threads"] == 1
    bound = report["latency_bound_s"]
    assert bound > 0
    roles = [c["role"] for c in report["configs"]]
    assert roles == ["plan", "static"]
    plan, static = report["configs"]
    assert plan["strategy"] == "RoundRobin" and static["strategy"] == "Static"
    assert plan["workload_prediction"]["predicted"]["latency_s"] <= bound * (1 + 1e-9)
    for c in report["configs"]:
        assert c["processes"] == 1
        for key in ("throughput_qps", "latency_s", "e2e_p99_s", "ttft_median_s", "ttft_p99_s"):
            assert math.isfinite(c["measured"][key]) and c["measured"][key] > 0, key
        for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
            assert c["predicted"][key] > 0
            m, p = c["measured"][key], c["predicted"][key]
            assert c["error_pct"][key] == pytest.approx(100 * (p - m) / m)
        assert c["measured"]["ttft_median_s"] <= c["measured"]["ttft_p99_s"]
        loop = c["closed_loop"]
        assert loop["requests"] == max(80, 4 * loop["concurrency"])
        assert c["poisson"]["requests"] == 40
        assert c["closed_loop"]["window_completions"] > 0
        # arrivals at half the saturated throughput the configuration's profile predicts
        rate = 0.5 * c["workload_prediction"]["predicted"]["throughput_qps"]
        assert c["poisson"]["rate_qps"] == pytest.approx(rate)
        assert 0 < c["poisson"]["busy_fraction"] <= 1
        assert c["meets_bound"] == (c["measured"]["latency_at_workload_p99_s"] <= bound)
        assert c["profile_seconds"] > 0  # each predicted from a profile measured before it
        served = c["served"]
        assert served["requests"] == loop["window_completions"]
        assert 1 <= served["output_p99"] <= 239 // 4 + 1
        assert c["latency_measurement"]["p99_length"] == served["output_p99"]
        wp = c["workload_prediction"]
        for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
            assert wp["predicted"][key] > 0 and math.isfinite(wp["error_pct"][key])
        assert c["steps"]["decode"]["steps"] > 0 and c["steps"]["encode"]["mean_batch"] >= 1
        engine = c["steps"]["engine"]
        assert engine["between_steps_s"] > 0  # the engine's loop runs between the steps
        # (the profile's curve is a difference of two timings, clipped at zero: on this
        # tiny model and a 1.5 s profile it can be zero at the steps' batch)
        assert math.isfinite(engine["seconds_per_step"]) and engine["model_seconds"] >= 0
        (again,) = c["poisson_again"]  # the Poisson run repeated once
        assert again["e2e_p99_s"] > 0 and again["predicted_e2e_p99_s"] > 0
        first = c["measured"]["e2e_p99_s"]
        assert again["moved_pct"] == pytest.approx(100 * (again["e2e_p99_s"] - first) / first)
        assert again["error_pct"] == pytest.approx(
            error_pct(again["predicted_e2e_p99_s"], again["e2e_p99_s"])
        )
        speed = c["machine_speed"]  # the probe, right before and right after the Poisson run
        before, after = speed["probed_s"]
        assert len(before) == len(after) == len(speed["priced_s"]) == len(speed["points"])
        assert min(before + after) > 0
        assert speed["factor"] == pytest.approx((speed["ratio_before"] + speed["ratio_after"]) / 2)
        assert speed["error_pct"] == pytest.approx(
            error_pct(speed["predicted_e2e_p99_s"], c["measured"]["e2e_p99_s"])
        )
        during = c["poisson_steps"]
        assert during["decode"]["steps"] > 0 and "engine" not in during  # (idle gaps)
        enc = c["steps"]["encode"]
        assert enc["model_seconds"] > 0 and wp["predicted"]["e2e_p99_s_analytic"] > 0
        assert 1 <= enc["mean_prompt"] <= enc["mean_longest_prompt"] <= 194  # the longest input
        padded = c["strategy"] == "Static"
        assert enc["model_at"] == ("mean longest prompt" if padded else "mean prompt")
    s = report["summary"]
    for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
        e = s["errors_pct"][key]
        assert 0 <= e["median_abs_pct"] <= e["worst_abs_pct"]
        assert s["errors_pct_one_process"][key] == e  # both configurations are one process
    repeats = s["poisson_repeats_one_process"]
    assert repeats["runs"] == 2
    assert repeats["moved_pct"]["worst_abs_pct"] == pytest.approx(
        max(abs(c["poisson_again"][0]["moved_pct"]) for c in report["configs"])
    )
    at_speed = s["machine_speed_one_process"]["e2e_error_pct_at_probed_speed"]
    assert at_speed["worst_abs_pct"] == pytest.approx(
        max(abs(c["machine_speed"]["error_pct"]) for c in report["configs"])
    )
    r = s["ratio_over_static"]
    assert r["measured"] == pytest.approx(
        plan["measured"]["throughput_qps"] / static["measured"]["throughput_qps"]
    )
    assert isinstance(r["target_met"], bool) and r["target"] == 2.0
    json.loads(json.dumps(_jsonable(report), allow_nan=False))


def test_cli_prints_one_json_object_or_a_table(
    report: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[tuple[str, int, float | None]] = []

    def fake(mode: bench.Mode, *, seed: int, profile_seconds: float | None, **_: Any) -> Any:
        calls.append((mode.name, mode.closed_requests, profile_seconds))
        return report

    monkeypatch.setattr(bench, "bench", fake)
    argv = ["bench", "runner", "--quick", "--json", "--seed", "3", "--requests", "50"]
    assert main(argv) == 0
    out, _ = capsys.readouterr()
    assert out.count("\n") == 1 and json.loads(out)["latency_bound_s"] == report["latency_bound_s"]
    assert main(["bench", "runner", "--profile-seconds", "5"]) == 0
    out, _ = capsys.readouterr()
    assert calls == [("quick", 50, None), ("full", 600, 5.0)]
    assert "throughput q/s" in out and "p99-len latency s" in out and "TTFT" in out
    assert "plan / static throughput" in out and "RRA [PP1xTP1]" in out


def test_by_role_summary_sets_drift_beside_error() -> None:
    # two rounds of one role: errors over both, and how far the second measured moved
    first = {**_row("pipeline", 10.0, 11.0, 1.0), "round": 0, "processes": 2, "chosen": "fixed"}
    second = {**_row("pipeline", 8.0, 11.0, 1.0), "round": 1, "processes": 2, "chosen": "fixed"}
    first["machine_speed"] = {"ratio_before": 1.02, "ratio_after": 1.10, "error_pct": 1.0}
    second["machine_speed"] = {"ratio_before": 0.95, "ratio_after": 1.0, "error_pct": 1.0}
    b = summarize([second, first], bound=1.0, target_error_pct=10.0)["by_role"]["pipeline"]
    assert (b["chosen"], b["processes"], b["rounds"]) == ("fixed", 2, 2)
    assert b["errors_pct"]["throughput_qps"] == {
        "median_abs_pct": pytest.approx((10.0 + 37.5) / 2),
        "worst_abs_pct": pytest.approx(37.5),
    }
    # the second round measured 8 q/s against the first's 10: moved by -20 %
    assert b["moved_pct"]["throughput_qps"]["worst_abs_pct"] == pytest.approx(20.0)
    assert b["moved_pct"]["latency_s"]["worst_abs_pct"] == pytest.approx(0.0)
    # the probe's readings: +2, +10, -5 and 0 % against the profiles' prices
    assert b["probe_slower_pct"] == {
        "median_abs_pct": pytest.approx(3.5),
        "worst_abs_pct": pytest.approx(10.0),
    }
    one = summarize([first], bound=1.0, target_error_pct=10.0)["by_role"]["pipeline"]
    assert math.isnan(one["moved_pct"]["throughput_qps"]["worst_abs_pct"])  # one round


def test_fixed_fidelity_configurations() -> None:
    plan = bench.ExecutionConfig(
        strategy="RoundRobin", encode_batch=6, decode_batch=40, decode_steps_per_encode=5
    )
    pipe = bench.pipeline_config(plan)
    assert (pipe.strategy, pipe.pipeline_stages, pipe.micro_batches) == ("RoundRobin", 2, 2)
    assert (pipe.encode_batch, pipe.decode_steps_per_encode, pipe.gpus_per_replica) == (6, 5, 2)
    waa = bench.workload_aware_config(plan, 23.6)
    assert (waa.strategy, waa.encode_gpus, waa.decode_gpus) == ("WorkloadAware", 1, 1)
    assert (waa.encode_batch, waa.decode_batch) == (6, 24)


# The fidelity rows: a 2-stage pipeline and WorkloadAware, each two processes.
TWO = bench.Mode("test-two", 1.5, False, 1, 60, 30, ("plan", "pipeline", "workload-aware"))


@pytest.fixture(scope="module")
def two_process_report() -> dict[str, Any]:
    torch.set_num_threads(1)
    wl = get_workload("chat").scaled(1 / 32, 1 / 16)
    return bench.bench(TWO, seed=2, architecture=TINY, workload=wl)


def test_pipeline_and_workload_aware_rows_are_predicted_and_measured(
    two_process_report: dict[str, Any],
) -> None:
    report = two_process_report
    by_role = {c["role"]: c for c in report["configs"]}
    assert list(by_role) == ["plan", "pipeline", "workload-aware"], report["notes"]
    pipe, waa = by_role["pipeline"], by_role["workload-aware"]
    assert pipe["chosen"] == "fixed" and pipe["strategy"] == "RoundRobin"
    assert pipe["config"]["pipeline_stages"] == 2 and pipe["processes"] == 2
    assert waa["strategy"] == "WorkloadAware" and waa["processes"] == 2
    assert waa["chosen"] in ("planner", "fixed")
    for c in (pipe, waa):
        for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
            m, p = c["measured"][key], c["predicted"][key]
            assert math.isfinite(m) and m > 0 and math.isfinite(p) and p > 0, (c["role"], key)
            assert c["error_pct"][key] == pytest.approx(100 * (p - m) / m)
        assert c["closed_loop"]["window_completions"] > 0
        speed = c["machine_speed"]  # the probe read the machine beside the error
        assert min(speed["probed_s"][0] + speed["probed_s"][1]) > 0
    # the pipeline really ran as two stage processes of one chain, neither of them this
    # one, each spending CPU on its layers
    ranks = pipe["ranks"]
    assert [(r["rank"], r["chain"], r["stage"]) for r in ranks] == [
        (0, "main", 0),
        (1, "main", 1),
    ]
    pids = {r["pid"] for r in ranks}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(r["cpu_s"] > 0.1 for r in ranks)
    # WorkloadAware: an encoder process and a decoder process
    assert [(r["chain"], r["stage"]) for r in waa["ranks"]] == [("encoder", 0), ("decoder", 0)]
    assert len({r["pid"] for r in waa["ranks"]}) == 2
    (plan_rank,) = by_role["plan"]["ranks"]  # the one-process plan ran here
    assert plan_rank["pid"] == os.getpid()
    s = report["summary"]
    for key in ("throughput_qps", "latency_s", "e2e_p99_s"):
        expected = statistics.median(abs(c["error_pct"][key]) for c in report["configs"])
        assert s["errors_pct"][key]["median_abs_pct"] == pytest.approx(expected)
    for role in ("pipeline", "workload-aware"):
        b = s["by_role"][role]
        assert b["processes"] == 2 and b["rounds"] == 1
        assert b["errors_pct"]["throughput_qps"]["median_abs_pct"] == pytest.approx(
            abs(by_role[role]["error_pct"]["throughput_qps"])
        )
        assert math.isfinite(b["probe_slower_pct"]["worst_abs_pct"])
    # two-process rows count in the errors, not in the one-process target
    assert s["errors_pct_one_process"]["throughput_qps"]["worst_abs_pct"] == pytest.approx(
        abs(by_role["plan"]["error_pct"]["throughput_qps"])
    )
    table = bench.format_table(report)
    assert "main stage 1" in table and "pipeline (fixed, 2 process(es), 1 round(s))" in table
    json.loads(json.dumps(_jsonable(report), allow_nan=False))


def test_rounds_interleave_the_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    # with the profile and the runs stood in for, the order in which the bench runs its
    # configurations, the profile it measures before each, and the rows it keeps
    device = BenchDevice.cpu()
    profiles: list[int] = []

    def profile(*_: Any, **__: Any) -> Any:
        profiles.append(len(profiles))
        return analytic_profile(TINY, device.gpu, device.dtype)

    ran: list[tuple[str, int]] = []

    def measure(role: str, config: Any, sim: Any, *_: Any) -> dict[str, Any]:
        ran.append((role, config.gpus_per_replica))
        return {**_row(role, 10.0, 11.0, 0.5), "processes": config.gpus_per_replica}

    monkeypatch.setattr(bench, "measure_profile", profile)
    monkeypatch.setattr(bench, "measure_config", measure)
    mode = bench.Mode("rounds", 1.0, False, 1, 60, 30, bench.FULL.roles, rounds=2)
    wl = get_workload("chat").scaled(1 / 32, 1 / 16)
    report = bench.bench(mode, seed=0, architecture=TINY, workload=wl)
    roles = [r for r, _ in ran[: len(ran) // 2]]
    assert roles[0] == "plan" and roles[-2:] == ["pipeline", "workload-aware"]
    assert ran == ran[: len(ran) // 2] * 2  # A B C .., A B C ..: interleaved, not A A B B
    assert dict(ran)["pipeline"] == 2 and dict(ran)["workload-aware"] == 2
    assert len(profiles) == len(ran)  # the planning profile, then one before each other run
    assert [c["round"] for c in report["configs"]] == [0] * len(roles) + [1] * len(roles)
    assert report["rounds"] == 2
    assert {r: b["rounds"] for r, b in report["summary"]["by_role"].items()} == dict.fromkeys(
        roles, 2
    )


def test_a_row_says_what_it_served_and_how_its_latency_was_measured() -> None:
    """Both serving benches describe a row's served requests and its p99-length latency
    measurement with the same fields (``served_fields``)."""
    from exegpt.planner.workload import Workload

    served = Workload.from_pairs([10, 30, 20, 40], [5, 7, 9, 100], "served")
    workload = get_workload("chat")
    latency = Latency(seconds=0.5, method="band median", requests=21, band=(95, 105))
    fields = served_fields(4, served, latency, workload)
    assert fields["served"] == {
        "requests": 4,
        "mean_input": 25.0,
        "mean_output": served.mean_output,
        "output_p99": served.output_p99,
    }
    assert served.mean_output == pytest.approx(30.25)
    assert fields["latency_measurement"] == {
        "method": "band median",
        "requests": 21,
        "band_tokens": [95, 105],
        "p99_length": served.output_p99,
        "workload_p99_length": workload.output_p99,
    }
