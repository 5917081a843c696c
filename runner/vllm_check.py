"""Whole vLLM steps timed directly against what a profile predicts for them.

A step at a point off the profile's grid is timed in rounds interleaved with a step at
a measured grid point beside it. The grid step's time now, over the profile's
prediction of it (which is its measured time), is the machine's drift since the
profile was measured (on a shared machine other work comes and goes): the error is the
prediction scaled by that drift against the measured time, and the raw error and the
drift are kept beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from exegpt.planner.profile import Profile

from .vllm_profiler import Phase, step_prediction
from .vllm_steps import VllmEngine, typical

# the steps a point is timed over in one round (after one untimed)
PREFILL_STEPS = 3
DECODE_STEPS = 8


@dataclass(frozen=True)
class StepCase:
    """A step to check, at (batch, length), and the measured grid point beside it."""

    phase: Phase
    batch: int
    length: int
    beside: tuple[int, int]


@dataclass(frozen=True)
class StepCheck:
    case: StepCase
    measured_s: float  # typical over the rounds
    predicted_s: float  # the profile's prediction
    drift: float  # the grid point's time now over the profile's

    @property
    def raw_error(self) -> float:
        return self.predicted_s / self.measured_s - 1

    @property
    def error(self) -> float:
        """The prediction scaled by the drift, against the measured time."""
        return self.predicted_s * self.drift / self.measured_s - 1

    def describe(self) -> str:
        c = self.case
        return (
            f"{c.phase} b={c.batch} n={c.length}: measured {self.measured_s * 1e3:.2f} ms, "
            f"predicted {self.predicted_s * 1e3:.2f} ms (raw {100 * self.raw_error:+.1f} %, "
            f"drift {100 * (self.drift - 1):+.1f} %, error {100 * self.error:+.1f} %)"
        )


def time_step(engine: VllmEngine, phase: Phase, batch: int, length: int) -> float:
    """A whole step timed directly: the :func:`typical` of a few, after one untimed."""
    if phase == "encode":
        steps = [engine.prefill(batch, length) for _ in range(PREFILL_STEPS + 1)]
        times = [s.seconds for s in steps[1:] if s is not None]
    else:
        times = [s.seconds for s in engine.decode(batch, length, DECODE_STEPS + 1)[1:]]
    if not times:
        raise ValueError(f"no {phase} step of batch {batch}, length {length} could be timed")
    return typical(times)


def check_steps(
    engine: VllmEngine, profile: Profile, cases: Sequence[StepCase], rounds: int = 3, tp: int = 1
) -> list[StepCheck]:
    """Each case timed in ``rounds`` rounds, interleaved with its grid point."""
    times: dict[StepCase, list[tuple[float, float]]] = {c: [] for c in cases}
    for _ in range(rounds):
        for c in cases:
            here = time_step(engine, c.phase, c.batch, c.length)
            beside = time_step(engine, c.phase, *c.beside)
            times[c].append((here, beside))
    out = []
    for c in cases:
        grid_now = typical([b for _, b in times[c]])
        grid_then = step_prediction(profile, tp, c.phase, *c.beside)
        out.append(
            StepCheck(
                case=c,
                measured_s=typical([h for h, _ in times[c]]),
                predicted_s=step_prediction(profile, tp, c.phase, c.batch, c.length),
                drift=grid_now / grid_then,
            )
        )
    return out


def off_grid_cases(profile: Profile, tp: int = 1, per_phase: int = 2) -> list[StepCase]:
    """Points between the measured points of the profile's grid (about the middle of a
    cell, in the upper part of its batches and lengths), each with the measured grid
    point above it."""
    cases: list[StepCase] = []
    measured = profile.provenance.measured_points
    for phase in ("encode", "decode"):
        points = sorted(measured.get(f"{phase}/tp{tp}", []), key=lambda p: p[0] * p[1])
        batches = sorted({b for b, _ in points})
        lengths = sorted({n for _, n in points if n > 1})
        cells = [
            (b0, b1, n0, n1)
            for b0, b1 in pairwise(batches)
            for n0, n1 in pairwise(lengths)
            if (b1, n1) in points and b1 - b0 >= 2 and n1 - n0 >= 2
        ]
        cells.sort(key=lambda c: c[1] * c[3])
        step = max(len(cells) // (per_phase + 1), 1)
        for b0, b1, n0, n1 in cells[step::step][:per_phase]:
            cases.append(StepCase(phase, (b0 + b1) // 2 + (b1 - b0) // 4, (n0 + n1) // 2, (b1, n1)))
    return cases
