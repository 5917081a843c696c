"""The analytic (roofline) profile generator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from pydantic import ValidationError

from exegpt.planner.analytic import (
    ANALYTIC_PROFILER_VERSION,
    DEFAULT_EFFICIENCY,
    EFFICIENCY,
    Efficiency,
    activation_bytes_per_token,
    all_reduce_times,
    analytic_profile,
    efficiency_for,
    head_times,
    layer_gemm_shapes,
    layer_op_times,
    layer_times,
    linear_time,
    send_recv_times,
    shard_heads,
    soft_roofline,
)
from exegpt.planner.architecture import PRESETS as MODELS
from exegpt.planner.architecture import Architecture, get_architecture
from exegpt.planner.hardware import PRESETS as GPUS
from exegpt.planner.hardware import get_gpu
from exegpt.planner.profile import Profile

A100 = get_gpu("nvidia-a100-80gb")
H100 = get_gpu("nvidia-h100-80gb")


@pytest.fixture(scope="module")
def profiles() -> dict[tuple[str, str], Profile]:
    return {
        (m, g): analytic_profile(get_architecture(m), get_gpu(g))
        for m in ("opt-13b", "t5-11b", "llama-2-70b", "gpt3-341b")
        for g in ("nvidia-a100-80gb", "nvidia-a40")
    }


# -- kernels ------------------------------------------------------------------------------------
def test_soft_roofline_bounds() -> None:
    tc, tm = np.array([1.0, 3.0, 0.0]), np.array([2.0, 1.0, 0.0])
    assert soft_roofline(tc, tm, math.inf).tolist() == [2.0, 3.0, 0.0]
    assert soft_roofline(tc, tm, 1.0).tolist() == pytest.approx([3.0, 4.0, 0.0])
    mid = soft_roofline(tc, tm, 2.0)
    assert mid.tolist() == pytest.approx([math.sqrt(5), math.sqrt(10), 0.0])
    # max <= soft <= sum
    assert np.all(mid >= np.maximum(tc, tm)) and np.all(mid <= tc + tm)


def test_linear_time_regimes() -> None:
    eff = efficiency_for(A100)
    k, n = 8192, 8192
    weights = k * n * 2
    # one token: memory-bound, streaming the weights
    t1 = linear_time(A100, 1, k, n)
    stream = weights / (A100.memory_bandwidth * eff.gemm_memory)
    assert stream + eff.kernel_overhead < t1 < 1.2 * stream + eff.kernel_overhead
    # many tokens: compute-bound
    m = 16384
    t = linear_time(A100, m, k, n)
    compute = 2 * m * k * n / (A100.peak_flops * eff.gemm_compute)
    assert compute < t < 1.1 * compute
    # a pure roofline when overlap is infinite
    hard = eff.model_copy(update={"overlap": math.inf, "kernel_overhead": 0.0})
    tc = 2 * max(m, hard.min_gemm_rows) * k * n / (A100.peak_flops * hard.gemm_compute)
    tm = (k * n + m * k + m * n) * 2 / (A100.memory_bandwidth * hard.gemm_memory)
    assert linear_time(A100, m, k, n, efficiency=hard) == pytest.approx(max(tc, tm))
    assert linear_time(A100, 0, k, n) == 0.0


def test_linear_time_monotone_in_tokens() -> None:
    m = np.arange(1, 5000, 7)
    from exegpt.planner.analytic import linear_times

    t = linear_times(A100, m, 4096, 12288)
    assert np.all(np.diff(t) >= 0)


def test_float32_slower_than_float16() -> None:
    a = get_architecture("opt-13b")
    t16 = layer_times(a, A100, "encode", 8, 512, dtype="float16")
    t32 = layer_times(a, A100, "encode", 8, 512, dtype="float32")
    assert float(t32) > 1.5 * float(t16)


# -- layers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("phase", ["encode", "decode"])
def test_monotone_in_batch_and_length(model: str, phase: str) -> None:
    a = get_architecture(model)
    b = np.array([1, 2, 3, 4, 6, 8, 16, 64, 256, 1024], dtype=float)[:, None]
    length = np.array([1, 16, 17, 100, 512, 513, 2048, 4096], dtype=float)[None, :]
    for gpu in (A100, H100):
        for tp in a.tensor_parallel_degrees(8):
            t = layer_times(a, gpu, phase, b, length, tp)  # type: ignore[arg-type]
            assert np.all(np.diff(t, axis=0) >= 0), (gpu.name, tp)
            assert np.all(np.diff(t, axis=1) >= 0), (gpu.name, tp)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_tensor_parallel_reduces_shard_time(model: str) -> None:
    a = get_architecture(model)
    for phase, batch, length in (("encode", 8, 512), ("decode", 64, 1024), ("decode", 1, 128)):
        times = [
            float(layer_times(a, A100, phase, batch, length, tp))  # type: ignore[arg-type]
            for tp in a.tensor_parallel_degrees(8)
        ]
        assert all(t1 < t0 for t0, t1 in itertools.pairwise(times)), (phase, times)
    heads = [float(head_times(a, A100, 64, tp)) for tp in a.tensor_parallel_degrees(8)]
    assert all(t1 < t0 for t0, t1 in itertools.pairwise(heads))


def test_encode_scales_with_tokens_and_decode_with_context() -> None:
    a = get_architecture("llama-2-7b")
    # compute-bound prefill: twice the sequences, about twice the time
    t1 = float(layer_times(a, A100, "encode", 8, 1024))
    t2 = float(layer_times(a, A100, "encode", 16, 1024))
    assert 1.8 < t2 / t1 < 2.1
    # memory-bound decode: the KV read grows with the context
    ops_short = layer_op_times(a, A100, "decode", 32, 128)
    ops_long = layer_op_times(a, A100, "decode", 32, 4096)
    assert float(ops_long["attention"]) > 10 * float(ops_short["attention"])
    assert float(ops_long["mlp_up"]) == float(ops_short["mlp_up"])


def test_decoder_ops() -> None:
    ops = layer_op_times(get_architecture("llama-2-7b"), A100, "encode", 2, 128)
    assert {"qkv_proj", "rope", "kv_write", "attention", "out_proj", "mlp_up", "mlp_act"} <= set(
        ops
    )
    assert not any(k.startswith("cross") for k in ops)
    ops = layer_op_times(get_architecture("opt-13b"), A100, "decode", 2, 128)
    assert "rope" not in ops  # learned positions


def test_t5_encoder_decoder() -> None:
    t5 = get_architecture("t5-11b")
    enc = layer_op_times(t5, A100, "encode", 4, 512)
    # an encoder layer: no KV cache of its own, plus the decoder's cross K/V projection
    assert "kv_write" not in enc
    assert float(enc["cross_kv_proj"]) > 0
    dec = layer_op_times(t5, A100, "decode", 4, 512)
    assert {"cross_q_proj", "cross_attention", "cross_out_proj"} <= set(dec)
    # encoder attention is bidirectional: more work than a causal prefill of the same shape
    causal = t5.model_copy(update={"family": "decoder", "num_encoder_layers": 0})
    assert float(enc["attention"]) > float(
        layer_op_times(causal, A100, "encode", 4, 512)["attention"]
    )
    # the cross-K/V projection share follows decode_layers / encode_layers
    deeper = t5.model_copy(update={"num_layers": 48})
    assert float(layer_op_times(deeper, A100, "encode", 4, 512)["cross_kv_proj"]) == (
        pytest.approx(2 * float(enc["cross_kv_proj"]))
    )


def test_gqa_kv_heads_replicated_beyond_their_count() -> None:
    a = get_architecture("llama-2-70b")  # 8 KV heads
    assert shard_heads(a, 8) == (8, 1)
    small = a.model_copy(update={"num_kv_heads": 2})
    assert shard_heads(small, 8) == (8, 1)
    shapes = layer_gemm_shapes(small, 8)
    assert shapes["qkv_proj"] == (8192, 8 * 128 + 2 * 128)


def test_invalid_tp_degree() -> None:
    a = get_architecture("opt-13b")  # 40 heads
    with pytest.raises(ValueError, match="does not divide the 40 heads"):
        analytic_profile(a, A100, tp_degrees=[1, 16])
    with pytest.raises(ValueError, match="does not divide"):
        layer_times(a, A100, "decode", 1, 1, tp=3)


# -- the profile --------------------------------------------------------------------------------
def test_profile_provenance_and_degrees(profiles: dict[tuple[str, str], Profile]) -> None:
    for (model, gpu), p in profiles.items():
        arch = get_architecture(model)
        assert p.provenance.source == "analytic"
        assert p.comm.source == "analytic"
        assert p.provenance.profiler_version == ANALYTIC_PROFILER_VERSION
        assert p.provenance.gpu_type == gpu
        assert p.architecture == arch
        assert p.tp_degrees == arch.tensor_parallel_degrees(limit=get_gpu(gpu).gpus_per_node)
        assert sorted(p.comm.all_reduce) == [t for t in p.tp_degrees if t > 1]


def test_explicit_tp_degrees_always_include_one() -> None:
    p = analytic_profile(get_architecture("opt-13b"), A100, tp_degrees=[2, 4])
    assert p.tp_degrees == [1, 2, 4]


def test_memory_matches_architecture(profiles: dict[tuple[str, str], Profile]) -> None:
    for (model, _), p in profiles.items():
        a = get_architecture(model)
        mem = p.memory
        assert mem.encode_layer_weight_bytes == a.encode_layer_bytes("float16")
        assert mem.decode_layer_weight_bytes == a.decode_layer_bytes("float16")
        assert mem.kv_bytes_per_token == a.kv_bytes_per_token("float16")
        assert mem.embedding_bytes == (a.embedding_params() + a.head_params()) * 2
        assert mem.activation_bytes_per_token == activation_bytes_per_token(a, "float16")
        total = (
            (a.encode_layers * mem.encode_layer_weight_bytes if a.encoder_decoder else 0)
            + a.decode_layers * mem.decode_layer_weight_bytes
            + mem.embedding_bytes
        )
        assert total == a.weight_bytes("float16")


def test_memory_float32() -> None:
    a = get_architecture("llama-2-7b")
    p = analytic_profile(a, A100, dtype="float32", tp_degrees=[1])
    assert p.memory.decode_layer_weight_bytes == a.decode_layer_params() * 4
    assert p.memory.kv_bytes_per_token == 2 * a.kv_width * 4


def test_activation_bytes_estimate() -> None:
    a = get_architecture("llama-2-7b")
    # residual + normed input + the gated MLP block (gate, up and activation output)
    assert activation_bytes_per_token(a) == (2 * 4096 + 3 * 11008) * 2


def _assert_grid_close(p: Profile, arch: Architecture, gpu_name: str, seed: int) -> float:
    gpu = get_gpu(gpu_name)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for tp in p.tp_degrees:
        for phase in ("encode", "decode"):
            tables = p.tables(tp)
            grid = tables.encode if phase == "encode" else tables.decode
            b = np.round(np.exp(rng.uniform(0, math.log(1024), 60)))
            length = np.round(np.exp(rng.uniform(0, math.log(grid.length[-1]), 60)))
            direct = layer_times(arch, gpu, phase, b, length, tp)
            interp = np.array([grid.at(x, y) for x, y in zip(b, length, strict=True)])
            worst = max(worst, float(np.max(np.abs(interp / direct - 1))))
        tokens = np.round(np.exp(rng.uniform(0, math.log(8192), 40)))
        direct = head_times(arch, gpu, tokens, tp)
        interp = np.array([p.head(tp, x) for x in tokens])
        worst = max(worst, float(np.max(np.abs(interp / direct - 1))))
    return worst


def test_grid_interpolation_close_to_direct_formula(
    profiles: dict[tuple[str, str], Profile],
) -> None:
    for i, ((model, gpu), p) in enumerate(sorted(profiles.items())):
        worst = _assert_grid_close(p, get_architecture(model), gpu, seed=i)
        assert worst < 0.02, (model, gpu, worst)


def test_grid_points_are_the_direct_formula(profiles: dict[tuple[str, str], Profile]) -> None:
    p = profiles[("llama-2-70b", "nvidia-a100-80gb")]
    a = get_architecture("llama-2-70b")
    g = p.tables(4).decode
    for b in (1, 48, 1024):
        for length in (1, 96, 4096):
            assert g.at(b, length) == pytest.approx(
                float(layer_times(a, A100, "decode", b, length, 4))
            )


def test_comm_curves(profiles: dict[tuple[str, str], Profile]) -> None:
    p = profiles[("opt-13b", "nvidia-a100-80gb")]
    eff = efficiency_for(A100)
    for nbytes in (1e3, 3.3e5, 1e6, 7.7e7, 1e9):
        for tp in (2, 4, 8):
            ring = (
                2 * (tp - 1) / tp * nbytes / (A100.intra_node_bandwidth * eff.all_reduce_bandwidth)
            )
            expected = eff.all_reduce_latency + ring
            assert p.comm.all_reduce_at(tp, nbytes) == pytest.approx(expected, rel=1e-9)
            assert float(all_reduce_times(A100, tp, nbytes)) == pytest.approx(expected)
        intra = p.comm.send_recv_at(nbytes, inter_node=False)
        inter = p.comm.send_recv_at(nbytes, inter_node=True)
        assert intra == pytest.approx(float(send_recv_times(A100, nbytes, False)), rel=1e-9)
        assert inter > intra
    assert float(all_reduce_times(A100, 1, 1e6)) == 0.0
    # more GPUs in the ring: more time for a large message
    big = [p.comm.all_reduce_at(tp, 1e9) for tp in (2, 4, 8)]
    assert big == sorted(big)


def test_pcie_cards_slower_links() -> None:
    a40 = get_gpu("nvidia-a40")
    assert float(all_reduce_times(a40, 2, 1e8)) > 5 * float(all_reduce_times(A100, 2, 1e8))


def test_deterministic(profiles: dict[tuple[str, str], Profile]) -> None:
    a = get_architecture("t5-11b")
    again = analytic_profile(a, A100)
    assert again.to_json() == profiles[("t5-11b", "nvidia-a100-80gb")].to_json()
    assert again.provenance.created_at is None
    assert again != analytic_profile(a, H100)


def test_every_preset_builds() -> None:
    for gpu in GPUS.values():
        for arch in MODELS.values():
            p = analytic_profile(arch, gpu, tp_degrees=[1])
            assert p.encode_layer(1, 4, 100) > 0
            assert p.decode_layer(1, 4, 100) > 0


# -- efficiency -------------------------------------------------------------------------------
def test_efficiency_lookup() -> None:
    assert set(EFFICIENCY) >= set(GPUS)
    assert efficiency_for("NVIDIA-A100-80GB") is EFFICIENCY["nvidia-a100-80gb"]
    assert efficiency_for(H100) is EFFICIENCY["nvidia-h100-80gb"]
    assert efficiency_for("some-new-gpu") is DEFAULT_EFFICIENCY
    for name, eff in EFFICIENCY.items():
        assert eff.origin, name
    assert EFFICIENCY["nvidia-h200"].origin.startswith("derived")


def test_efficiency_is_immutable() -> None:
    with pytest.raises(TypeError):
        EFFICIENCY["x"] = DEFAULT_EFFICIENCY  # type: ignore[index]
    with pytest.raises(ValidationError):
        DEFAULT_EFFICIENCY.gemm_compute = 0.1  # type: ignore[misc]


def test_efficiency_validation() -> None:
    with pytest.raises(ValidationError):
        Efficiency.model_validate(DEFAULT_EFFICIENCY.model_dump() | {"gemm_compute": 1.5})
    with pytest.raises(ValidationError):
        Efficiency.model_validate(DEFAULT_EFFICIENCY.model_dump() | {"overlap": 0.5})


def test_efficiency_override() -> None:
    a = get_architecture("opt-13b")
    slow = DEFAULT_EFFICIENCY.model_copy(update={"gemm_compute": 0.2})
    fast = analytic_profile(a, A100, tp_degrees=[1])
    slowp = analytic_profile(a, A100, tp_degrees=[1], efficiency=slow)
    assert slowp.encode_layer(1, 32, 1024) > 2 * fast.encode_layer(1, 32, 1024)
