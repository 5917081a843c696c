"""``exegpt bench paper``: the static-latency bounds, the scenario records, the CLI."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest

from exegpt.bench import paper
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import PlanRequest
from exegpt.planner.profile import Profile
from exegpt.planner.scheduler import BATCH_GRID, _micro_choices, _pipes
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload_presets import get_workload

# Cheap scenarios (well under a second each): OPT-13B on C1 under the two tight bounds,
# and GPT-3 175B on G on 48 A40s with every bound.
CHEAP = ("opt-13b/C1/p10", "opt-13b/C1/p30", "gpt3-175b/G")


def _setup(model: str, task: str, gpu: str, gpus: int) -> tuple[PlanRequest, Profile]:
    arch, g = get_architecture(model), get_gpu(gpu)
    request = PlanRequest(
        architecture=arch, gpu=g, gpus=gpus, gpus_per_node=8, workload=get_workload(task)
    )
    return request, analytic_profile(arch, g)


@pytest.fixture(scope="module")
def opt13b_s() -> tuple[PlanRequest, Profile]:
    return _setup("opt-13b", "S", "nvidia-a100-80gb", 16)


@pytest.fixture(scope="module")
def cheap_report() -> dict[str, Any]:
    """``run --json`` on the cheap scenarios; stdout must hold exactly one JSON object."""
    argv = ["--json"]
    for name in CHEAP:
        argv += ["--scenario", name]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert paper.run(argv) == 0
    out = buf.getvalue()
    report, end = json.JSONDecoder().raw_decode(out)
    assert out[end:].strip() == ""
    assert isinstance(report, dict)
    return report


def test_static_space_matches_the_schedulers(opt13b_s: tuple[PlanRequest, Profile]) -> None:
    request, profile = opt13b_s
    sim = Simulator(request, profile)
    expected = {
        (p.tp, p.stages, p.replicas, micro, b)
        for p in _pipes(sim, request.gpus)
        for micro in _micro_choices(p.stages)
        for b in BATCH_GRID
    }
    got = [
        (c.tensor_parallel, c.pipeline_stages, c.replicas, c.micro_batches, c.encode_batch)
        for c in paper.static_configs(request, profile)
    ]
    assert len(got) == len(set(got))
    assert set(got) == expected
    assert all(c.strategy == "Static" for c in paper.static_configs(request, profile))


def test_percentile_bounds_are_increasing_real_static_latencies(
    opt13b_s: tuple[PlanRequest, Profile],
) -> None:
    request, profile = opt13b_s
    bounds = paper.static_latency_percentiles(request, profile)
    assert len(bounds) == 3
    assert bounds[0] < bounds[1] < bounds[2]
    sim = Simulator(request, profile)
    configs = paper.static_configs(request, profile)
    real = [p.latency_s for p in map(sim.evaluate, configs) if p.feasible]
    assert 0 < len(real) < len(configs)  # memory rules some out
    assert all(b in real for b in bounds)
    lat = paper.static_latencies(request, profile)
    assert lat == sorted(real)  # one latency per memory-feasible configuration
    # The q-th percentile has at least q % of the feasible static latencies at or below it.
    for q, b in zip(paper.PERCENTILES, bounds, strict=True):
        assert sum(x <= b for x in lat) >= q / 100 * len(lat)


def test_static_latencies_keep_equal_latencies(
    opt13b_s: tuple[PlanRequest, Profile], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configurations with equal latencies each count (the percentiles are over
    configurations): here every configuration is listed twice."""
    request, profile = opt13b_s
    once = paper.static_latencies(request, profile)
    configs = paper.static_configs(request, profile)
    monkeypatch.setattr(paper, "static_configs", lambda *_: configs + configs)
    twice = paper.static_latencies(request, profile)
    assert twice == sorted(once + once)
    assert len(twice) == 2 * len(once)


def test_nearest_rank() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert paper.nearest_rank(xs, 10) == 1.0
    assert paper.nearest_rank(xs, 30) == 3.0
    assert paper.nearest_rank(xs, 70) == 7.0
    assert paper.nearest_rank(xs, 100) == 10.0
    assert paper.nearest_rank([5.0], 1) == 5.0
    with pytest.raises(ValueError):
        paper.nearest_rank(xs, 0)
    with pytest.raises(ValueError):
        paper.nearest_rank([], 50)


