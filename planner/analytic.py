"""The analytic profile: a roofline cost model with fitted efficiency factors.

``analytic_profile`` fills the same :class:`~exegpt.planner.profile.Profile` the XProfiler
measures, from the architecture and the GPU type alone, so that planning works with no
GPU and no profiling Job.

Every operator of a layer is one kernel whose time is a *soft roofline*::

    t = overhead + (t_c**p + t_m**p) ** (1/p)
    t_c = flops / (peak * compute_efficiency)
    t_m = bytes / (bandwidth * memory_efficiency)

``p`` (``Efficiency.overlap``) says how well a kernel overlaps compute with memory
traffic: ``p = inf`` is the textbook ``max()``, smaller values make the transition
between the memory-bound and the compute-bound regime gradual, as real GEMMs are.
GEMMs count their rows as at least ``Efficiency.min_gemm_rows`` (tensor-core tiles are
not narrower than that, so a 1-token GEMM costs the compute of a tile).

The efficiency constants per GPU type were fitted against real kernel timings
(``exegpt bench calibration --fit``, see ``exegpt.planner.calibration`` and
``docs/cost-model.md``). All functions are pure and vectorised over numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field

from .architecture import DTYPE_BYTES, Architecture, Dtype
from .hardware import GpuType
from .profile import (
    Comm,
    Curve,
    Grid,
    MemoryProfile,
    PhaseTables,
    Profile,
    Provenance,
)

# Bump whenever the cost model or the constants below change: the version is part of a
# profile's content address, so cached analytic profiles are regenerated.
ANALYTIC_PROFILER_VERSION = "analytic-1"

Phase = Literal["encode", "decode"]
FloatArray = NDArray[np.float64]


class Efficiency(BaseModel):
    """How close one GPU type gets to its peak numbers, per kind of kernel.

    Fractions are of ``GpuType.peak_flops`` / ``memory_bandwidth`` /
    ``intra_node_bandwidth`` / ``inter_node_bandwidth``; times are seconds.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    gemm_compute: float = Field(gt=0, le=1, description="fraction of peak FLOP/s, large GEMMs")
    gemm_memory: float = Field(
        gt=0, le=1, description="fraction of memory bandwidth when streaming weights or KV"
    )
    overlap: float = Field(ge=1, description="exponent p of the soft roofline")
    min_gemm_rows: int = Field(ge=1, description="GEMM rows are counted as at least this")
    kernel_overhead: float = Field(ge=0, description="fixed seconds per kernel")
    elementwise_memory: float = Field(
        gt=0, le=1, description="fraction of memory bandwidth of norms, activations, adds"
    )
    elementwise_overhead: float = Field(ge=0, description="fixed seconds per elementwise kernel")
    attention_compute: float = Field(
        gt=0, le=1, description="fraction of peak FLOP/s of fused (flash) attention"
    )
    all_reduce_bandwidth: float = Field(
        gt=0, le=1, description="ring all-reduce bus bandwidth / intra-node bandwidth"
    )
    all_reduce_latency: float = Field(ge=0)
    p2p_intra_bandwidth: float = Field(gt=0, le=1)
    p2p_intra_latency: float = Field(ge=0)
    p2p_inter_bandwidth: float = Field(gt=0, le=1)
    p2p_inter_latency: float = Field(ge=0)
    origin: str = Field(default="", description="where these numbers come from")


