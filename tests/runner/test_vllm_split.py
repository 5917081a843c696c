"""How the vLLM profiler turns whole step times into the profile's per-layer tables,
and which time of repeated steps it keeps (no vLLM needed)."""

from __future__ import annotations

import pytest
from tiny import tiny_config

from exegpt.planner import analytic
from exegpt.planner.profile import (
    Comm,
    Curve,
    EngineOverhead,
    PhaseTables,
    Profile,
    Provenance,
)
from exegpt.runner.profiler import ProfileOptions
from exegpt.runner.vllm_profiler import VllmProfiler, _Raw, step_prediction
from exegpt.runner.vllm_steps import typical

CONFIG = tiny_config("llama", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2)
HEAD = Curve(x=[1, 16], seconds=[1e-4, 4e-4])
ENGINE = Curve(x=[1, 16], seconds=[2e-4, 5e-4])
LINK = Curve(x=[1, 1e6], seconds=[1e-5, 1e-3])
COMM = Comm(all_reduce={2: LINK}, send_recv_intra=LINK, send_recv_inter=LINK)


def test_typical_is_the_median_so_a_slowed_step_is_dropped() -> None:
    assert typical([3.0, 1.0, 2.0, 10.0]) == 2.5
    assert typical([1.0, 9.0, 1.2]) == 1.2
    with pytest.raises(ValueError, match="no timings"):
        typical([])


def _raw(steps: dict[tuple[int, int], float]) -> _Raw:
    batches = sorted({b for b, _ in steps})
    lengths = sorted({n for _, n in steps})
    raw = _Raw(measured=dict(steps), axes=(batches, lengths))
    raw.complete = raw.axes
    return raw


@pytest.mark.parametrize("tp", [1, 2])
def test_whole_steps_survive_the_split(tp: int) -> None:
    """layers x layer + all-reduces + head + engine, as the cost model adds them up,
    gives back every measured step."""
    profiler = VllmProfiler(
        CONFIG, gpu_type="cpu", dtype="float32",
        options=ProfileOptions(tensor_parallel=(1, 2), comm="analytic"),
    )  # fmt: skip
    enc = {(b, n): 2e-3 + 2e-6 * b * n for b in (1, 4, 16) for n in (16, 64, 256)}
    # a decode step affine in the context (the profiler fits decode rows to a line)
    dec = {(b, n): 1.2e-3 + 5e-5 * b + 1e-7 * b * n for b in (1, 4, 16) for n in (16, 64, 256)}
    tables = {
        d: PhaseTables(
            encode=profiler._layer_table(_raw(enc), "encode", d, HEAD, ENGINE, COMM),
            decode=profiler._layer_table(_raw(dec), "decode", d, HEAD, ENGINE, COMM),
            head=HEAD,
        )
        for d in (1, 2)
    }
    arch = CONFIG.architecture
    profile = Profile(
        provenance=Provenance(
            model=arch.name,
            architecture=arch,
            gpu_type="cpu",
            dtype="float32",
            source="measured",
            profiler_version="test",
            engine="vLLM",
        ),
        tensor_parallel=tables,
        comm=COMM,
        memory=analytic.memory_profile(arch, "float32"),
        engine=EngineOverhead(step=ENGINE),
    )
    for (b, n), step in enc.items():
        assert step_prediction(profile, tp, "encode", b, n) == pytest.approx(step, rel=1e-9)
    for (b, n), step in dec.items():
        assert step_prediction(profile, tp, "decode", b, n) == pytest.approx(step, rel=1e-6)
    # a layer is what is left of the step beyond the rest, divided by the layers
    rest = HEAD.at(4) + ENGINE.at(4)
    if tp == 2:
        rest += 2 * arch.decode_layers * LINK.at(4 * 64 * arch.hidden_size * 4)
    layer = (enc[(4, 64)] - rest) / arch.decode_layers
    assert profile.encode_layer(tp, 4, 64) == pytest.approx(layer)


def test_a_layer_keeps_a_share_of_a_step_the_rest_exceeds() -> None:
    profiler = VllmProfiler(CONFIG, gpu_type="cpu", dtype="float32")
    tiny = {(b, n): 1e-5 for b in (1, 2) for n in (1, 16)}  # less than head + engine
    grid = profiler._layer_table(_raw(tiny), "encode", 1, HEAD, ENGINE, COMM)
    assert grid.at(1, 1) == pytest.approx(0.05 * 1e-5 / CONFIG.architecture.decode_layers)
