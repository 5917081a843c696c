"""XProfiler for vLLM: the planner's :class:`~exegpt.planner.profile.Profile` of vLLM's
own steps on this machine (``exegpt profile --engine vllm``).

For each TP degree one vLLM engine is started (``VllmEngine``: the engine core in this
process, requests shaped so that a step is exactly the batch wanted) and its steps are
timed over a grid, coarse to fine within the time budget, as the own-engine profiler
refines its grid (``grid_levels``):

- prefill steps by (batch, input length): ``batch`` prompts of ``length`` tokens in
  one step, ``warmup`` untimed then ``repeats`` timed, their median;
- decode steps by (batch, context length): the steps in which ``batch`` sequences of
  about ``context`` tokens all decode, the first ``warmup`` dropped, the median;
- the LM head and sampling by tokens, in vLLM's worker (``compute_logits``);
- what the engine adds to a step beyond the model (TP 1): each timed decode step's
  wall time less the time its executor ran the model, by batch, fitted to a line.

A step is then split as the planner's cost model adds it up
(``planner/costs.py``): ``layers x layer(b, n) + 2 x layers x all-reduce(bytes) +
head(b) + engine(b)``. The per-layer time is what is left of the measured step after
the head, the engine and the TP all-reduce (from ``comm``), divided by the layers
(never below 5 % of the step's share), so a whole step of the profile is the step vLLM
took; what the model's step does besides its layers (embedding, positions, attention
metadata) is spread over the layers. The communication is measured as the own-engine
profiler measures it (``torch.distributed`` where this machine has the devices, the
analytic link model otherwise). Memory is the architecture's (``analytic``).

Points not measured (the budget ran out, or beyond the token and KV-cache caps) are
interpolated from the last complete level or extrapolated; the provenance lists the
measured points of every table (``measured_points``), the engine (``vLLM``) and its
version.
"""

from __future__ import annotations

import math
import platform
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from exegpt.planner import analytic
from exegpt.planner.architecture import DTYPE_BYTES, Dtype
from exegpt.planner.profile import (
    VLLM_PROFILER_VERSION,
    Comm,
    Curve,
    EngineOverhead,
    Grid,
    PhaseTables,
    Profile,
    Provenance,
)

from .config import ModelConfig
from .profiler import (
    ProfileOptions,
    ProfilerError,
    XProfiler,
    affine_in_batch,
    affine_in_length,
    fill_grid,
    grid_levels,
    length_levels,
    non_decreasing_in_batch,
)
from .vllm_model import write_model_dir
from .vllm_steps import EngineSettings, StepTime, VllmEngine, typical, vllm_version

Phase = str  # "encode" | "decode"
# the least share of a measured step a layer keeps (what is left after the head, the
# engine and the all-reduce, divided by the layers)
MIN_LAYER_SHARE = 0.05
# seconds of the budget the communication measurement may take
COMM_SECONDS = 120.0


@dataclass
class _Raw:
    """Median whole-step seconds of one phase and TP degree, and the axes reached."""

    measured: dict[tuple[int, int], float] = field(default_factory=dict)
    passes: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    axes: tuple[list[int], list[int]] = ([], [])
    complete: tuple[list[int], list[int]] | None = None


def step_prediction(profile: Profile, tp: int, phase: Phase, batch: int, length: int) -> float:
    """A whole step of the model as ``profile`` prices it on one replica of ``tp`` GPUs
    (one pipeline stage): what :class:`~exegpt.planner.costs.CostModel` adds up."""
    arch = profile.architecture
    elem = DTYPE_BYTES[profile.provenance.dtype]
    layers = arch.decode_layers
    tokens = batch * length if phase == "encode" else batch
    if phase == "encode":
        t = layers * profile.encode_layer(tp, batch, length)
    else:
        t = layers * profile.decode_layer(tp, batch, length)
    t += 2 * layers * profile.comm.all_reduce_at(tp, tokens * arch.hidden_size * elem)
    t += profile.head(tp, batch)
    if profile.engine is not None:
        t += profile.engine.step.at(batch)
    return t


