"""What ``exegpt bench vllm --quick`` may reuse: a measurement is kept whole, read back
equal, and never taken for another engine, model or machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exegpt.bench import vllm_measured
from exegpt.bench.device import BenchDevice
from exegpt.bench.vllm_overhead import Churn, Point
from exegpt.bench.vllm_profile import CPU_MODEL
from exegpt.planner.analytic import analytic_profile


def _measured() -> vllm_measured.Measured:
    bare = analytic_profile(CPU_MODEL, BenchDevice.cpu().gpu, "float32")
    points = [Point(1, 96.0, 0.002, 0.0013, 1, 0.21), Point(32, 98.0, 0.007, 0.0046, 1, 0.69)]
    joins = ((Churn(0.009, 0.33, 0.0024), Churn(0.005, 0.08, 0.0025)),)
    return vllm_measured.Measured(
        bare, points, 25.0, 45.0, 40.0, "2026-12-05T03:00:00+00:00", 0.004, joins
    )


def test_a_measurement_is_read_back_as_it_was_kept(tmp_path: Path) -> None:
    m = _measured()
    path = tmp_path / "measured" / "m.json"
    vllm_measured.save(path, m)
    assert vllm_measured.load(path) == m
    assert not path.with_suffix(".tmp").exists()
    assert m.join_s == 0.004 and len(m.joins) == 1


def test_a_measurement_kept_without_a_joins_cost_is_measured_again(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    vllm_measured.save(path, _measured())
    doc = json.loads(path.read_text())
    del doc["join"]
    path.write_text(json.dumps(doc))
    assert vllm_measured.load(path) is None


def test_a_missing_or_damaged_measurement_is_measured_again(tmp_path: Path) -> None:
    assert vllm_measured.load(tmp_path / "absent.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text('{"bare": {}, "points": []')
    assert vllm_measured.load(bad) is None
    bad.write_text('{"points": []}')
    assert vllm_measured.load(bad) is None


def test_the_key_changes_with_the_engine_the_model_and_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = vllm_measured.key(CPU_MODEL, "0.32.0", "2.13.0+cpu", 128)
    assert base == vllm_measured.key(CPU_MODEL, "0.32.0", "2.13.0+cpu", 128)
    assert base.startswith("llama-small-") and base.endswith(".json")
    other_model = CPU_MODEL.model_copy(update={"num_layers": 8})
    assert base != vllm_measured.key(other_model, "0.32.0", "2.13.0+cpu", 128)
    assert base != vllm_measured.key(CPU_MODEL, "0.33.0", "2.13.0+cpu", 128)
    assert base != vllm_measured.key(CPU_MODEL, "0.32.0", "2.14.0+cpu", 128)
    assert base != vllm_measured.key(CPU_MODEL, "0.32.0", "2.13.0+cpu", 64)
    monkeypatch.setattr(vllm_measured, "_processor", lambda: "another processor")
    assert base != vllm_measured.key(CPU_MODEL, "0.32.0", "2.13.0+cpu", 128)
