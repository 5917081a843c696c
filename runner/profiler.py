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
- ``head`` over tokens: the final norm, the LM head (vocabulary shard) and choosing the
  tokens as the engine does when every request samples (``choose_sampled``).

Layers are timed in a chain of a few copies with distinct (random) weights, so that one
layer's weights are not served from a cache the real model would have evicted. A whole
step of that few-layer model is timed as well: what the step takes beyond its layers
and its head (metadata, masks, positions, the token embedding) is spread over the
model's layers of the phase, so that layers x per-layer time + head is a whole step.

Times are the median of repeated runs after warm-up (CUDA events on a GPU, a monotonic
clock on the CPU); on the CPU every point is timed in several passes, each timing
keeping its median over three or more passes, the lower of two (a pass slowed by other
load is discarded). Grid points are
measured coarse to fine within ``max_seconds``; points not measured (out of time, or
beyond the memory and token caps) are interpolated from the finest complete level, or
extrapolated linearly in batch. The TP
all-reduce and pipeline send/receive are measured with ``torch.distributed`` when this
machine has the devices for it, and otherwise come from the analytic model (the
profile's ``comm.source`` says which).
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from exegpt.planner import analytic
from exegpt.planner.architecture import DTYPE_BYTES, Architecture, Dtype
from exegpt.planner.hardware import GIB, GpuType, get_gpu
from exegpt.planner.isotonic import non_decreasing
from exegpt.planner.profile import (
    MEASURED_PROFILER_VERSION,
    Comm,
    Curve,
    EngineOverhead,
    Grid,
    MemoryProfile,
    PhaseTables,
    Profile,
    Provenance,
)

from . import overhead
from .config import ModelConfig
from .errors import RunnerError
from .kvcache import SlotKVCache, make_step
from .model import DTYPES, Layer, Transformer
from .parallel import TensorParallel
from .sampling import RowSampling, sample_rows
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
# Steps of each engine-overhead timing (one encode step, the rest decode steps).
ENGINE_STEPS = 24
ENGINE_PASSES = 3  # engine timings per batch, at least
# more passes while they fit in this, or in 1/20 of the profile's budget when that is
# less (up to ENGINE_MAX_PASSES)
ENGINE_BATCH_SECONDS = 1.0
ENGINE_MAX_PASSES = 20


def choose_sampled(logits: torch.Tensor) -> list[int]:
    """How the head's tokens are chosen when it is timed: as the engine samples a step
    whose requests all sample (temperature 1, the OpenAI default), the dearer of
    greedy and sampled selection."""
    rows = [RowSampling(temperature=1.0, seed=b) for b in range(logits.shape[0])]
    return sample_rows(logits, rows)


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
    # passes over the measured points, each timing keeping its median over three or more
    # passes, the lower of two: a pass that other load on a shared machine slowed down is
    # discarded (None: 2 on the CPU, 1 on a GPU, which a profiling Job has to itself)
    passes: int | None = None


@dataclass(frozen=True)
class _Timed:
    fn: Callable[[], object]
    reset: Callable[[], object] | None = None


@dataclass(frozen=True)
class _Parts:
    """Median seconds of what is timed at one grid point."""

    layers: float  # the chain of `copies` layers
    whole: float  # a whole step of the bench model (`copies` layers)
    head: float  # the LM head and sampling, for the batch
    project: float  # T5 encoding: the chain's cross-attention K/V projections


def settle(passes: Sequence[float]) -> float:
    """One timing over its passes: the median of three or more (a pass that other load
    slowed down, or that ran unusually fast, is discarded), the lower of two."""
    return float(statistics.median(passes) if len(passes) >= 3 else min(passes))


def settle_parts(passes: Sequence[_Parts]) -> _Parts:
    """Each timing of a point settled over its passes (:func:`settle`)."""
    return _Parts(*(settle(c) for c in zip(*(astuple(p) for p in passes), strict=True)))


@dataclass
class _PhaseGrid:
    batch: list[int]
    length: list[int]
    measured: dict[tuple[int, int], float] = field(default_factory=dict)
    parts: dict[tuple[int, int], list[_Parts]] = field(default_factory=dict)


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


def affine_in_length(grid: Grid, measured: dict[tuple[int, int], float]) -> Grid:
    """A decode grid with each batch's row replaced by the least-squares line through
    its measured points: a decode step reads the weights once and the context's keys
    and values once, so for one batch its time is affine in the context length (on a
    GPU as on a CPU). The line keeps the trend of the row and drops the scatter of its
    single points, which on a shared CPU is 5 to 10 %. Rows with fewer than three
    measured points, or a falling line, are kept as they are."""
    rows = []
    for b, row in zip(grid.batch, grid.seconds, strict=True):
        points = [(n, t) for (bb, n), t in measured.items() if bb == b and n in grid.length]
        if len(points) >= 3:
            x = np.array([n for n, _ in points], dtype=float)
            y = np.array([t for _, t in points], dtype=float)
            slope, intercept = np.polyfit(x, y, 1)
            if slope >= 0 and intercept > 0:
                row = [float(intercept + slope * n) for n in grid.length]
        rows.append(row)
    return Grid(batch=list(grid.batch), length=list(grid.length), seconds=rows)


def non_decreasing_in_batch(
    grid: Grid,
    rest: Callable[[int, int], float] = lambda _b, _n: 0.0,
    layers: int = 1,
    floor: float = 0.0,
) -> Grid:
    """``grid`` of per-layer times such that the whole step, ``layers`` x the layer
    time + ``rest(batch, length)`` (what the step spends besides its layers), never
    falls as the batch grows at any length: each length's steps made non-decreasing
    (isotonic regression, ``planner.isotonic.non_decreasing``) and split back, the
    layers' share never below ``floor`` of the step. A step of more sequences does at
    least the work of one of fewer, so a measured step below a smaller batch's is
    scatter; on a shared CPU the smallest batches' steps, two or three milliseconds,
    scatter by a third. Points whose step already rose are kept as they are (the
    per-layer time itself may fall where the rest grows faster than the step)."""
    steps = [
        [layers * t + rest(b, n) for n, t in zip(grid.length, row, strict=True)]
        for b, row in zip(grid.batch, grid.seconds, strict=True)
    ]
    columns = [non_decreasing(col) for col in zip(*steps, strict=True)]
    rows: list[list[float]] = []
    for i, b in enumerate(grid.batch):
        row = []
        for j, n in enumerate(grid.length):
            step = columns[j][i]
            if step == steps[i][j]:
                row.append(grid.seconds[i][j])
            else:
                row.append(max(step - rest(b, n), floor * step) / layers)
        rows.append(row)
    return Grid(batch=list(grid.batch), length=list(grid.length), seconds=rows)


def affine_in_batch(
    batch: Sequence[int], seconds: Sequence[float], weights: Sequence[float] | None = None
) -> list[float]:
    """The least-squares line through ``seconds`` by ``batch`` (each point's residual
    weighted by ``weights``), at each batch and never below zero (two points or fewer:
    the points themselves, never below zero)."""
    if len(batch) < 3:
        return [max(s, 0.0) for s in seconds]
    w = None if weights is None else np.asarray(weights, dtype=float)
    x = np.asarray(batch, dtype=float)
    slope, intercept = np.polyfit(x, np.asarray(seconds, dtype=float), 1, w=w)
    return [max(float(intercept + slope * b), 0.0) for b in batch]


def fill_grid(
    batch: Sequence[int],
    length: Sequence[int],
    measured: dict[tuple[int, int], float],
    coarse: Grid | None,
) -> Grid:
    """A full grid over the axes ``batch`` x ``length``: the ``measured`` points, and the
    others interpolated from ``coarse`` or extrapolated linearly in batch."""
    bs, ns = list(batch), list(length)
    table = [[math.nan] * len(ns) for _ in bs]
    for i, b in enumerate(bs):
        for j, n in enumerate(ns):
            t = measured.get((b, n))
            if t is None and coarse is not None:
                t = coarse.at(b, n)
            if t is not None:
                table[i][j] = t
    if not measured:
        raise ProfilerError("no grid point could be measured")
    # extrapolate what is left: along batch from the largest measured batch of the
    # same length, else along length from the longest measured length of that batch
    for j, n in enumerate(ns):
        for i, b in enumerate(bs):
            if not math.isnan(table[i][j]):
                continue
            below = [(bb, t) for (bb, nn), t in measured.items() if nn == n and bb < b]
            if below:
                bb, t = max(below)
                table[i][j] = t * b / bb
                continue
            left = [(nn, t) for (bb, nn), t in measured.items() if bb == b and nn < n]
            if left:
                nn, t = max(left)
                table[i][j] = t * n / nn
                continue
            bb, nn = min(measured, key=lambda p: abs(p[0] - b) + abs(p[1] - n))
            table[i][j] = measured[(bb, nn)] * (b * n) / (bb * nn)
    arr = np.maximum(np.asarray(table, dtype=float), 0.0)
    return Grid(batch=list(bs), length=list(ns), seconds=arr.tolist())


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
        self._slot_room = 0  # bytes: a tenth of the memory free beside the bench model
        self._notes: list[str] = []
        self._probe_model: Transformer | None = None  # time_decode_step's

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

    @property
    def _passes(self) -> int:
        """Passes over each timing: ``options.passes``, else 2 on the CPU, 1 on a GPU."""
        return self.options.passes or (1 if self.device.type == "cuda" else 2)

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
        """A whole model of ``copies`` layers (of each phase), one TP shard."""
        k = self.copies
        cfg = self.config.with_layers(k, k)
        shard = TensorParallel(tp, 0, communicate=False)
        model = self._load(Transformer(cfg, tp=shard, dtype=self.dtype, device=self.device))
        self._slot_room = self._free_bytes() // 10  # what long cache slots may take
        return model

    # -- one grid point --------------------------------------------------------------------------
    def _point_bytes(self, bench: Transformer, phase: str, b: int, n: int) -> int:
        """Memory a point needs beyond the weights: KV caches and activations."""
        kv_local = 2 * len(bench.kv_heads) * self.config.head_dim * self.elem
        act = analytic.activation_bytes_per_token(self.arch, self.dtype_name)
        heads = len(bench.q_heads)
        logits = b * self.config.vocab_size * 4 * 3
        slot = self._slot_tokens(bench, b, n)
        if phase == "encode":
            scores = b * heads * n * n * 4  # an unfused attention's scores (worst case)
            return self.copies * b * slot * kv_local + 3 * b * n * act + scores + logits
        return self.copies * b * slot * kv_local * 2 + 3 * b * act + logits

    def _slot_tokens(self, bench: Transformer, b: int, tokens: int) -> int:
        """The tokens a timed sequence's cache slot holds: as many as the model's longest
        sequence, as the engine sizes its slots for the longest request it takes (the
        strides between a sequence's heads and between sequences are then the engine's;
        on the CPU the timings move by a few percent with them), unless such caches
        would take more than a tenth of the free memory: then just ``tokens + 1``."""
        kv_token = 2 * len(bench.kv_heads) * self.config.head_dim * self.elem
        full = len(bench.layers) * b * self.max_length * kv_token  # the bench model's caches
        if self.max_length > tokens and full <= self._slot_room:
            return self.max_length
        return tokens + 1

    def _head_fn(self, bench: Transformer, m: int) -> Callable[[], object]:
        x = torch.randn(m, self.config.hidden_size, dtype=self.dtype, device=self.device)
        return lambda: choose_sampled(bench.logits(x))

    def _encode_fns(self, bench: Transformer, b: int, n: int) -> dict[str, _Timed]:
        """What is timed for the encoding of ``b`` inputs of ``n`` tokens: ``layers``
        (the chain of layers), ``project`` (T5: the chain's cross K/V projections) and
        ``step`` (the whole step: metadata, embedding, masks, positions, the layers, and
        for decoder-only models the LM head and sampling)."""
        h = self.config.hidden_size
        ids = list(range(b))
        x = torch.randn(b, n, h, dtype=self.dtype, device=self.device)
        tokens = torch.randint(0, self.config.vocab_size, (b, n), device=self.device)
        if not self.config.encoder_decoder:
            cache = bench.new_cache(b, self._slot_tokens(bench, b, n))
            for s in ids:
                cache.add(s)
            meta = cache.step(ids, [n] * b, causal=True, packed=bench.packed_prefill)
            ctx = bench.context(meta, cache)
            if bench.packed_prefill:
                x = x.view(1, b * n, h)

            def empty() -> None:
                for s in ids:
                    cache.set_length(s, 0)

            def step() -> object:
                logits = bench.forward_step(ids, tokens, cache, new=[n] * b)
                return choose_sampled(logits)

            return {
                "layers": _Timed(lambda: bench.run_layers(x, ctx)),
                "step": _Timed(step, empty),
            }

        meta = make_step(ids, ids, [0] * b, [n] * b, causal=False, device=self.device)
        ctx = bench.context(meta, None, encoder=True)
        cross = bench.new_cross_cache(b, n)
        for s in ids:
            cross.add(s)
        cmeta = cross.step(ids, [n] * b, causal=False)
        layers = list(bench.layers)

        def project() -> object:
            for i, layer in enumerate(layers):
                assert isinstance(layer, Layer) and layer.cross is not None
                layer.cross.project(x, cmeta, cross, i)
            return None

        def forget() -> None:
            for s in ids:
                if s in cross:
                    cross.remove(s)

        def encode_step() -> object:
            encoded = bench.encode(ids, tokens, [n] * b)
            bench.project_cross(ids, encoded, [n] * b, cross)
            return None

        return {
            "layers": _Timed(lambda: bench.run_encoder_layers(x, ctx)),
            "project": _Timed(project),
            "step": _Timed(encode_step, forget),
        }

    def _decode_fns(self, bench: Transformer, b: int, n: int) -> dict[str, _Timed]:
        """What is timed for one decode step of ``b`` sequences with ``n`` tokens of
        context: ``layers`` and ``step`` (the whole step, head included)."""
        h = self.config.hidden_size
        ids = list(range(b))
        x = torch.randn(b, 1, h, dtype=self.dtype, device=self.device)
        tokens = torch.randint(0, self.config.vocab_size, (b,), device=self.device)
        cross: SlotKVCache | None = None
        own = n
        if self.config.encoder_decoder:
            cross_len = max(1, (n + 1) // 2)
            own = n - cross_len
            cross = bench.new_cross_cache(b, cross_len)
            for s in ids:
                cross.add(s)
                cross.set_length(s, cross_len)
        cache = bench.new_cache(b, self._slot_tokens(bench, b, own))
        for s in ids:
            cache.add(s)
            cache.set_length(s, own)
        meta = cache.step(ids, [1] * b, causal=True, packed=bench.packed_decode)
        ctx = bench.context(meta, cache, cross_cache=cross)
        if bench.packed_decode:
            x = x.view(1, b, h)

        def rewind() -> None:
            for s in ids:
                cache.set_length(s, own)

        def step() -> object:
            return choose_sampled(bench.decode(ids, tokens, cache, cross))

        return {
            "layers": _Timed(lambda: bench.run_layers(x, ctx)),
            "step": _Timed(step, rewind),
        }

    def _measure_point(self, bench: Transformer, phase: str, b: int, n: int) -> _Parts:
        """The timings of one grid point: the chain of layers, the whole step (the bench
        is a model of ``copies`` layers), the head, and (T5 encoding) the chain's cross
        K/V projections."""
        encode = phase == "encode"
        fns = self._encode_fns(bench, b, n) if encode else self._decode_fns(bench, b, n)
        layers = self.timer.time(fns["layers"].fn).median
        whole = self.timer.time(fns["step"].fn, fns["step"].reset).median
        if encode and "project" in fns:
            return _Parts(layers, whole, 0.0, self.timer.time(fns["project"].fn).median)
        return _Parts(layers, whole, self.timer.time(self._head_fn(bench, b)).median, 0.0)

    def _layer_seconds(self, phase: str, parts: _Parts) -> float:
        """One layer of ``phase``, with its share of the step's work outside the layers
        and the head (what the whole step takes beyond them, spread over the layers of
        the phase). T5's cross K/V projection counts ``decode_layers / encode_layers``
        times per encoder layer."""
        k, a = self.copies, self.arch
        layers = parts.layers + parts.project * a.decode_layers / a.encode_layers
        rest = max(parts.whole - parts.layers - parts.project - parts.head, 0.0)
        count = a.encode_layers if phase == "encode" else a.decode_layers
        return layers / k + rest / count

    # -- grids ---------------------------------------------------------------------------------
    def _cost(self, layer_seconds: float) -> float:
        """Seconds that measuring a point whose layer takes ``layer_seconds`` costs: three
        timings (chain, step, head) of warm-up and repeated runs."""
        o = self.options
        runs = o.warmup + max(o.repeats, 1)
        return 3 * max(layer_seconds * (self.copies + 2) * runs, o.min_point_seconds)

    def _estimate(self, grid: _PhaseGrid, b: int, n: int, phase: str) -> float:
        """A guess at a point's time from the points measured so far (0: no guess)."""
        if not grid.measured:
            return 0.0

        def work(bb: int, nn: int) -> float:
            return float(bb * nn if phase == "encode" else bb * (nn + 64))

        (b0, n0), t0 = max(grid.measured.items(), key=lambda kv: work(*kv[0]))
        return t0 * max(work(b, n) / work(b0, n0), 1.0)

    def _measure_grid(self, tp: int, phase: str, bench: Transformer, share: float) -> Grid:
        """The grid of ``phase`` for TP degree ``tp``, within ``share`` seconds."""
        opts = self.options
        b_levels = grid_levels(1, opts.max_batch, opts.midpoints)
        longest = self.max_length
        if phase == "decode" and self.arch.position == "learned":
            # a decode step's token sits at position `length`: the table's last is max - 1
            longest = min(longest, self.arch.max_positions - 1)
        n_levels = length_levels(longest, opts.midpoints)
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
                guess = self._cost(self._estimate(grid, b, n, phase))
                if grid.measured and time.monotonic() + guess > min(stop, self._deadline):
                    reached = False
                    continue
                try:
                    parts = self._measure_point(bench, phase, b, n)
                    grid.parts[(b, n)] = [parts]
                    grid.measured[(b, n)] = self._layer_seconds(phase, parts)
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
        passes = opts.passes or (1 if self.device.type == "cuda" else 2)
        order = sorted(grid.measured, key=lambda p: (p[0] * 7919 + p[1] * 104729) % 1009)
        for _ in range(passes - 1):
            for b, n in order:
                if time.monotonic() + self._cost(grid.measured[(b, n)]) > min(stop, self._deadline):
                    break
                grid.parts[(b, n)].append(self._measure_point(bench, phase, b, n))
                grid.measured[(b, n)] = self._layer_seconds(phase, settle_parts(grid.parts[(b, n)]))
        result = self._fill(grid, complete)
        if phase == "decode":
            result = affine_in_length(result, grid.measured)
        total = len(result.batch) * len(result.length)
        inside = sum(1 for p in grid.measured if p[0] in result.batch and p[1] in result.length)
        self.log(
            f"  {phase} TP {tp}: measured {inside} of {total} points "
            f"({len(result.batch)} batches x {len(result.length)} lengths)"
        )
        self._notes.append(f"{phase} tp{tp}: {inside}/{total} points measured")
        return result

    def _fill(self, grid: _PhaseGrid, coarse: Grid | None) -> Grid:
        return fill_grid(grid.batch, grid.length, grid.measured, coarse)

    def _measure_head(self, bench: Transformer, tokens_axis: Sequence[int]) -> Curve:
        passes = self._passes
        seconds = []
        for m in tokens_axis:
            fn = self._head_fn(bench, m)
            seconds.append(settle([self.timer.time(fn).median for _ in range(passes)]))
        return Curve(x=[float(m) for m in tokens_axis], seconds=seconds)

    def _measure_engine(self, bench: Transformer, batch_axis: Sequence[int]) -> EngineOverhead:
        """What serving adds to a step, by batch (``overhead``): the engine decoding
        through a real chain over the bench model, each step a decode of the batch at a
        fixed context, its wall clock per step less the same decode step timed alone
        (as the decode table times it) right before. Each batch keeps the median of
        its differences over ``ENGINE_PASSES`` passes or more (as many as fit in
        ``ENGINE_BATCH_SECONDS``, or a twentieth of the budget when less), and the
        curve is the line through them weighted by the inverse of the step's time: a
        difference of two timings varies with the step's length, and the engine's work
        is per sequence."""
        context = max(min(64, self.max_length - 1), 1)
        budget = min(ENGINE_BATCH_SECONDS, self.options.max_seconds / 20)
        medians, steps = [], []
        for b in batch_axis:
            alone = self._decode_fns(bench, b, context)["step"]
            served = overhead.ChainDecode.prepared(
                bench, b, context, self._slot_tokens(bench, b, context)
            )
            runs: list[float] = []
            solos: list[float] = []
            start = time.perf_counter()
            while len(runs) < ENGINE_PASSES or (
                time.perf_counter() - start < budget and len(runs) < ENGINE_MAX_PASSES
            ):
                solos.append(self.timer.time(alone.fn, alone.reset).median)
                engine = overhead.time_engine(
                    b, ENGINE_STEPS, self.config.vocab_size, served.work, served.rewind
                )
                runs.append(engine.per_step - solos[-1])
            medians.append(statistics.median(runs))
            steps.append(statistics.median(solos))
        seconds = affine_in_batch(batch_axis, medians, [1.0 / s for s in steps])
        self._notes.append(
            f"engine {1e6 * seconds[0]:.0f} us per step at batch {batch_axis[0]}, "
            f"{1e6 * seconds[-1]:.0f} us at {batch_axis[-1]}"
        )
        return EngineOverhead(step=Curve(x=[float(b) for b in batch_axis], seconds=seconds))

    def time_decode_step(self, batch: int, context: int) -> float:
        """Seconds of a whole decode step of the bench model (its ``copies`` layers, the
        head and the sampling) for ``batch`` sequences at ``context`` tokens, timed as
        the decode table's points time it and settled over the same passes. It reads
        the machine's speed at a later moment against the tables of a profile it
        measured (the TP-1 bench model is built on the first call)."""
        if batch < 1 or not 1 <= context < self.max_length:
            raise ValueError(
                f"a decode step needs batch >= 1 and context in [1, {self.max_length - 1}]"
            )
        if self._probe_model is None:
            self._probe_model = self._bench(1)
        step = self._decode_fns(self._probe_model, batch, context)["step"]
        return settle([self.timer.time(step.fn, step.reset).median for _ in range(self._passes)])

    # -- communication and memory ---------------------------------------------------------------
    def communication(self, seconds: float) -> tuple[Comm, list[str]]:
        """The TP all-reduce and pipeline send/receive times (measured where this machine
        has the devices, else analytic), within about ``seconds``, and the notes saying
        which: what another engine's profile adds for the communication its plan needs."""
        self._deadline = time.monotonic() + seconds
        start = len(self._notes)
        comm = self._comm()
        return comm, self._notes[start:]

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
            layers = self._encode_fns(bench, b, n)["layers"].fn
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
        return max(int(peak / (b * n)), 0) or None

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
        engine: EngineOverhead | None = None
        head_axis = _powers(1, opts.max_batch)
        n_degrees = len(self.degrees)
        for index, tp in enumerate(self.degrees):
            try:
                bench = self._bench(tp)
            except torch.OutOfMemoryError:
                raise ProfilerError(
                    f"out of memory loading {self.copies} layer(s) of {self.arch.name} at TP {tp}"
                ) from None
            if tp == 1:
                memory = self._memory(bench)
            head = self._measure_head(bench, head_axis)
            share = max(self._budget_left(), 0.0) / (n_degrees - index)
            encode = self._measure_grid(tp, "encode", bench, share * 0.5)
            share = max(self._budget_left(), 0.0) / (n_degrees - index)
            decode = self._measure_grid(tp, "decode", bench, share)
            tables[tp] = PhaseTables(encode=encode, decode=decode, head=head)
            if tp == 1:  # after the grids, which the time budget is for
                engine = self._measure_engine(bench, sorted({*head_axis[::2], head_axis[-1]}))
            del bench
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
        return Profile(
            provenance=provenance, tensor_parallel=tables, comm=comm, memory=memory, engine=engine
        )

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