# -- fitted constants -------------------------------------------------------------------
# Regenerate with `exegpt bench calibration --fit` (which runs
# exegpt.planner.calibration.fit_all on ../shared/data/vidur): it prints these blocks.
# Compute and elementwise numbers: Llama-2-7B/70B per-operator timings (fp16, one layer
# shard, TP 1-8, 1-4096 tokens). Communication: NCCL all-reduce / send-recv timings on
# 8-GPU DGX nodes. `attention_compute` is not calibrated (the data has no attention
# timings): FlashAttention-2 forward reaches roughly 50-70 % of peak on A100 and
# 35-40 % on H100 (its paper's figures), we take the lower ends.
_A100 = Efficiency(
    gemm_compute=0.7538,
    gemm_memory=0.9021,
    overlap=1.25,
    min_gemm_rows=32,
    kernel_overhead=5.03e-06,
    elementwise_memory=0.634,
    elementwise_overhead=2.81e-06,
    attention_compute=0.5,
    all_reduce_bandwidth=0.53,
    all_reduce_latency=4.2e-05,
    p2p_intra_bandwidth=0.93,
    p2p_intra_latency=1.3e-05,
    p2p_inter_bandwidth=0.31,
    p2p_inter_latency=3.1e-05,
    origin="fitted: A100-SXM4-80GB (vidur Llama-2-7B/70B kernels, DGX A100 NCCL)",
)
_H100 = Efficiency(
    gemm_compute=0.7936,
    gemm_memory=0.9039,
    overlap=1.25,
    min_gemm_rows=1,
    kernel_overhead=5.1e-06,
    elementwise_memory=0.687,
    elementwise_overhead=2.01e-06,
    attention_compute=0.35,
    all_reduce_bandwidth=0.78,
    all_reduce_latency=2.9e-05,
    p2p_intra_bandwidth=0.79,
    p2p_intra_latency=7.7e-06,
    p2p_inter_bandwidth=0.72,
    p2p_inter_latency=2e-05,
    origin="fitted: H100-SXM5-80GB (vidur Llama-2-7B kernels, DGX H100 NCCL)",
)


def _derived(base: Efficiency, note: str, **changes: float) -> Efficiency:
    return base.model_copy(update={**changes, "origin": note})


# Communication on PCIe cards is not calibrated: we keep the A100's fractions (they are
# fractions of the card's own, much lower, link bandwidth).
EFFICIENCY: Mapping[str, Efficiency] = MappingProxyType(
    {
        "nvidia-a100-80gb": _A100,
        "nvidia-h100-80gb": _H100,
        "nvidia-a100-40gb": _derived(
            _A100, "derived: same Ampere GA100 kernels as nvidia-a100-80gb (not measured)"
        ),
        "nvidia-h200": _derived(
            _H100, "derived: same Hopper GH100 kernels as nvidia-h100-80gb (not measured)"
        ),
        "nvidia-a40": _derived(
            _A100,
            "derived: Ampere (GA102) uses the A100's kernel generation (not measured)",
        ),
        "nvidia-l4": _derived(
            _A100,
            "derived: Ada (AD104) uses Ampere-style mma kernels like the A100 (not measured)",
        ),
    }
)
DEFAULT_EFFICIENCY: Efficiency = _derived(
    _A100, "default for an unknown GPU type: the A100's fractions (not measured)"
)


def efficiency_for(gpu: GpuType | str) -> Efficiency:
    """The efficiency factors of a GPU type (the default for an unknown type)."""
    name = gpu if isinstance(gpu, str) else gpu.name
    return EFFICIENCY.get(name.lower(), DEFAULT_EFFICIENCY)


# -- hardware peaks by dtype ----------------------------------------------------------------
def peak_flops(gpu: GpuType, dtype: Dtype) -> float:
    """Dense tensor-core FLOP/s for ``dtype``: float32 runs as TF32 at half the fp16 rate."""
    return gpu.peak_flops / 2 if dtype == "float32" else gpu.peak_flops


