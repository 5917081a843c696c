"""The decode steps of a static batch on an engine that frees each sequence as it
finishes (vLLM): how many steps the batch runs, and how many sequences each holds.

A batch of ``B`` queries decodes until its longest output ends. At decode step ``t``
(1-based) a query still runs when its decode length ``d >= t``: probability
``S(t) = P(d >= t)``, so ``B x S(t)`` sequences in expectation. The batch runs step
``t`` when any of its queries does, ``R(t) = 1 - (1 - S(t))^B``, and then holds
``B x S(t) / R(t)`` sequences, each at context ``E[input] + t``. Summed over the steps,
``sum R(t)`` is the expected longest decode length (the own engine's step count) and
``sum B x S(t)`` the batch's ``B x E[d]`` decodes.

Steps are priced in at most ``STEP_NODES`` segments of equal expected step count, each
at its mean running batch and its sequences' mean context; a batch whose longest
possible output is that many steps or fewer is priced step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .moments import Moments
from .querylog import FloatArray

STEP_NODES = 16
"""Segments the decode steps of a shrinking static batch are priced over (against
pricing every step: within 2e-4 on the paper's five workloads at batches 2 to 128)."""


@dataclass(frozen=True)
class ShrinkingSteps:
    """Segments of a static batch's decode steps: ``steps[i]`` expected steps, each of
    ``running[i]`` sequences at mean context ``context[i]``."""

    steps: FloatArray
    running: FloatArray
    context: FloatArray


def still_running(m: Moments) -> FloatArray:
    """``S(t) = P(d >= t)`` for decode steps ``t = 1 .. max d`` (index ``t - 1``)."""
    lengths = np.arange(1, m.output.max + 1)
    steps = lengths if m.encoder_decoder else lengths - 1
    pmf = np.bincount(steps, weights=m.output.pmf, minlength=m.output.max + 1)
    # P(d >= t) = 1 - P(d <= t - 1)
    return np.clip(1.0 - np.cumsum(pmf)[:-1], 0.0, 1.0)


def shrinking_steps(m: Moments, batch: int) -> ShrinkingSteps:
    """The decode steps of a static batch of ``batch`` queries, in segments, until its
    longest output ends (see the module)."""
    s = still_running(m)
    runs = 1.0 - (1.0 - s) ** batch
    context = m.mean_input + np.arange(1, s.size + 1, dtype=np.float64)
    return _segments(runs, batch * s, s, context)


def steps_of_a_query(m: Moments, batch: int, decode_steps: float) -> ShrinkingSteps:
    """The first ``decode_steps`` steps of a static batch of ``batch`` queries, each of
    which runs (a query of that decode length is in the batch), at the sequences the
    batch holds while it runs (``B x S(t) / R(t)``): the steps the latency is priced at."""
    s = still_running(m)
    n = min(round(decode_steps), s.size)
    s = s[:n]
    runs = 1.0 - (1.0 - s) ** batch
    running = np.divide(batch * s, runs, out=np.ones(n), where=runs > 0)
    context = m.mean_input + np.arange(1, n + 1, dtype=np.float64)
    return _segments(np.ones(n), running, np.maximum(s, 1e-300), context)


def _segments(
    runs: FloatArray, work: FloatArray, weight: FloatArray, context: FloatArray
) -> ShrinkingSteps:
    """Group consecutive steps into at most ``STEP_NODES`` segments of near-equal
    expected step count: ``runs`` steps per step, ``work`` sequence-steps per step,
    ``context`` averaged over ``weight`` (the running sequences)."""
    keep = runs > 0
    runs, work, weight, context = runs[keep], work[keep], weight[keep], context[keep]
    if runs.size == 0:
        empty = np.zeros(0)
        return ShrinkingSteps(steps=empty, running=empty, context=empty)
    if runs.size <= STEP_NODES:
        which = np.arange(runs.size)
    else:
        cum = np.cumsum(runs)
        share = (cum - runs / 2) / cum[-1] * STEP_NODES
        which = np.minimum(share.astype(np.int64), STEP_NODES - 1)
    steps: FloatArray = np.bincount(which, weights=runs, minlength=STEP_NODES).astype(np.float64)
    total = np.bincount(which, weights=work, minlength=STEP_NODES)
    w = np.bincount(which, weights=weight, minlength=STEP_NODES)
    ctx = np.bincount(which, weights=weight * context, minlength=STEP_NODES)
    used = steps > 0
    return ShrinkingSteps(
        steps=steps[used],
        running=total[used] / steps[used],
        context=ctx[used] / w[used],
    )
