"""The machine's speed against a profile, read while a configuration runs.

On a shared machine the same step of the same model drifts by 5 to 20 % within a minute
(CPU frequency, other tenants, caches). A profile is a snapshot: the bench measures one
right before each configuration, yet the configuration's Poisson run, a minute later,
may meet a machine faster or slower than the one the tables priced, and a p99 of waits
multiplies that difference (a step 5 % slower than priced took a Static replay's e2e
p99 8 to 20 % under the measured one in the bench's diagnostics).

A :class:`SpeedProbe` times whole decode steps of the bench model at a few shapes, as
the XProfiler times its decode table's points, right before and right after the Poisson
run; :func:`speed_ratio` sets them against the profile's price for the same steps. The
bench reports those ratios, and beside its prediction (from the profile as measured) a
replay with every timing scaled to the speed the probe read (:func:`at_speed`). The
prediction error the bench judges stays the first: the probe says how much of it the
machine's own drift explains.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from exegpt.planner.architecture import Architecture
from exegpt.planner.profile import Curve, EngineOverhead, Grid, PhaseTables, Profile
from exegpt.runner.config import ModelConfig
from exegpt.runner.profiler import ProfileOptions, XProfiler

from .device import BenchDevice

PROBE_POINTS: tuple[tuple[int, int], ...] = ((1, 64), (4, 64), (8, 64))  # (batch, context)
# The bench's requests hold at most 194 + 239 tokens: its profiles stop at 512 (a GPU
# model's 4096 would spend the budget, and the memory, on lengths it never serves).
BENCH_MAX_LENGTH = 512


def bench_profiler(
    architecture: Architecture,
    *,
    seconds: float,
    midpoints: bool,
    passes: int,
    log: Callable[[str], None] = lambda _m: None,
    device: BenchDevice | None = None,
) -> XProfiler:
    """The XProfiler the bench runs on ``device`` (default: this CPU, one thread,
    float32), batches up to 64."""
    device = device or BenchDevice.cpu()
    options = ProfileOptions(
        max_batch=64, max_length=min(architecture.max_positions, BENCH_MAX_LENGTH),
        max_seconds=seconds, warmup=1, repeats=3, midpoints=midpoints, min_point_seconds=0.03,
        passes=passes,
    )  # fmt: skip
    return XProfiler(
        ModelConfig.from_architecture(architecture), gpu_type=device.gpu.name,
        dtype=device.dtype, device=device.kind, options=options, log=log, check_gpu=False,
    )  # fmt: skip


@dataclass(frozen=True)
class SpeedProbe:
    """Whole decode steps of ``architecture`` at ``points`` (batch, context), timed as
    the bench's XProfiler times its decode table (``passes`` passes each). Picklable:
    a multi-process replica's driving rank builds its own model."""

    architecture: Architecture
    passes: int
    points: tuple[tuple[int, int], ...] = PROBE_POINTS
    device: BenchDevice = field(default_factory=BenchDevice.cpu)

    def _profiler(self) -> XProfiler:
        return bench_profiler(
            self.architecture, seconds=1.0, midpoints=False, passes=self.passes, device=self.device
        )

    def _times_whole(self, profiler: XProfiler) -> bool:
        return profiler.copies == self.architecture.decode_layers

    @property
    def whole_model(self) -> bool:
        """Whether the profiler times the whole model (its chain of layers is every
        layer): only then is its step the one the profile prices."""
        return self._times_whole(self._profiler())

    def measure(self) -> tuple[float, ...]:
        """Seconds of each point's step, now (about half a second for the bench model)."""
        profiler = self._profiler()
        if not self._times_whole(profiler):
            raise ValueError(
                f"the probe times the whole model, but the profiler times {profiler.copies} "
                f"of {self.architecture.name}'s {self.architecture.decode_layers} layers"
            )
        return tuple(profiler.time_decode_step(b, n) for b, n in self.points)


def priced(profile: Profile, points: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """The profile's price of a whole decode step (every layer, the head) at each point,
    without what serving adds (the ``engine`` curve)."""
    layers = profile.architecture.decode_layers
    return tuple(layers * profile.decode_layer(1, b, n) + profile.head(1, b) for b, n in points)


def speed_ratio(measured: Sequence[float], prices: Sequence[float]) -> float:
    """The median over the points of measured / priced: above 1, the machine is slower
    than the profile's tables."""
    if len(measured) != len(prices) or not measured:
        raise ValueError("one measured time per priced point, at least one")
    return statistics.median(m / p for m, p in zip(measured, prices, strict=True))


def _curve(c: Curve, factor: float) -> Curve:
    return Curve(x=c.x, seconds=[factor * s for s in c.seconds])


def _grid(g: Grid, factor: float) -> Grid:
    return Grid(
        batch=g.batch, length=g.length, seconds=[[factor * s for s in r] for r in g.seconds]
    )


def at_speed(profile: Profile, factor: float) -> Profile:
    """``profile`` on a machine ``factor`` times as slow: every compute table and what the
    engine adds (to a step, a request, a hand-over and a join) scaled (communication kept
    as it is)."""
    if factor <= 0:
        raise ValueError(f"factor must be positive, got {factor}")
    tables = {
        tp: PhaseTables(
            encode=_grid(t.encode, factor),
            decode=_grid(t.decode, factor),
            head=_curve(t.head, factor),
        )
        for tp, t in profile.tensor_parallel.items()
    }
    engine = (
        EngineOverhead(
            step=_curve(profile.engine.step, factor),
            request_s=profile.engine.request_s * factor,
            handover_s=profile.engine.handover_s * factor,
            join_s=profile.engine.join_s * factor,
        )
        if profile.engine
        else None
    )
    return Profile(**{**profile.__dict__, "tensor_parallel": tables, "engine": engine})