# -- kernels ----------------------------------------------------------------------------------
def _arr(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def soft_roofline(
    compute_seconds: ArrayLike, memory_seconds: ArrayLike, overlap: float
) -> FloatArray:
    """``(t_c**p + t_m**p) ** (1/p)``, computed without overflow; ``p = inf`` is ``max``."""
    tc, tm = np.broadcast_arrays(_arr(compute_seconds), _arr(memory_seconds))
    hi = np.maximum(tc, tm)
    if np.isinf(overlap):
        return np.asarray(hi, dtype=np.float64)
    safe = np.where(hi > 0, hi, 1.0)
    out = hi * ((tc / safe) ** overlap + (tm / safe) ** overlap) ** (1.0 / overlap)
    return np.asarray(out, dtype=np.float64)


def linear_times(
    gpu: GpuType,
    m: ArrayLike,
    k: ArrayLike,
    n: ArrayLike,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> FloatArray:
    """Seconds of ``[m, k] @ [k, n]`` GEMMs (vectorised over m, k, n)."""
    eff = efficiency or efficiency_for(gpu)
    b = DTYPE_BYTES[dtype]
    m_, k_, n_ = _arr(m), _arr(k), _arr(n)
    rows = np.maximum(m_, eff.min_gemm_rows)
    tc = 2.0 * rows * k_ * n_ / (peak_flops(gpu, dtype) * eff.gemm_compute)
    tm = (k_ * n_ + m_ * k_ + m_ * n_) * b / (gpu.memory_bandwidth * eff.gemm_memory)
    t: FloatArray = eff.kernel_overhead + soft_roofline(tc, tm, eff.overlap)
    return np.where(m_ > 0, t, 0.0)


def linear_time(
    gpu: GpuType,
    m: float,
    k: float,
    n: float,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> float:
    """Seconds of one ``[m, k] @ [k, n]`` GEMM."""
    return float(linear_times(gpu, m, k, n, dtype, efficiency))


def elementwise_times(
    gpu: GpuType, nbytes: ArrayLike, efficiency: Efficiency | None = None
) -> FloatArray:
    """Seconds of a memory-bound elementwise kernel moving ``nbytes`` (read + write)."""
    eff = efficiency or efficiency_for(gpu)
    nb = _arr(nbytes)
    t = eff.elementwise_overhead + nb / (gpu.memory_bandwidth * eff.elementwise_memory)
    return np.asarray(np.where(nb > 0, t, 0.0), dtype=np.float64)


def attention_times(
    gpu: GpuType,
    batch: ArrayLike,
    q_len: ArrayLike,
    kv_len: ArrayLike,
    heads: int,
    kv_heads: int,
    head_dim: int,
    causal: bool,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> FloatArray:
    """Seconds of one fused (flash) attention kernel over ``batch`` sequences.

    Each sequence has ``q_len`` queries attending to ``kv_len`` keys; with ``causal``
    (and ``q_len == kv_len``) query ``i`` sees ``i + 1`` keys. ``heads``/``kv_heads`` are
    the heads on this TP shard. Bytes: Q read, O written, K and V read once (no score
    matrix in memory).
    """
    eff = efficiency or efficiency_for(gpu)
    b = DTYPE_BYTES[dtype]
    bt, ql, kl = _arr(batch), _arr(q_len), _arr(kv_len)
    keys_per_query = (kl + 1.0) / 2.0 if causal else kl
    flops = 4.0 * bt * heads * head_dim * ql * keys_per_query
    nbytes = bt * (2.0 * ql * heads + 2.0 * kl * kv_heads) * head_dim * b
    tc = flops / (peak_flops(gpu, dtype) * eff.attention_compute)
    tm = nbytes / (gpu.memory_bandwidth * eff.gemm_memory)
    t = eff.kernel_overhead + soft_roofline(tc, tm, eff.overlap)
    return np.asarray(np.where(bt * kl > 0, t, 0.0), dtype=np.float64)


# -- one layer ---------------------------------------------------------------------------------
def shard_heads(architecture: Architecture, tp: int) -> tuple[int, int]:
    """Query and KV heads on one TP shard (KV heads are replicated when tp > kv heads)."""
    if tp < 1 or architecture.num_heads % tp != 0:
        raise ValueError(
            f"TP degree {tp} does not divide the {architecture.num_heads} heads of "
            f"{architecture.name}"
        )
    return architecture.num_heads // tp, -(-architecture.kv_heads // tp)


def layer_gemm_shapes(architecture: Architecture, tp: int = 1) -> dict[str, tuple[int, int]]:
    """``(k, n)`` of each GEMM of a layer on one TP shard (column-parallel QKV and MLP-up,
    row-parallel output and MLP-down projections)."""
    a = architecture
    heads, kv_heads = shard_heads(a, tp)
    q, kv = heads * a.dim_head, kv_heads * a.dim_head
    ffn = -(-a.ffn_size // tp)
    return {
        "qkv_proj": (a.hidden_size, q + 2 * kv),
        "out_proj": (q, a.hidden_size),
        "mlp_up": (a.hidden_size, (2 if a.gated_mlp else 1) * ffn),
        "mlp_down": (ffn, a.hidden_size),
        # encoder-decoder only: the decoder's cross-attention projections
        "cross_q_proj": (a.hidden_size, q),
        "cross_kv_proj": (a.hidden_size, 2 * kv),
    }


def layer_op_times(
    architecture: Architecture,
    gpu: GpuType,
    phase: Phase,
    batch: ArrayLike,
    length: ArrayLike,
    tp: int = 1,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> dict[str, FloatArray]:
    """Seconds of each kernel of ONE layer on one TP shard (no all-reduce).

    ``phase="encode"``: a layer of the encoding phase over ``batch`` sequences of
    ``length`` tokens each: for a decoder-only model a decoder layer doing prefill
    (causal attention, keys/values written to the cache); for an encoder-decoder model
    an encoder layer (bidirectional attention), plus the decoder's one-time
    cross-attention K/V projection of the encoder output, scaled by
    ``decode_layers / encode_layers`` so that ``encode_layers`` times this layer is the
    whole encoding phase.

    ``phase="decode"``: one decoder layer generating one token for each of ``batch``
    sequences, attention reading ``length`` cached tokens per sequence (for an
    encoder-decoder model: self-attention over the generated tokens plus
    cross-attention over the input, ``length`` = input + generated).

    ``batch`` and ``length`` broadcast against each other (numpy rules).
    """
    a = architecture
    eff = efficiency or efficiency_for(gpu)
    b = DTYPE_BYTES[dtype]
    bt, ln = np.broadcast_arrays(_arr(batch), _arr(length))
    heads, kv_heads = shard_heads(a, tp)
    d = a.dim_head
    q_w, kv_w = heads * d, kv_heads * d
    ffn = -(-a.ffn_size // tp)
    h = a.hidden_size
    shapes = layer_gemm_shapes(a, tp)
    tokens = bt * ln if phase == "encode" else bt

    def gemm(name: str, m: FloatArray) -> FloatArray:
        k, n = shapes[name]
        return linear_times(gpu, m, k, n, dtype, eff)

    def elementwise(nbytes: FloatArray) -> FloatArray:
        return elementwise_times(gpu, nbytes, eff)

    # a norm reads its input twice (statistics, then scaling) and writes it once
    norm_bytes = 3.0 * tokens * h * b
    ops: dict[str, FloatArray] = {}
    ops["norm_attn"] = elementwise(norm_bytes)
    ops["qkv_proj"] = gemm("qkv_proj", tokens)
    if a.position == "rope":
        ops["rope"] = elementwise(2.0 * tokens * (q_w + kv_w) * b)
    encoder = phase == "encode" and a.encoder_decoder
    if not encoder:
        # copy this step's keys and values into the cache (read + write)
        ops["kv_write"] = elementwise(4.0 * tokens * kv_w * b)
    if phase == "encode":
        ops["attention"] = attention_times(
            gpu, bt, ln, ln, heads, kv_heads, d, causal=not encoder, dtype=dtype, efficiency=eff
        )
    else:
        one = np.ones_like(bt)
        ops["attention"] = attention_times(
            gpu, bt, one, ln, heads, kv_heads, d, causal=False, dtype=dtype, efficiency=eff
        )
    ops["out_proj"] = gemm("out_proj", tokens)
    ops["residual_attn"] = elementwise(3.0 * tokens * h * b)
    if a.encoder_decoder and phase == "decode":
        # cross-attention: its K/V were projected once at encoding; the KV bytes it reads
        # are already in `attention` (length counts input + generated tokens), so only
        # the fixed cost of the second attention kernel is added here.
        ops["norm_cross"] = elementwise(norm_bytes)
        ops["cross_q_proj"] = gemm("cross_q_proj", tokens)
        ops["cross_attention"] = np.where(bt > 0, eff.kernel_overhead, 0.0)
        ops["cross_out_proj"] = gemm("out_proj", tokens)
        ops["residual_cross"] = elementwise(3.0 * tokens * h * b)
    ops["norm_mlp"] = elementwise(norm_bytes)
    ops["mlp_up"] = gemm("mlp_up", tokens)
    ops["mlp_act"] = elementwise((3.0 if a.gated_mlp else 2.0) * tokens * ffn * b)
    ops["mlp_down"] = gemm("mlp_down", tokens)
    ops["residual_mlp"] = elementwise(3.0 * tokens * h * b)
    if encoder:
        share = a.decode_layers / a.encode_layers
        ops["cross_kv_proj"] = share * gemm("cross_kv_proj", tokens)
        ops["cross_kv_write"] = share * elementwise(2.0 * tokens * kv_w * b)
    return {k: np.asarray(v, dtype=np.float64) for k, v in ops.items()}


def layer_times(
    architecture: Architecture,
    gpu: GpuType,
    phase: Phase,
    batch: ArrayLike,
    length: ArrayLike,
    tp: int = 1,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> FloatArray:
    """Seconds of one layer on one TP shard: the sum of :func:`layer_op_times`."""
    ops = layer_op_times(architecture, gpu, phase, batch, length, tp, dtype, efficiency)
    return np.asarray(sum(ops.values()), dtype=np.float64)


def head_times(
    architecture: Architecture,
    gpu: GpuType,
    tokens: ArrayLike,
    tp: int = 1,
    dtype: Dtype = "float16",
    efficiency: Efficiency | None = None,
) -> FloatArray:
    """Seconds of the final norm, the LM head (vocabulary sharded by TP) and sampling
    for ``tokens`` positions that need logits.

    Sampling is modelled as three memory-bound passes over fp32 logits of the whole
    vocabulary (upcast, softmax, draw).
    """
    a = architecture
    eff = efficiency or efficiency_for(gpu)
    b = DTYPE_BYTES[dtype]
    m = _arr(tokens)
    vocab = -(-a.vocab_size // tp)
    norm = elementwise_times(gpu, 3.0 * m * a.hidden_size * b, eff)
    lm_head = linear_times(gpu, m, a.hidden_size, vocab, dtype, eff)
    sampling = elementwise_times(gpu, m * a.vocab_size * (b + 12.0), eff) + np.where(
        m > 0, 2.0 * eff.kernel_overhead, 0.0
    )
    return np.asarray(norm + lm_head + sampling, dtype=np.float64)


# -- communication ------------------------------------------------------------------------
def all_reduce_times(
    gpu: GpuType, tp: int, nbytes: ArrayLike, efficiency: Efficiency | None = None
) -> FloatArray:
    """Seconds of a ring all-reduce of ``nbytes`` over ``tp`` GPUs of one node:
    ``latency + 2 (tp - 1) / tp * nbytes / (intra-node bandwidth * efficiency)``."""
    eff = efficiency or efficiency_for(gpu)
    nb = _arr(nbytes)
    if tp <= 1:
        return np.zeros_like(nb)
    wire = 2.0 * (tp - 1) / tp * nb / (gpu.intra_node_bandwidth * eff.all_reduce_bandwidth)
    return np.asarray(np.where(nb > 0, eff.all_reduce_latency + wire, 0.0), dtype=np.float64)


def send_recv_times(
    gpu: GpuType, nbytes: ArrayLike, inter_node: bool, efficiency: Efficiency | None = None
) -> FloatArray:
    """Seconds to send ``nbytes`` from one GPU to another (same node or across nodes)."""
    eff = efficiency or efficiency_for(gpu)
    nb = _arr(nbytes)
    if inter_node:
        bw, lat = gpu.inter_node_bandwidth * eff.p2p_inter_bandwidth, eff.p2p_inter_latency
    else:
        bw, lat = gpu.intra_node_bandwidth * eff.p2p_intra_bandwidth, eff.p2p_intra_latency
    return np.asarray(np.where(nb > 0, lat + nb / bw, 0.0), dtype=np.float64)


# -- memory -----------------------------------------------------------------------------------
def activation_bytes_per_token(architecture: Architecture, dtype: Dtype = "float16") -> int:
    """Peak transient activation bytes per token in one layer, unsharded.

    The residual stream and its normalised copy are live throughout; on top of them the
    larger of the attention block (Q, K, V and the attention output) and the MLP block
    (the up/gate projections and the activation's output).
    """
    a = architecture
    attn = 2 * a.q_width + 2 * a.kv_width
    mlp = (3 if a.gated_mlp else 2) * a.ffn_size
    return (2 * a.hidden_size + max(attn, mlp)) * DTYPE_BYTES[dtype]


def memory_profile(architecture: Architecture, dtype: Dtype = "float16") -> MemoryProfile:
    a = architecture
    bytes_per = DTYPE_BYTES[dtype]
    return MemoryProfile(
        encode_layer_weight_bytes=a.encode_layer_bytes(dtype),
        decode_layer_weight_bytes=a.decode_layer_bytes(dtype),
        embedding_bytes=(a.embedding_params() + a.head_params()) * bytes_per,
        kv_bytes_per_token=a.kv_bytes_per_token(dtype),
        activation_bytes_per_token=activation_bytes_per_token(a, dtype),
    )


# -- grids --------------------------------------------------------------------------------------
def _geometric_axis(lo: int, hi: int) -> list[int]:
    """Powers of two from ``lo`` to ``hi`` with the midpoints 3·2^k in between; ``hi``
    is always included."""
    out: list[int] = []
    p = 1
    while p <= hi:
        for v in (p, 3 * p // 2):
            if lo <= v < hi:
                out.append(v)
        p *= 2
    out.append(hi)
    return sorted(set(out))


BATCH_AXIS_MAX = 1024
HEAD_TOKENS_MAX = 8192
BYTES_AXIS = tuple(
    int(v) for v in sorted({2**e for e in range(8, 33)} | {3 * 2**e for e in range(8, 32)})
)


def batch_axis() -> list[int]:
    return _geometric_axis(1, BATCH_AXIS_MAX)


def length_axis(max_length: int) -> list[int]:
    return _geometric_axis(1, max(int(max_length), 2))


def analytic_profile(
    architecture: Architecture,
    gpu: GpuType,
    dtype: Dtype = "float16",
    tp_degrees: Sequence[int] | None = None,
    *,
    efficiency: Efficiency | None = None,
) -> Profile:
    """A profile computed from the roofline cost model (``source="analytic"``).

    ``tp_degrees`` defaults to the degrees that divide the heads, up to a node. Lengths
    run to the model's ``max_positions`` (at least 2048) and batches to 1024; the
    profile extrapolates linearly beyond.
    """
    a = architecture
    eff = efficiency or efficiency_for(gpu)
    degrees = sorted(
        set(tp_degrees) if tp_degrees is not None else a.tensor_parallel_degrees(gpu.gpus_per_node)
    )
    if 1 not in degrees:
        degrees.insert(0, 1)
    for tp in degrees:
        shard_heads(a, tp)  # validates
    b_axis = batch_axis()
    l_axis = length_axis(max(a.max_positions, 2048))
    bb = np.asarray(b_axis, dtype=np.float64)[:, None]
    ll = np.asarray(l_axis, dtype=np.float64)[None, :]
    head_axis = _geometric_axis(1, HEAD_TOKENS_MAX)
    bytes_axis = np.asarray(BYTES_AXIS, dtype=np.float64)

    tables: dict[int, PhaseTables] = {}
    for tp in degrees:
        enc = layer_times(a, gpu, "encode", bb, ll, tp, dtype, eff)
        dec = layer_times(a, gpu, "decode", bb, ll, tp, dtype, eff)
        head = head_times(a, gpu, np.asarray(head_axis, dtype=np.float64), tp, dtype, eff)
        tables[tp] = PhaseTables(
            encode=Grid(batch=b_axis, length=l_axis, seconds=enc.tolist()),
            decode=Grid(batch=b_axis, length=l_axis, seconds=dec.tolist()),
            head=Curve(x=[float(x) for x in head_axis], seconds=head.tolist()),
        )
    x_bytes = bytes_axis.tolist()
    comm = Comm(
        all_reduce={
            tp: Curve(x=x_bytes, seconds=all_reduce_times(gpu, tp, bytes_axis, eff).tolist())
            for tp in degrees
            if tp > 1
        },
        send_recv_intra=Curve(
            x=x_bytes, seconds=send_recv_times(gpu, bytes_axis, False, eff).tolist()
        ),
        send_recv_inter=Curve(
            x=x_bytes, seconds=send_recv_times(gpu, bytes_axis, True, eff).tolist()
        ),
        source="analytic",
    )
    provenance = Provenance(
        model=a.name,
        architecture=a,
        gpu_type=gpu.name,
        dtype=dtype,
        source="analytic",
        profiler_version=ANALYTIC_PROFILER_VERSION,
        notes=f"roofline cost model; efficiency {eff.origin}",
    )
    return Profile(
        provenance=provenance,
        tensor_parallel=tables,
        comm=comm,
        memory=memory_profile(a, dtype),
    )
