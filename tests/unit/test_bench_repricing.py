"""``exegpt bench repricing``: an earlier paper record's plans priced again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from planner_builders import profile_for, request

from exegpt.bench.repricing import reprice, run
from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.simulator import Simulator


def _scenario(bound: float | None, qps: float) -> dict[str, object]:
    config = ExecutionConfig(
        strategy="RoundRobin", pipeline_stages=2, micro_batches=2, encode_batch=32,
        decode_steps_per_encode=8,
    )  # fmt: skip
    return {
        "id": "opt-13b/S/x",
        "model": "opt-13b",
        "task": "S",
        "gpu": "nvidia-a100-80gb",
        "gpus": 16,
        "gpus_per_node": 8,
        "bound_s": bound,
        "exegpt": {
            "summary": "RRA [PP2xTP1] mb2",
            "config": config.model_dump(),
            "throughput_qps": qps,
            "latency_s": 1.0,
        },
    }


def _now() -> tuple[float, float]:
    config = ExecutionConfig(**_scenario(None, 1.0)["exegpt"]["config"])  # type: ignore[index]
    p = Simulator(request(model="opt-13b"), profile_for("opt-13b")).evaluate(config)
    return p.throughput_qps, p.latency_s


def test_a_plan_is_priced_by_the_current_simulator() -> None:
    qps, latency = _now()
    row = reprice(_scenario(latency * 0.5, 2 * qps))
    assert row is not None and row["multi_stage_round_robin"]
    assert row["qps_now"] == pytest.approx(qps)
    assert row["cycle_change_pct"] == pytest.approx(100.0)
    assert row["exceeds_bound_now"]
    assert not reprice(_scenario(latency * 2, qps))["exceeds_bound_now"]  # type: ignore[index]


def test_the_summary_counts_bounded_scenarios_that_now_exceed_their_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    qps, latency = _now()
    record = {"scenarios": [_scenario(latency / 2, qps), _scenario(None, qps), {"exegpt": None}]}
    path = tmp_path / "paper.json"
    path.write_text(json.dumps(record))
    assert run(["--record", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["plans"] == 2
    assert summary["bounded"] == 1
    assert summary["exceed_bound_now"] == 1
