"""XProfiler on the CPU with tiny models: a valid measured profile the planner plans
with; grids, budget, memory; device checks; the GPU path when there is a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_architecture, tiny_config

from exegpt.planner.plan import Plan, PlanRequest
from exegpt.planner.profile import MEASURED_PROFILER_VERSION, Profile, profile_key
from exegpt.planner.scheduler import schedule
from exegpt.planner.workload import LengthDistribution, Workload
from exegpt.runner.config import ModelConfig
from exegpt.runner.profiler import (
    CPU_GPU_TYPE,
    ProfileOptions,
    ProfilerError,
    XProfiler,
    grid_levels,
    length_levels,
    match_gpu,
    resolve_config,
)

QUICK = ProfileOptions(
    max_batch=4, max_length=32, warmup=1, repeats=2, min_point_seconds=0.0, max_seconds=30,
    midpoints=False,
)  # fmt: skip


def _profile(family: str, **options: object) -> Profile:
    opts = ProfileOptions(**{**QUICK.__dict__, **options})  # type: ignore[arg-type]
    return XProfiler(
        tiny_config(family), gpu_type="cpu", dtype="float32", device="cpu", options=opts
    ).run()


@pytest.fixture(scope="module")
def opt_profile() -> Profile:
    torch.set_num_threads(1)
    return _profile("opt", tensor_parallel=(1, 2), comm="measured")


def test_profile_is_valid_and_measured(opt_profile: Profile) -> None:
    p = Profile.from_json(opt_profile.to_json())
    assert p == opt_profile
    prov = p.provenance
    assert (prov.source, prov.profiler_version, prov.gpu_type) == (
        "measured", MEASURED_PROFILER_VERSION, "cpu",
    )  # fmt: skip
    assert prov.architecture == tiny_architecture("opt")
    assert p.key == profile_key(prov.architecture, "cpu", "float32", MEASURED_PROFILER_VERSION)
    assert p.tp_degrees == [1, 2]
    assert p.comm.source == "measured" and set(p.comm.all_reduce) == {2}
    for tp in (1, 2):
        t = p.tables(tp)
        assert t.encode.batch == [1, 2, 4] and t.encode.length == [1, 16, 32]
        assert all(s > 0 for row in t.encode.seconds + t.decode.seconds for s in row)
        assert all(s > 0 for s in t.head.seconds)
    # more work takes longer: a long prefill of a batch against one token
    assert p.encode_layer(1, 4, 32) > p.encode_layer(1, 1, 1)
    assert "measured" in prov.notes
    # what serving adds to a step, by batch, beside the model's
    assert p.engine is not None and p.engine.step.x == [1.0, 4.0]
    assert all(0 < s < 0.05 for s in p.engine.step.seconds)
    assert "engine" in prov.notes


def test_memory_counts_the_modules(opt_profile: Profile) -> None:
    m = opt_profile.memory
    a = tiny_architecture("opt")
    h, f = a.hidden_size, a.ffn_size
    per_layer = (4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h) * 4  # weights, biases, norms
    assert m.decode_layer_weight_bytes == per_layer == m.encode_layer_weight_bytes
    assert m.kv_bytes_per_token == 2 * h * 4
    # tied head: the token and position tables only (OPT's positions start at row 2)
    assert m.embedding_bytes == (a.vocab_size + a.max_positions + 2) * h * 4


def test_planner_plans_with_a_measured_profile(opt_profile: Profile) -> None:
    request = PlanRequest(
        architecture=tiny_architecture("opt"),
        gpu=CPU_GPU_TYPE,
        gpus=2,
        gpus_per_node=2,
        dtype="float32",
        workload=Workload(LengthDistribution.fixed(16), LengthDistribution.fixed(8)),
    )
    result = schedule(request, opt_profile)
    assert isinstance(result, Plan)
    assert result.predicted.throughput_qps > 0


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_other_families(family: str) -> None:
    p = _profile(family)
    assert p.architecture.encoder_decoder == (family == "t5")
    assert p.comm.source == "analytic"
    t = p.tables(1)
    assert t.decode.at(4, 32) > 0 and t.encode.at(2, 16) > 0
    if family == "t5":  # the encoder layer does not write a self-attention cache
        assert p.memory.encode_layer_weight_bytes < p.memory.decode_layer_weight_bytes


def test_budget_cuts_the_grid_but_gives_a_full_one() -> None:
    p = _profile("opt", max_seconds=0.05, max_batch=16, max_length=64, midpoints=True)
    t = p.tables(1)
    assert len(t.encode.batch) >= 3 and len(t.encode.length) >= 3
    assert all(s > 0 for row in t.encode.seconds for s in row)
    notes = p.provenance.notes
    assert "encode tp1:" in notes
    measured, total = notes.split("encode tp1: ")[1].split(" ")[0].split("/")
    assert 1 <= int(measured) < int(total)


def test_timed_cache_slots_are_as_long_as_the_engines_when_memory_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profiler = XProfiler(
        tiny_config("opt"), gpu_type="cpu", dtype="float32", device="cpu", options=QUICK
    )
    bench = profiler._bench(1)
    # a slot holds the longest sequence (the profile's 32 tokens), as the engine's do
    assert profiler._slot_tokens(bench, 4, 10) == 32
    assert profiler._slot_tokens(bench, 4, 40) == 41  # a longer point: its own length
    monkeypatch.setattr(XProfiler, "_free_bytes", lambda self: 1024)
    bench = profiler._bench(1)  # (the room is read once per bench model)
    assert profiler._slot_tokens(bench, 4, 10) == 11  # no room: just the sequence


def test_token_cap_extrapolates() -> None:
    p = _profile("opt", max_tokens=16)
    enc = p.tables(1).encode
    assert enc.at(4, 32) > enc.at(4, 16) > 0  # (4, 32) and (4, 16) were not measured


def test_axes() -> None:
    assert grid_levels(1, 256, True) == [
        [1, 4, 16, 64, 256],
        [1, 2, 4, 8, 16, 32, 64, 128, 256],
        [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256],
    ]
    assert grid_levels(1, 100, False) == [[1, 4, 16, 64, 100], [1, 2, 4, 8, 16, 32, 64, 100]]
    assert length_levels(2048, False)[0] == [1, 16, 64, 256, 1024, 2048]
    assert length_levels(8, False)[-1] == [1, 2, 4, 8]


def test_match_gpu() -> None:
    gib = 2**30
    assert match_gpu("nvidia-h100-80gb", "NVIDIA H100 80GB HBM3", 80 * gib)
    assert match_gpu("nvidia-a100-40gb", "NVIDIA A100-SXM4-40GB", 40 * gib)
    assert not match_gpu("nvidia-a100-80gb", "NVIDIA A100-SXM4-40GB", 40 * gib)
    assert not match_gpu("nvidia-h100-80gb", "NVIDIA A100-SXM4-80GB", 80 * gib)
    assert match_gpu("nvidia-l4", "NVIDIA L4", 23 * gib)
    assert match_gpu("nvidia-h200", "NVIDIA H200", 141 * gib)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_no_gpu_is_a_clear_error() -> None:
    with pytest.raises(ProfilerError, match="no CUDA device"):
        XProfiler(tiny_config("opt"), gpu_type="nvidia-h100-80gb", device="auto")


def test_cpu_cannot_stand_for_a_gpu_type() -> None:
    with pytest.raises(ProfilerError, match="cannot measure GPU type"):
        XProfiler(tiny_config("opt"), gpu_type="nvidia-a100-80gb", device="cpu")


def test_tp_degree_must_divide_heads() -> None:
    with pytest.raises(ProfilerError, match="does not divide"):
        XProfiler(tiny_config("opt"), gpu_type="cpu", options=ProfileOptions(tensor_parallel=(3,)))


def test_weights_directory_must_fit(tmp_path: Path) -> None:
    from tiny import save_hf

    save_hf("llama", tmp_path)
    arch = tiny_architecture("llama")
    cfg = resolve_config(arch, tmp_path)
    assert cfg.architecture == arch and cfg.norm_eps == 1e-5
    with pytest.raises(ProfilerError, match="differ in ffn_size"):
        resolve_config(tiny_architecture("llama", ffn_size=48), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert ModelConfig.from_hf_config(config).architecture.hidden_size == arch.hidden_size


@pytest.mark.gpu
def test_gpu_profile() -> None:
    name = torch.cuda.get_device_name(0)
    p = XProfiler(
        tiny_config("llama"), gpu_type=name, dtype="float16", device="cuda", options=QUICK,
        check_gpu=False,
    ).run()  # fmt: skip
    assert p.provenance.dtype == "float16"
    assert p.memory.activation_bytes_per_token > 0
    assert all(s > 0 for row in p.tables(1).decode.seconds for s in row)


def test_each_lengths_steps_become_non_decreasing_in_batch() -> None:
    from exegpt.planner.profile import Grid
    from exegpt.runner.profiler import non_decreasing_in_batch

    # per-layer times of batches 1, 2, 3, 4 at two lengths; batch 3 measured low
    grid = Grid(batch=[1, 2, 3, 4], length=[16, 64], seconds=[[5, 6], [6, 7], [3, 4], [8, 9]])
    out = non_decreasing_in_batch(grid)
    assert out.batch == grid.batch and out.length == grid.length
    assert [r[0] for r in out.seconds] == pytest.approx([14 / 3] * 3 + [8])
    assert [r[1] for r in out.seconds] == pytest.approx([17 / 3] * 3 + [9])

    # with two layers and a rest that grows with the batch it is the whole step that
    # may not fall: steps 2x5+1=11, 2x4+2=10 (pooled to 10.5), 2x3+6=12 (rose: kept)
    def rest(b: int, n: int) -> float:
        return {1: 1.0, 2: 2.0, 3: 6.0}[b]

    lone = Grid(batch=[1, 2, 3], length=[16], seconds=[[5.0], [4.0], [3.0]])
    split = non_decreasing_in_batch(lone, rest, layers=2)
    assert [r[0] for r in split.seconds] == pytest.approx([4.75, 4.25, 3.0])
    # the layers' share never below the floor of the pooled step: steps 11, 18, 7
    # pool to 11, 12.5, 12.5, and batch 2's rest (10) leaves its layers 2.5 of 12.5
    floored = non_decreasing_in_batch(lone, lambda b, n: 10.0 if b == 2 else 1.0, 2, 0.2)
    assert [r[0] for r in floored.seconds] == pytest.approx([5.0, 0.2 * 12.5 / 2, 11.5 / 2])


def test_decode_rows_become_lines_through_their_points() -> None:
    from exegpt.planner.profile import Grid
    from exegpt.runner.profiler import affine_in_length

    lengths = [1, 16, 32, 64]
    noisy = [1.0e-3, 1.3e-3, 1.2e-3, 1.8e-3]  # 1e-3 + 1e-5 * n, scattered
    falling = [2.0, 1.8, 1.5, 1.0]
    grid = Grid(batch=[1, 2, 4], length=lengths, seconds=[noisy, falling, [5.0] * 4])
    measured = {(1, n): t for n, t in zip(lengths, noisy, strict=True)}
    measured |= {(2, n): t for n, t in zip(lengths, falling, strict=True)}
    measured |= {(4, 1): 5.0, (4, 16): 5.0}  # two points: too few for a line
    out = affine_in_length(grid, measured)
    row = out.seconds[0]
    slopes = [(row[i + 1] - row[i]) / (lengths[i + 1] - lengths[i]) for i in range(3)]
    assert slopes == pytest.approx([slopes[0]] * 3) and slopes[0] > 0
    assert sum(row) == pytest.approx(sum(noisy))  # least squares keeps the mean
    assert out.seconds[1] == falling and out.seconds[2] == [5.0] * 4