class VllmProfiler:
    """Measures a :class:`Profile` of vLLM's steps for ``config`` on this machine.

    ``engines`` (by TP degree) are used instead of starting new ones, and left open.
    """

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
        rng: np.random.Generator | None = None,
        engines: Mapping[int, VllmEngine] | None = None,
    ) -> None:
        if config.encoder_decoder:
            raise ProfilerError(
                f"{config.name} is an encoder-decoder model, which vLLM does not serve: "
                "profile it with the own engine (exegpt profile without --engine vllm)"
            )
        self.config = config
        self.arch = config.architecture
        self.options = options or ProfileOptions()
        self.dtype: Dtype = dtype
        self.weights = Path(weights) if weights is not None else None
        self.log = log or (lambda _msg: None)
        self.rng = rng if rng is not None else np.random.default_rng(self.options.seed)
        # device checks, TP degrees and the communication: as the own-engine profiler's
        self.base = XProfiler(
            config, gpu_type=gpu_type, dtype=dtype, device=device, options=self.options,
            weights=weights, log=self.log, check_gpu=check_gpu,
        )  # fmt: skip
        self.cuda = self.base.device.type == "cuda"
        self.degrees = self.base.degrees
        self.max_length = self.options.max_length or self.arch.max_positions
        self.max_tokens = self.options.max_tokens or (16384 if self.cuda else 8192)
        self.decode_steps = max(8, self.options.warmup + 2 * self.options.repeats)
        self._given = dict(engines or {})
        self._deadline = 0.0
        self._notes: list[str] = []
        self._version = ""

    # -- engines -------------------------------------------------------------------------
    def settings(self, tp: int, model_dir: Path) -> EngineSettings:
        """The settings of the engine timed at TP ``tp``: room for the largest batch and
        prefill step of the grid, the model's longest sequence, no prefix caching; on
        the CPU this process's torch threads (``--threads``), unbound (vLLM's binding
        of its threads to cores stalls a step for tenths of a second on a machine
        whose cores other work shares)."""
        return EngineSettings(
            model=model_dir,
            dtype=self.dtype,
            tensor_parallel=tp,
            max_batch=self.options.max_batch,
            max_tokens=max(self.max_tokens, self.max_length),
            max_model_len=self.max_length,
            random_weights=self.weights is None,
            seed=self.options.seed,
            cpu_threads=None if self.cuda else torch.get_num_threads(),
        )

    def adopt(self, tp: int, engine: VllmEngine) -> None:
        """Time ``engine`` at TP ``tp`` instead of starting one (it is left open)."""
        self._given[tp] = engine

    def _engine(self, tp: int, model_dir: Path) -> VllmEngine:
        given = self._given.get(tp)
        if given is not None:
            return given
        t0 = time.monotonic()
        engine = VllmEngine(self.settings(tp, model_dir), self.rng)
        self.log(f"  vLLM {engine.version} TP {tp} started in {time.monotonic() - t0:.0f} s")
        return engine

    # -- measuring ---------------------------------------------------------------------
    def _budget_left(self) -> float:
        return self._deadline - time.monotonic()

    def _point(
        self, engine: VllmEngine, phase: Phase, b: int, n: int, overhead: dict[int, list[float]]
    ) -> float | None:
        """Median seconds of the step of ``phase`` at (b, n); None if not measurable."""
        opts = self.options
        if phase == "encode":
            samples = []
            for i in range(opts.warmup + max(opts.repeats, 1)):
                step = engine.prefill(b, n)
                if step is not None and i >= opts.warmup:
                    samples.append(step.seconds)
            return typical(samples) if samples else None
        steps: list[StepTime] = engine.decode(b, n, self.decode_steps)[opts.warmup :]
        if not steps:
            return None
        for s in steps:
            if s.model_seconds is not None:
                overhead.setdefault(b, []).append(max(s.seconds - s.model_seconds, 0.0))
        return typical([s.seconds for s in steps])

    def _fits(self, engine: VllmEngine, phase: Phase, b: int, n: int) -> bool:
        if b > self.options.max_batch:
            return False
        if phase == "encode":
            return b * n <= self.max_tokens and n < self.max_length
        need = b * (n + self.decode_steps)
        room = engine.kv_capacity_tokens
        return n + self.decode_steps <= self.max_length and (room == 0 or need <= 0.9 * room)

    @staticmethod
    def _guess(raw: _Raw, phase: Phase, b: int, n: int) -> float:
        """A guess at the step's seconds from the nearest smaller measured point."""
        below = [(bb, nn, t) for (bb, nn), t in raw.measured.items() if bb <= b and nn <= n]
        if not below:
            return 0.0
        bb, nn, t = max(below, key=lambda p: p[0] * p[1])
        if phase == "encode":
            return t * (b * n) / (bb * nn)
        return t * (b / bb) * math.sqrt(n / nn)

    def _cost(self, phase: Phase, step: float) -> float:
        """Seconds measuring a point costs: its timed and untimed steps (decode: twice
        that, for the prompts' prefill and the steps the scheduler mixes)."""
        opts = self.options
        if phase == "encode":
            return (opts.warmup + max(opts.repeats, 1)) * step
        return 2 * (self.decode_steps + 1) * step

    def _grid(
        self,
        engine: VllmEngine,
        phase: Phase,
        tp: int,
        seconds: float,
        overhead: dict[int, list[float]],
    ) -> _Raw:
        opts = self.options
        b_levels = grid_levels(1, opts.max_batch, opts.midpoints)
        # a request's prompt and its output tokens fit in the model's length
        longest = self.max_length - (self.decode_steps if phase == "decode" else 1)
        n_levels = length_levels(max(longest, 2), opts.midpoints)
        depth = max(len(b_levels), len(n_levels))
        b_levels += [b_levels[-1]] * (depth - len(b_levels))
        n_levels += [n_levels[-1]] * (depth - len(n_levels))
        stop = min(time.monotonic() + seconds, self._deadline)
        raw = _Raw()
        for bs, ns in zip(b_levels, n_levels, strict=True):
            points = sorted(
                ((b, n) for b in bs for n in ns if (b, n) not in raw.measured),
                key=lambda p: p[0] * p[1],
            )
            reached = True
            for b, n in points:
                if not self._fits(engine, phase, b, n):
                    continue
                guess = self._cost(phase, self._guess(raw, phase, b, n))
                if raw.measured and time.monotonic() + guess > stop:
                    reached = False
                    continue
                t = self._point(engine, phase, b, n, overhead)
                if t is not None:
                    raw.measured[(b, n)] = t
                    raw.passes[(b, n)] = [t]
            raw.axes = (bs, ns)
            if reached:
                raw.complete = (bs, ns)
            if not reached or time.monotonic() > stop:
                break
        self._more_passes(engine, phase, raw, stop, overhead)
        if not raw.measured:
            raise ProfilerError(
                f"no {phase} step of {self.arch.name} could be timed at TP {tp} within the "
                "budget: raise --max-seconds"
            )
        inside = len(raw.measured)
        total = len(raw.axes[0]) * len(raw.axes[1])
        self.log(f"  {phase} TP {tp}: measured {inside} of {total} points")
        self._notes.append(f"{phase} tp{tp}: {inside}/{total} points measured")
        return raw

    def _more_passes(
        self,
        engine: VllmEngine,
        phase: Phase,
        raw: _Raw,
        stop: float,
        overhead: dict[int, list[float]],
    ) -> None:
        """Time the measured points again, in a scrambled order, while the budget
        allows (``options.passes``, else 3 on the CPU, 1 on a GPU); each keeps its
        :func:`typical` time over its passes, so a pass that other load slowed is
        dropped."""
        passes = self.options.passes or (1 if self.cuda else 3)
        order = sorted(raw.measured, key=lambda p: (p[0] * 7919 + p[1] * 104729) % 1009)
        for _ in range(passes - 1):
            for point in order:
                if time.monotonic() + self._cost(phase, raw.measured[point]) > stop:
                    return
                t = self._point(engine, phase, *point, overhead)
                if t is not None:
                    raw.passes[point].append(t)
                    raw.measured[point] = typical(raw.passes[point])

    def _head(self, engine: VllmEngine, tokens_axis: Sequence[int]) -> Curve:
        repeats = max(self.options.repeats, 3)
        seconds = [engine.head(m, repeats) for m in tokens_axis]
        return Curve(x=[float(m) for m in tokens_axis], seconds=seconds)

    # -- from steps to the profile's tables --------------------------------------------
    def _layer_table(
        self, raw: _Raw, phase: Phase, tp: int, head: Curve, engine: Curve | None, comm: Comm
    ) -> Grid:
        layers = self.arch.decode_layers
        elem = DTYPE_BYTES[self.dtype]
        hidden = self.arch.hidden_size

        def rest(b: int, n: int) -> float:
            tokens = b * n if phase == "encode" else b
            other = head.at(b) + (engine.at(b) if engine is not None else 0.0)
            return other + 2 * layers * comm.all_reduce_at(tp, tokens * hidden * elem)

        def per_layer(b: int, n: int, step: float) -> float:
            return max(step - rest(b, n), MIN_LAYER_SHARE * step) / layers

        measured = {p: per_layer(*p, t) for p, t in raw.measured.items()}
        coarse = None
        if raw.complete is not None and raw.complete != raw.axes:
            cb, cn = raw.complete
            inside = {p: t for p, t in measured.items() if p[0] in cb and p[1] in cn}
            if inside:
                coarse = fill_grid(cb, cn, inside, None)
        grid = fill_grid(raw.axes[0], raw.axes[1], measured, coarse)
        if phase == "decode":
            grid = affine_in_length(grid, measured)
        return non_decreasing_in_batch(grid, rest, layers, MIN_LAYER_SHARE)

    def _engine_curve(self, overhead: dict[int, list[float]]) -> Curve | None:
        batches = sorted(b for b, v in overhead.items() if v)
        if not batches:
            return None
        medians = [statistics.median(overhead[b]) for b in batches]
        seconds = affine_in_batch(batches, medians)
        self._notes.append(
            f"engine {1e6 * seconds[0]:.0f} us per step at batch {batches[0]}, "
            f"{1e6 * seconds[-1]:.0f} us at {batches[-1]}"
        )
        return Curve(x=[float(b) for b in batches], seconds=seconds)

    # -- the whole profile -------------------------------------------------------------
    def run(self) -> Profile:
        opts = self.options
        start = time.monotonic()
        self._deadline = start + opts.max_seconds
        self._version = vllm_version()
        self.log(
            f"profiling vLLM {self._version} steps of {self.arch.name} ({self.dtype}) on "
            f"{self._device_label()}: TP {self.degrees}, budget {opts.max_seconds:g} s"
        )
        comm, comm_notes = self.base.communication(min(COMM_SECONDS, opts.max_seconds / 10))
        self._notes += comm_notes
        head_axis = sorted({*grid_levels(1, opts.max_batch, False)[-1]})
        tables: dict[int, PhaseTables] = {}
        points: dict[str, list[tuple[int, int]]] = {}
        engine_curve: Curve | None = None
        with tempfile.TemporaryDirectory(prefix="exegpt-vllm-") as tmp:
            model_dir = self.weights or write_model_dir(self.config, Path(tmp), self.dtype)
            for index, tp in enumerate(self.degrees):
                engine = self._engine(tp, model_dir)
                try:
                    head = self._head(engine, head_axis)
                    share = max(self._budget_left(), 0.0) / (len(self.degrees) - index)
                    overhead: dict[int, list[float]] = {}
                    enc = self._grid(engine, "encode", tp, share * 0.4, overhead)
                    share = max(self._budget_left(), 0.0) / (len(self.degrees) - index)
                    dec = self._grid(engine, "decode", tp, share, overhead)
                finally:
                    if tp not in self._given:
                        engine.close()
                if tp == 1:
                    engine_curve = self._engine_curve(overhead)
                tables[tp] = PhaseTables(
                    encode=self._layer_table(enc, "encode", tp, head, engine_curve, comm),
                    decode=self._layer_table(dec, "decode", tp, head, engine_curve, comm),
                    head=head,
                )
                points[f"encode/tp{tp}"] = sorted(enc.measured)
                points[f"decode/tp{tp}"] = sorted(dec.measured)
        elapsed = time.monotonic() - start
        self._notes.append(f"{elapsed:.0f} s; vLLM {self._version}, torch {torch.__version__}")
        weights = f"weights from {self.weights}" if self.weights else "random weights"
        provenance = Provenance(
            model=self.arch.name,
            architecture=self.arch,
            gpu_type=self.base.gpu_type,
            dtype=self.dtype,
            source="measured",
            profiler_version=VLLM_PROFILER_VERSION,
            created_at=datetime.now(UTC),
            host=f"{socket.gethostname()} ({self._device_label()})",
            notes=f"XProfiler for vLLM, {weights}; " + "; ".join(self._notes),
            engine="vLLM",
            engine_version=self._version,
            measured_points=points,
        )
        return Profile(
            provenance=provenance,
            tensor_parallel=tables,
            comm=comm,
            memory=analytic.memory_profile(self.arch, self.dtype),
            engine=EngineOverhead(step=engine_curve) if engine_curve is not None else None,
        )

    def _device_label(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.base.device)
        return f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
