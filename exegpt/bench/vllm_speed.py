"""The machine's speed against a row's profile, read on the row's own servers right
before its load starts and right after it ends.

A shared machine's speed moves by 10 to 40 % within minutes and hours (other tenants,
the CPU's clock): the same configuration served twice in one run of the bench moved its
throughput by up to 20 % and its p99-length latency by up to 28 %, and a profile
measured two hours earlier priced the steps of the same servers 25 % slow. A profile
measured at the start of a 30-minute run then prices a row served 20 minutes later at
the machine's speed of 20 minutes before, and the row's error is the machine's drift
as much as the simulator's.

Nor does the model's step alone say how fast a server runs: when the machine sped up,
the in-process engine's decode steps took 0.6x their profiled time while the servers'
steps took 0.8x (the server's processes and the client share the two cores, and their
share did not shrink with the model's). So the speed is read where the row runs: once
the row's servers are up and warm, one request of ``PROMPT_TOKENS`` prompt tokens and
``OUTPUT_TOKENS`` output tokens is served alone, ``REPEATS`` times after one untimed
run, and its decode step
(first token to last, as ``vllm_overhead.decode_step`` times the server's overhead) is
set against the row's profile's price of that step (the model's decode step at batch 1
through the row's decode stages, with what serving adds). :func:`Reading.factor` above
1: the machine is slower than profiled.

The row is predicted from its profile at that speed (``exegpt.bench.speed.at_speed``:
every compute table and the engine curve scaled), a prediction made before the row's
load runs, as ``exegpt bench runner`` profiles again right before each configuration;
the prediction from the profile as measured at the start stays in the report beside
it, and the reading after the load says how far the machine moved while the row ran.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from exegpt.bench.openai_load import Client, Request
from exegpt.bench.vllm_overhead import OUTPUT_TOKENS, PROMPT_TOKENS, decode_step

REPEATS = 5  # the request served alone this many times (after one untimed); the median kept
CONTEXT = PROMPT_TOKENS + OUTPUT_TOKENS // 2  # the mean context of its decode steps


@dataclass(frozen=True)
class Reading:
    """One reading: the server's decode step of one request alone (median seconds over
    the repeats), and the row's profile's price of it."""

    seconds: float
    priced: float

    @property
    def factor(self) -> float:
        """How many times as slow as profiled the machine is now."""
        return self.seconds / self.priced


def read_speed(
    client: Client,
    price: float,
    rng: np.random.Generator,
    vocab: int,
    repeats: int = REPEATS,
) -> Reading:
    """Serve one request alone ``repeats`` times through ``client``; its decode step
    beside ``price`` (the profile's step at batch 1 and context ``CONTEXT``)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if price <= 0:
        raise ValueError(f"the priced step must be positive, got {price}")
    steps = []
    for i in range(repeats + 1):  # the first, untimed: a server's first long request is slow
        prompt = tuple(int(t) for t in rng.integers(3, vocab, PROMPT_TOKENS))
        timed = client.closed_loop([Request(prompt, OUTPUT_TOKENS, int(rng.integers(0, 2**31)))], 1)
        if i:
            steps.append(decode_step(timed))
    return Reading(statistics.median(steps), price)


def speed_fields(before: Reading, after: Reading | None) -> dict[str, float | None]:
    """A row's readings for the report: the factor before (the one its prediction is
    priced at) and after, and how far the machine moved while the row's load ran
    (per cent)."""
    moved = None if after is None else 100.0 * (after.factor / before.factor - 1.0)
    return {
        "step_before_s": before.seconds,
        "step_after_s": None if after is None else after.seconds,
        "priced_step_s": before.priced,
        "factor_before": before.factor,
        "factor_after": None if after is None else after.factor,
        "moved_pct": moved,
    }
