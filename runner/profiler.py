"""XProfiler: measure the planner's :class:`~exegpt.planner.profile.Profile` on this
machine.

What is timed mirrors what the analytic profile computes (``exegpt.planner.analytic``):

- ``encode`` over (batch, input length): one layer of the encoding phase on one TP shard.
  Decoder-only: a decoder layer prefilling ``batch`` prompts of ``length`` tokens
  (causal attention, keys and values written to the cache). Encoder-decoder: an encoder
  layer (bidirectional) plus the decoder's one-time cross-attention K/V projection of
  the encoder output, scaled by ``decode_layers / encode_layers``.
- ``decode`` over (batch, context length): one decoder layer generating one token for
  each of ``batch`` sequences that have ``length`` tokens cached. Encoder-decoder: the
  context is split between the decoder's own tokens and the encoder output (half
  each), as the planner counts ``length`` = input + generated.
- ``head`` over tokens: the final norm, the LM head (vocabulary shard) and sampling.

Layers are timed in a chain of a few copies with distinct (random) weights, so that one
layer's weights are not served from a cache the real model would have evicted. The
work each step does once, not per layer (the step's masks and positions, the token
embedding), is timed separately and spread over the layers of the phase.

Times are the median of repeated runs after warm-up (CUDA events on a GPU, a monotonic
clock on the CPU). Grid points are measured coarse to fine within ``max_seconds``;
points not measured (out of time, or beyond the memory and token caps) are
interpolated from the finest complete level, or extrapolated linearly in batch. The TP
all-reduce and pipeline send/receive are measured with ``torch.distributed`` when this
machine has the devices for it, and otherwise come from the analytic model (the
profile's ``comm.source`` says which).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from exegpt.planner import analytic
from exegpt.planner.architecture import DTYPE_BYTES, Architecture, Dtype
from exegpt.planner.hardware import GIB, GpuType, get_gpu
from exegpt.planner.profile import (
    MEASURED_PROFILER_VERSION,
    Comm,
    Curve,
    Grid,
    MemoryProfile,
    PhaseTables,
    Profile,
    Provenance,
)

from .config import ModelConfig
from .errors import RunnerError
from .generate import Sampling, select_tokens
from .kvcache import SlotKVCache, make_step
from .model import DTYPES, Transformer
from .parallel import StageSpec, TensorParallel
from .timing import Timer
from .weights import RandomSource, SafetensorsSource, canonical_shapes, load_weights

CPU = "cpu"
# A nominal GPU type for profiles measured on the CPU: only its communication numbers
# are ever used (for an analytic all-reduce when TP > 1 cannot be measured).
CPU_GPU_TYPE = GpuType(
    name=CPU,
    peak_flops=1e12,
    memory_bandwidth=50e9,
    memory_bytes=64 * GIB,
    intra_node_bandwidth=10e9,
    inter_node_bandwidth=1.25e9,
    gpus_per_node=8,
    nvlink=False,
)
# How the head's tokens are chosen when it is timed: a sampled draw (softmax over the
# vocabulary), the dearer of greedy and sampled selection.
HEAD_SAMPLING = Sampling(greedy=False, temperature=1.0)


class ProfilerError(RunnerError):
    """A failure the profiling Job reports and exits non-zero on."""


@dataclass(frozen=True)
class ProfileOptions:
    tensor_parallel: tuple[int, ...] = (1,)
    max_seconds: float = 3600.0
    max_batch: int = 256
    max_length: int | None = None  # default: the model's max_positions
    max_tokens: int | None = None  # encode points with batch * length above are skipped
    warmup: int = 2
    repeats: int = 5
    min_point_seconds: float = 0.02  # repeat short runs until they sum to this
    copies: int | None = None  # layers per timed chain (default: by weight bytes)
    comm: Literal["auto", "measured", "analytic"] = "auto"
    memory_fraction: float = 0.7  # of free memory one grid point may use
    seed: int = 0
    midpoints: bool = True  # refine the grid with 3*2^k points after the powers of two


@dataclass
class _PhaseGrid:
    batch: list[int]
    length: list[int]
    measured: dict[tuple[int, int], float] = field(default_factory=dict)
    filled: int = 0


def _powers(lo: int, hi: int) -> list[int]:
    out, p = [], 1
    while p < hi:
        if p >= lo:
            out.append(p)
        p *= 2
    out.append(hi)
    return sorted(set(out))


def grid_levels(lo: int, hi: int, midpoints: bool) -> list[list[int]]:
    """Nested axes, coarse to fine: every other power of two (with both ends), every
    power of two, then the midpoints 3*2^k."""
    powers = _powers(lo, hi)
    coarse = sorted({*powers[::2], powers[-1]})
    levels = [coarse, powers]
    if midpoints:
        mids = {3 * p // 2 for p in powers if 3 * p // 2 < hi and 3 * p // 2 > lo and p >= 2}
        levels.append(sorted(set(powers) | mids))
    out: list[list[int]] = []
    for lv in levels:
        if not out or lv != out[-1]:
            out.append(lv)
    return out


def length_levels(max_length: int, midpoints: bool) -> list[list[int]]:
    """Lengths: 1, then 16 up to ``max_length`` (short lengths cost about the same)."""
    hi = max(max_length, 2)
    levels = grid_levels(16, hi, midpoints) if hi > 16 else grid_levels(1, hi, midpoints)
    return [sorted({1, *lv}) for lv in levels]


def match_gpu(gpu_type: str, device_name: str, memory_bytes: int) -> bool:
    """Whether a CUDA device (its name and memory) is of ``gpu_type``
    (``nvidia-h100-80gb`` matches "NVIDIA H100 80GB HBM3")."""
    want = gpu_type.lower().removeprefix("nvidia-").split("-")
    name = device_name.lower().replace("-", " ").split()
    model = want[0]
    if model not in name and not any(w.startswith(model) for w in name):
        return False
    for part in want[1:]:
        if part.endswith("gb") and part[:-2].isdigit():
            gib = memory_bytes / GIB
            if abs(gib - int(part[:-2])) > 0.15 * int(part[:-2]):
                return False
    return True


class XProfiler:
    """Measures a :class:`Profile` of ``config`` on ``device`` (``cuda`` or ``cpu``)."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        gpu_type: str,
        dtype: Dtype = "float16",
        device: str = "auto",
        options: ProfileOptions | None = None,
        weights: str | Path | None = None,
        log: Callable[[str], None] | None = None,
        check_gpu: bool = True,
    ) -> None:
        self.config = config
        self.arch: Architecture = config.architecture
        self.options = options or ProfileOptions()
        self.dtype_name: Dtype = dtype
        self.dtype = DTYPES[dtype]
        self.elem = DTYPE_BYTES[dtype]
        self.weights = Path(weights) if weights is not None else None
        self.log = log or (lambda _msg: None)
        self.device = self._pick_device(device, gpu_type, check_gpu)
        self.gpu_type = CPU if self.device.type == "cpu" else self._gpu_name(gpu_type)
        self.timer = Timer(
            self.device,
            warmup=self.options.warmup,
            repeats=self.options.repeats,
            min_seconds=self.options.min_point_seconds,
        )
        degrees = sorted({1, *self.options.tensor_parallel})
        for tp in degrees:
            if tp < 1 or self.arch.num_heads % tp:
                raise ProfilerError(
                    f"TP degree {tp} does not divide the {self.arch.num_heads} heads of "
                    f"{self.arch.name}"
                )
        self.degrees = degrees
        self.max_length = self.options.max_length or self.arch.max_positions
        self.copies = self.options.copies or self._default_copies()
        self._deadline = 0.0
        self._notes: list[str] = []

    # -- set-up -------------------------------------------------------------------------------
    @staticmethod
    def _gpu_name(gpu_type: str) -> str:
        try:
            return get_gpu(gpu_type).name
        except KeyError:
            return gpu_type.lower()

    def _pick_device(self, device: str, gpu_type: str, check: bool) -> torch.device:
        wants_cpu = device == "cpu" or (device == "auto" and gpu_type.lower() == CPU)
        if wants_cpu:
            if gpu_type.lower() not in (CPU, ""):
                raise ProfilerError(
                    f"profiling on the CPU cannot measure GPU type {gpu_type!r}: "
                    "use --gpu-type cpu, or run on a node with that GPU"
                )
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ProfilerError(
                f"no CUDA device here: the profile of {gpu_type} must be measured on that "
                "GPU (schedule the Job on a node with it; --device cpu profiles the CPU)"
            )
        dev = torch.device("cuda", 0)
        name = torch.cuda.get_device_name(dev)
        total = torch.cuda.get_device_properties(dev).total_memory
        if check and not match_gpu(gpu_type, name, total):
            raise ProfilerError(
                f"the GPU here is {name} ({total / GIB:.0f} GiB), not the requested "
                f"{gpu_type}: schedule the Job on a node with that GPU type"
            )
        return dev

    def _layer_bytes(self) -> int:
        a = self.arch
        return a.decode_layer_params() * self.elem

    def _default_copies(self) -> int:
        # enough distinct layers that their weights exceed the caches (~256 MiB), at most
        # the model's layers and 8
        need = math.ceil(256 * 2**20 / max(self._layer_bytes(), 1))
        return max(1, min(need, 8, self.arch.num_layers, self.arch.encode_layers))

    def _free_bytes(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free)
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 8 * GIB

    def _budget_left(self) -> float:
        return self._deadline - time.monotonic()

    # -- the models timed -----------------------------------------------------------------------
    def _load(self, model: Transformer) -> Transformer:
        if self.weights is not None:
            source = SafetensorsSource(model.config, self.weights, "cpu", self.dtype)
            return load_weights(model, source)
        seed = self.options.seed
        return load_weights(model, RandomSource(model.config, seed, 0.02, self.device, self.dtype))

    def _bench(self, tp: int) -> Transformer:
        """``copies`` layers (of each phase) of one TP shard, without embeddings or head."""
        k = self.copies
        cfg = self.config.with_layers(k, k)
        shard = TensorParallel(tp, 0, communicate=False)
        enc = k if cfg.encoder_decoder else 0
        model = Transformer(
            cfg, tp=shard, stage=StageSpec.layers_only(k, enc), dtype=self.dtype, device=self.device
        )
        return self._load(model)

    def _ends(self, tp: int) -> Transformer:
        """The embeddings, final norm and LM head of one TP shard (no layers)."""
        cfg = self.config.with_layers(1, 1)
        shard = TensorParallel(tp, 0, communicate=False)
        stage = StageSpec(decoder=range(0), encoder=range(0), first=True, last=True)
        model = Transformer(cfg, tp=shard, stage=stage, dtype=self.dtype, device=self.device)
        return self._load(model)

    # -- one grid point --------------------------------------------------------------------------
    def _point_bytes(self, bench: Transformer, phase: str, b: int, n: int) -> int:
        """Memory a point needs beyond the weights: KV caches and activations."""
        kv_local = 2 * len(bench.kv_heads) * self.config.head_dim * self.elem
        act = analytic.activation_bytes_per_token(self.arch, self.dtype_name)
        heads = len(bench.q_heads)
        if phase == "encode":
            scores = b * heads * n * n * 4  # an unfused attention's scores (worst case)
            return self.copies * b * (n + 1) * kv_local + 3 * b * n * act + scores
        return self.copies * b * (n + 1) * kv_local * 2 + 3 * b * act

    def _encode_fns(
        self, bench: Transformer, ends: Transformer, b: int, n: int
    ) -> tuple[Callable[[], object], Callable[[], object], Callable[[], object] | None]:
        """(layers, per-step overhead, cross K/V projection or None) for prefill of ``b``
        sequences of ``n`` tokens."""
        h = self.config.hidden_size
        ids = list(range(b))
        x = torch.randn(b, n, h, dtype=self.dtype, device=self.device)
        tokens = torch.randint(0, self.config.vocab_size, (b, n), device=self.device)
        if not self.config.encoder_decoder:
            cache = bench.new_cache(b, n)
            for s in ids:
                cache.add(s)
            meta = cache.step(ids, [n] * b, causal=True)
            ctx = bench.context(meta, cache)

            def overhead() -> object:
                m = cache.step(ids, [n] * b, causal=True)
                ends.embed_tokens(tokens, m.positions)
                return bench.context(m, cache)

            return (lambda: bench.run_layers(x, ctx)), overhead, None

        meta = make_step(ids, ids, [0] * b, [n] * b, causal=False, device=self.device)
        ctx = bench.context(meta, None, encoder=True)
        cross = bench.new_cross_cache(b, n)
        for s in ids:
            cross.add(s)
        cmeta = cross.step(ids, [n] * b, causal=False)
        layers = bench.layers

        def project() -> object:
            for i, layer in enumerate(layers):
                assert layer.cross is not None
                layer.cross.project(x, cmeta, cross, i)
            return None

        def overhead() -> object:
            m = make_step(ids, ids, [0] * b, [n] * b, causal=False, device=self.device)
            ends.embed_tokens(tokens, m.positions)
            return bench.context(m, None, encoder=True)

        return (lambda: bench.run_encoder_layers(x, ctx)), overhead, project

    def _decode_fns(
        self, bench: Transformer, ends: Transformer, b: int, n: int
    ) -> tuple[Callable[[], object], Callable[[], object]]:
        """(layers, per-step overhead) for one decode step of ``b`` sequences with ``n``
        tokens of context."""
        h = self.config.hidden_size
        ids = list(range(b))
        x = torch.randn(b, 1, h, dtype=self.dtype, device=self.device)
        tokens = torch.randint(0, self.config.vocab_size, (b, 1), device=self.device)
        cross: SlotKVCache | None = None
        own = n
        if self.config.encoder_decoder:
            cross_len = max(1, (n + 1) // 2)
            own = n - cross_len
            cross = bench.new_cross_cache(b, cross_len)
            for s in ids:
                cross.add(s)
                cross.set_length(s, cross_len)
        cache = bench.new_cache(b, own + 1)
        for s in ids:
            cache.add(s)
            cache.set_length(s, own)
        meta = cache.step(ids, [1] * b, causal=True)
        ctx = bench.context(meta, cache, cross_cache=cross)

        last = self.arch.max_positions - 1

        def overhead() -> object:
            m = cache.step(ids, [1] * b, causal=True)
            ends.embed_tokens(tokens, m.positions.clamp(max=last))  # same cost
            return bench.context(m, cache, cross_cache=cross)

        return (lambda: bench.run_layers(x, ctx)), overhead

    def _measure_point(
        self, bench: Transformer, ends: Transformer, phase: str, b: int, n: int
    ) -> float:
        """Seconds of one layer of ``phase`` at (b, n), per-step work included."""
        k = self.copies
        a = self.arch
        if phase == "encode":
            layers, overhead, project = self._encode_fns(bench, ends, b, n)
            t = self.timer.time(layers).median / k
            t += self.timer.time(overhead).median / a.encode_layers
            if project is not None:
                t += self.timer.time(project).median / k * a.decode_layers / a.encode_layers
            return t
        layers, overhead = self._decode_fns(bench, ends, b, n)
        return (
            self.timer.time(layers).median / k + self.timer.time(overhead).median / a.decode_layers
        )

    # -- grids ---------------------------------------------------------------------------------
    def _estimate(self, grid: _PhaseGrid, b: int, n: int, phase: str) -> float:
        """A guess at a point's time from the points measured so far (0: no guess)."""
        if not grid.measured:
            return 0.0
        work = (lambda bb, nn: bb * nn) if phase == "encode" else (lambda bb, nn: bb * (nn + 64))
        (b0, n0), t0 = max(grid.measured.items(), key=lambda kv: work(*kv[0]))
        return t0 * max(work(b, n) / work(b0, n0), 1.0)

    def _measure_grid(
        self, tp: int, phase: str, bench: Transformer, ends: Transformer, share: float
    ) -> Grid:
        """The grid of ``phase`` for TP degree ``tp``, within ``share`` seconds."""
        opts = self.options
        b_levels = grid_levels(1, opts.max_batch, opts.midpoints)
        n_levels = length_levels(self.max_length, opts.midpoints)
        depth = max(len(b_levels), len(n_levels))
        b_levels += [b_levels[-1]] * (depth - len(b_levels))
        n_levels += [n_levels[-1]] * (depth - len(n_levels))
        max_tokens = opts.max_tokens or (65536 if self.device.type == "cuda" else 8192)
        mem_cap = self._free_bytes() * opts.memory_fraction
        stop = time.monotonic() + share
        grid = _PhaseGrid(b_levels[0], n_levels[0])
        complete: Grid | None = None
        for bs, ns in zip(b_levels, n_levels, strict=True):
            points = sorted(
                ((b, n) for b in bs for n in ns if (b, n) not in grid.measured),
                key=lambda p: p[0] * p[1],
            )
            reached = True
            for b, n in points:
                over_cap = (phase == "encode" and b * n > max_tokens) or (
                    self._point_bytes(bench, phase, b, n) > mem_cap
                )
                if over_cap:
                    continue
                guess = self._estimate(grid, b, n, phase) * (opts.warmup + opts.repeats + 2)
                if grid.measured and time.monotonic() + guess > min(stop, self._deadline):
                    reached = False
                    continue
                try:
                    grid.measured[(b, n)] = self._measure_point(bench, ends, phase, b, n)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    if not grid.measured:
                        raise ProfilerError(
                            f"out of memory measuring {phase} at batch {b}, length {n} "
                            f"(TP {tp}): the GPU cannot hold one layer of {self.arch.name} "
                            f"in {self.dtype_name}"
                        ) from None
            grid.batch, grid.length = bs, ns
            filled = self._fill(grid, complete)
            if reached:
                complete = filled
            if not reached or time.monotonic() > min(stop, self._deadline):
                break
        result = self._fill(grid, complete)
        total = len(result.batch) * len(result.length)
        inside = sum(1 for p in grid.measured if p[0] in result.batch and p[1] in result.length)
        self.log(
            f"  {phase} TP {tp}: measured {inside} of {total} points "
            f"({len(result.batch)} batches x {len(result.length)} lengths)"
        )
        self._notes.append(f"{phase} tp{tp}: {inside}/{total} points measured")
        return result

    def _fill(self, grid: _PhaseGrid, coarse: Grid | None) -> Grid:
        """A full grid over the current axes: measured points, and the others
        interpolated from ``coarse`` or extrapolated linearly in batch."""
        bs, ns = grid.batch, grid.length
        table = [[math.nan] * len(ns) for _ in bs]
        for i, b in enumerate(bs):
            for j, n in enumerate(ns):
                t = grid.measured.get((b, n))
                if t is None and coarse is not None:
                    t = coarse.at(b, n)
                if t is not None:
                    table[i][j] = t
        if not grid.measured:
            raise ProfilerError("no grid point could be measured")
        # extrapolate what is left: along batch from the largest measured batch of the
        # same length, else along length from the longest measured length of that batch
        for j, n in enumerate(ns):
            for i, b in enumerate(bs):
                if not math.isnan(table[i][j]):
                    continue
                below = [(bb, t) for (bb, nn), t in grid.measured.items() if nn == n and bb < b]
                if below:
                    bb, t = max(below)
                    table[i][j] = t * b / bb
                    continue
                left = [(nn, t) for (bb, nn), t in grid.measured.items() if bb == b and nn < n]
                if left:
                    nn, t = max(left)
                    table[i][j] = t * n / nn
                    continue
                bb, nn = min(grid.measured, key=lambda p: abs(p[0] - b) + abs(p[1] - n))
                table[i][j] = grid.measured[(bb, nn)] * (b * n) / (bb * nn)
        arr = np.maximum(np.asarray(table, dtype=float), 0.0)
        return Grid(batch=list(bs), length=list(ns), seconds=arr.tolist())

    def _measure_head(self, ends: Transformer, tokens_axis: Sequence[int]) -> Curve:
        h = self.config.hidden_size
        out = []
        for m in tokens_axis:
            x = torch.randn(m, h, dtype=self.dtype, device=self.device)
            out.append(self.timer.time(lambda x=x: select_tokens(ends.logits(x), HEAD_SAMPLING)))
        return Curve(x=[float(m) for m in tokens_axis], seconds=[t.median for t in out])

    # -- communication and memory ---------------------------------------------------------------
    def _comm(self) -> Comm:
        opts = self.options
        cuda = self.device.type == "cuda"
        devices = torch.cuda.device_count() if cuda else (os.cpu_count() or 1)
        need = max([2, *self.degrees])
        known: GpuType
        if self.gpu_type == CPU:
            known = CPU_GPU_TYPE
        else:
            try:
                known = get_gpu(self.gpu_type)
            except KeyError:
                known = CPU_GPU_TYPE.model_copy(update={"name": self.gpu_type})
        measure = opts.comm == "measured" or (
            opts.comm == "auto" and devices >= need and (cuda or max(self.degrees) > 1)
        )
        axis = np.asarray(analytic.BYTES_AXIS, dtype=float)
        x_axis = axis.tolist()
        analytic_ar = {
            tp: Curve(x=x_axis, seconds=analytic.all_reduce_times(known, tp, axis).tolist())
            for tp in self.degrees
            if tp > 1
        }
        inter = Curve(x=x_axis, seconds=analytic.send_recv_times(known, axis, True).tolist())
        intra = Curve(x=x_axis, seconds=analytic.send_recv_times(known, axis, False).tolist())
        if not measure:
            if opts.comm == "analytic":
                why = "--comm analytic"
            elif devices < need:
                why = f"{devices} device(s), {need} needed"
            else:
                why = "TP 1 only on the CPU"
            self._notes.append(f"comm analytic ({why}; {known.name} link model)")
            return Comm(
                all_reduce=analytic_ar, send_recv_intra=intra, send_recv_inter=inter,
                source="analytic",
            )  # fmt: skip
        if devices < need:
            raise ProfilerError(
                f"measuring communication for TP {max(self.degrees)} needs {need} devices; "
                f"found {devices}"
            )
        from .comm import byte_sizes, measure_comm

        hi = 2**28 if cuda else 2**22
        sizes = byte_sizes(256, hi)
        self.log(f"communication: {len(sizes)} sizes over {need} processes")
        times = measure_comm(
            self.degrees, sizes, dtype=self.dtype_name, cuda=cuda, warmup=opts.warmup,
            repeats=opts.repeats, timeout_s=max(60.0, self._budget_left()),
        )  # fmt: skip
        xs = [float(s) for s in sizes]
        self._notes.append(
            f"comm measured ({times.backend}, {len(sizes)} sizes; inter-node send/recv analytic)"
        )
        return Comm(
            all_reduce={tp: Curve(x=xs, seconds=t) for tp, t in times.all_reduce.items()},
            send_recv_intra=Curve(x=xs, seconds=times.send_recv),
            send_recv_inter=inter,
            source="measured",
        )

    def _memory(self, bench: Transformer) -> MemoryProfile:
        """Bytes per layer of the real modules (TP 1), embeddings and head, KV bytes per
        token, and the activation peak per token (measured on a GPU)."""

        def params(module: torch.nn.Module) -> int:
            return sum(p.numel() for p in module.parameters()) * self.elem

        dec = params(bench.layers[0])
        enc = params(bench.encoder_layers[0]) if bench.encoder_layers else dec
        shapes = canonical_shapes(self.config)
        embed_names = ["embed.tokens.weight", "embed.positions.weight", "lm_head.weight"]
        embedding = sum(math.prod(shapes[n]) for n in embed_names if n in shapes) * self.elem
        kv = 2 * self.arch.kv_width * self.elem
        act = analytic.activation_bytes_per_token(self.arch, self.dtype_name)
        if self.device.type == "cuda":
            act = self._activation_peak(bench) or act
        return MemoryProfile(
            encode_layer_weight_bytes=enc,
            decode_layer_weight_bytes=dec,
            embedding_bytes=embedding,
            kv_bytes_per_token=kv,
            activation_bytes_per_token=act,
        )

    def _activation_peak(self, bench: Transformer) -> int | None:
        """Peak bytes per token allocated while one layer prefills (TP 1), beyond its
        inputs and KV cache; None when it cannot be measured."""
        b, n = 4, min(512, self.max_length)
        try:
            ends = self._ends(1)
            layers, _, _ = self._encode_fns(bench, ends, b, n)
            torch.cuda.synchronize(self.device)
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with torch.inference_mode():
                layers()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - base
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return None
        return max(int(peak / (b * n * self.copies)), 0) or None

    # -- the whole profile ------------------------------------------------------------------
    def run(self) -> Profile:
        opts = self.options
        start = time.monotonic()
        self._deadline = start + opts.max_seconds
        self.log(
            f"profiling {self.arch.name} ({self.dtype_name}) on {self._device_label()}: "
            f"TP {self.degrees}, budget {opts.max_seconds:g} s, chains of {self.copies} layers"
        )
        comm = self._comm()
        tables: dict[int, PhaseTables] = {}
        memory: MemoryProfile | None = None
        head_axis = _powers(1, opts.max_batch)
        n_degrees = len(self.degrees)
        for index, tp in enumerate(self.degrees):
            try:
                bench = self._bench(tp)
                ends = self._ends(tp)
            except torch.OutOfMemoryError:
                raise ProfilerError(
                    f"out of memory loading {self.copies} layer(s) of {self.arch.name} at TP {tp}"
                ) from None
            if tp == 1:
                memory = self._memory(bench)
            head = self._measure_head(ends, head_axis)
            left = max(self._budget_left(), 0.0)
            share = left / (n_degrees - index)
            encode = self._measure_grid(tp, "encode", bench, ends, share * 0.5)
            decode = self._measure_grid(tp, "decode", bench, ends, max(self._budget_left(), 0.0)
                                        / (n_degrees - index))  # fmt: skip
            tables[tp] = PhaseTables(encode=encode, decode=decode, head=head)
            del bench, ends
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        assert memory is not None
        elapsed = time.monotonic() - start
        self._notes.append(f"{elapsed:.0f} s; torch {torch.__version__}")
        weights = "weights from " + str(self.weights) if self.weights else "random weights"
        provenance = Provenance(
            model=self.arch.name,
            architecture=self.arch,
            gpu_type=self.gpu_type,
            dtype=self.dtype_name,
            source="measured",
            profiler_version=MEASURED_PROFILER_VERSION,
            created_at=datetime.now(UTC),
            host=f"{socket.gethostname()} ({self._device_label()})",
            notes=f"XProfiler, {weights}, chains of {self.copies} layers; "
            + "; ".join(self._notes),
        )
        return Profile(provenance=provenance, tensor_parallel=tables, comm=comm, memory=memory)

    def _device_label(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"


def resolve_config(architecture: Architecture, weights: str | Path | None = None) -> ModelConfig:
    """The execution details for ``architecture``: from the ``config.json`` of the
    weights directory when there is one (whose shape must match), else the family's."""
    base = ModelConfig.from_architecture(architecture)
    if weights is None or not (Path(weights) / "config.json").is_file():
        return base
    found = ModelConfig.from_directory(weights)
    keys = (
        *("family", "num_layers", "num_encoder_layers", "hidden_size", "num_heads"),
        *("kv_heads", "dim_head", "ffn_size", "gated_mlp", "vocab_size", "norm", "position"),
    )
    diff = [k for k in keys if getattr(found.architecture, k) != getattr(architecture, k)]
    if diff:
        raise ProfilerError(
            f"the weights in {weights} do not fit {architecture.name}: they differ in "
            + ", ".join(diff)
        )
    return replace(found, architecture=architecture)