def test_json_is_one_object_and_plans_beat_static_within_bound(
    cheap_report: dict[str, Any],
) -> None:
    report = cheap_report
    assert set(report) >= {"scenarios", "summary", "targets", "environment"}
    assert report["environment"]["cpu_count"] >= 1
    assert report["environment"]["python"].count(".") == 2
    ids = [s["id"] for s in report["scenarios"]]
    assert ids == [
        "opt-13b/C1/p10",
        "opt-13b/C1/p30",
        "gpt3-175b/G/p10",
        "gpt3-175b/G/p30",
        "gpt3-175b/G/p70",
        "gpt3-175b/G/none",
    ]
    for s in report["scenarios"]:
        assert s["status"] == "Plan", s["id"]
        e, st = s["exegpt"], s["static"]
        assert st is not None, s["id"]
        assert e["throughput_qps"] >= st["throughput_qps"], s["id"]
        if s["bound_s"] is not None:
            assert e["latency_s"] <= s["bound_s"], s["id"]
            assert st["latency_s"] <= s["bound_s"], s["id"]
        assert s["ratio_static"] >= 1.0
        assert s["checks"] == {"within_bound": True, "fits_memory": True, "at_least_static": True}
        assert s["search"]["evaluated"] > 0
    bounds = [s["bound_s"] for s in report["scenarios"][2:5]]
    assert bounds == sorted(bounds)
    sm = report["summary"]
    assert sm["planned"] == 6
    assert sum(sm["strategies"].values()) == 6
    assert sm["checks"] == {
        "bound_violations": [],
        "below_static": [],
        "static_baseline_missing": [],
    }
    assert report["targets"]["gap_to_exhaustive"]["met"] is None


def test_deterministic_plans(cheap_report: dict[str, Any]) -> None:
    again = paper.build_report(["gpt3-175b/G/p30"])
    first = next(s for s in cheap_report["scenarios"] if s["id"] == "gpt3-175b/G/p30")
    second = again["scenarios"][0]
    for key in ("bound_s", "exegpt", "static", "continuous", "ratio_static"):
        assert first[key] == second[key]


def test_exhaustive_gap_on_a_small_cluster() -> None:
    pair = paper.Pair("opt-13b", "C1", paper.Cluster("a100x2", "nvidia-a100-80gb", 2, 2))
    request, profile = _setup("opt-13b", "C1", "nvidia-a100-80gb", 2)
    request = request.model_copy(update={"gpus_per_node": 2})
    bound = paper.static_latency_percentiles(request, profile, qs=(30,))[0]
    rec = paper.run_scenario(
        paper.Scenario(pair, "p30", bound), profile, exhaustive=True, static_feasible=1
    )
    ex = rec["exhaustive"]
    assert ex["status"] == "Plan"
    assert ex["evaluated"] >= rec["search"]["evaluated"]
    assert -1e-9 <= ex["gap"] <= paper.TARGET_EXHAUSTIVE_GAP
    assert ex["throughput_qps"] >= rec["exegpt"]["throughput_qps"] * (1 - 1e-6)


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert paper.run(["--scenario", "gpt3-175b/G/p10"]) == 0
    out = capsys.readouterr().out
    assert "gpt3-175b/G/p10" in out
    assert "targets:" in out
    assert "mean_ratio_over_static" in out


def test_selection_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    pairs, unknown = paper.select(["OPT-13B/s/P10", "opt-13b/S", "nope/S", "opt-13b/S/p99"], False)
    assert unknown == ["nope/S", "opt-13b/S/p99"]
    assert [(p.name, labels) for p, labels in pairs] == [("opt-13b/S", paper.BOUND_LABELS)]
    quick, _ = paper.select([], True)
    assert [p.name for p, _ in quick] == list(paper.QUICK)
    full, _ = paper.select([], False)
    assert len(full) == 21
    assert sum(len(labels) for _, labels in full) == 84
    ids = [p.name for p, _ in full]
    assert len(set(ids)) == 21
    assert "gpt3-101b/C1@a100" in ids and "gpt3-101b/C1@a40" in ids
    both, _ = paper.select(["gpt3-101b/C1/none"], False)
    assert [(p.cluster.gpu, labels) for p, labels in both] == [
        ("nvidia-a100-80gb", ("none",)),
        ("nvidia-a40", ("none",)),
    ]
    one, unknown = paper.select(["gpt3-101b/C1@A40/p10", "gpt3-101b/C1@h100"], False)
    assert [(p.name, labels) for p, labels in one] == [("gpt3-101b/C1@a40", ("p10",))]
    assert unknown == ["gpt3-101b/C1@h100"]
    assert paper.run(["--scenario", "nope/S", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown scenario" in captured.err
    assert paper.run(["--list"]) == 0
    assert "gpt3-341b/C2" in capsys.readouterr().out


def test_markdown_table_has_a_row_per_scenario(cheap_report: dict[str, Any], tmp_path: Any) -> None:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(cheap_report))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert paper.run(["--markdown", str(path)]) == 0
    rows = [line for line in out.getvalue().splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(cheap_report["scenarios"])  # header + one per scenario
    first = cheap_report["scenarios"][0]
    assert rows[1].startswith(f"| {first['id']} |")
