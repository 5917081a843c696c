"""What vLLM's OpenAI server adds to each engine step, measured through a server, and put
into the profile's ``engine`` curve (what serving adds to a step beyond the model's
step), so that the plan and every prediction price the steps as the server runs them.

The XProfiler for vLLM times steps of an engine whose core and model run in its own
process. A server started as the operator starts one runs three processes: the API
server (HTTP, detokenising and streaming every token of every request), the engine
core (the scheduler) and a worker running the model (the multiprocessing executor),
which exchange every step's batch and tokens; here they share the machine's cores
with the client. None of that is in the profile's steps.

A stock vLLM server (the operator's arguments for a Continuous configuration of
``max_num_seqs`` the largest batch measured) is sent ``batch`` streamed requests at
once, every one of the same prompt and output length, so that all but the first step
decode exactly ``batch`` sequences; the engine's step counter (``/metrics``) gives the
steps, and the client the wall time from the first request sent to the last token.
The server's seconds per step less the profile's model step at that batch and mean
context (its step without its ``engine`` curve) is what serving adds; the least of
``repeats`` runs at each batch (as the profile keeps the least of its timings on the
CPU), fitted to a line in the batch, replaces the profile's ``engine`` curve.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exegpt.bench.openai_load import Client, Request
from exegpt.bench.vllm_servers import read_counters, serve
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.profile import Curve, EngineOverhead, Profile
from exegpt.runner.profiler import affine_in_batch
from exegpt.runner.vllm_profiler import step_prediction

PROMPT_TOKENS = 32
OUTPUT_TOKENS = 96


@dataclass(frozen=True)
class Point:
    """One batch: the server's seconds per step, the profile's model step, and what
    serving added (their difference)."""

    batch: int
    steps: float
    server_step_s: float
    model_step_s: float

    @property
    def overhead_s(self) -> float:
        return self.server_step_s - self.model_step_s


def model_step(profile: Profile, batch: int, context: int) -> float:
    """The profile's decode step at ``batch`` and ``context`` without its engine curve:
    the model's part of the step."""
    whole = step_prediction(profile, 1, "decode", batch, context)
    return whole - (profile.engine.step.at(batch) if profile.engine is not None else 0.0)


def with_overhead(profile: Profile, points: Sequence[Point]) -> Profile:
    """``profile`` with its engine curve replaced by the line through ``points``."""
    ordered = sorted(points, key=lambda p: p.batch)
    batches = [p.batch for p in ordered]
    seconds = affine_in_batch(batches, [p.overhead_s for p in ordered])
    engine = EngineOverhead(step=Curve(x=[float(b) for b in batches], seconds=seconds))
    note = (
        f"engine curve measured through vLLM's OpenAI server: {1e3 * seconds[0]:.2f} ms per "
        f"step at batch {batches[0]}, {1e3 * seconds[-1]:.2f} ms at {batches[-1]}"
    )
    notes = "; ".join(x for x in (profile.provenance.notes, note) if x)
    provenance = profile.provenance.model_copy(update={"notes": notes})
    return profile.model_copy(update={"engine": engine, "provenance": provenance})


def measure_overhead(
    profile: Profile,
    template: Plan,
    model_dir: Path,
    max_input: int,
    max_output: int,
    workdir: Path,
    environment: Mapping[str, str],
    batches: Sequence[int],
    repeats: int,
    rng: np.random.Generator,
) -> tuple[list[Point], float]:
    """The server's step at each of ``batches`` (a stock server of the largest), and the
    seconds the measurement took (the server's start included)."""
    start = time.monotonic()
    config = ExecutionConfig(strategy="Continuous", decode_batch=max(batches))
    plan = template.model_copy(update={"strategy": "Continuous", "config": config})
    vocab = profile.architecture.vocab_size
    context = PROMPT_TOKENS + OUTPUT_TOKENS // 2
    points = []
    workdir.mkdir(parents=True, exist_ok=True)
    with serve(plan, model_dir, max_input, max_output, workdir, environment) as s:
        client = Client(s.url, "bench")
        client.warm()
        for b in batches:
            best: tuple[float, float] | None = None
            for _ in range(repeats):
                reqs = [
                    Request(
                        tuple(int(t) for t in rng.integers(3, vocab, PROMPT_TOKENS)),
                        OUTPUT_TOKENS,
                        int(rng.integers(0, 2**31)),
                    )
                    for _ in range(b)
                ]
                before = read_counters(s.engines)["steps"]
                t0 = time.monotonic()
                timed = client.closed_loop(reqs, b)
                wall = max(t.last_token for t in timed) - t0
                steps = read_counters(s.engines)["steps"] - before
                if steps > 0 and (best is None or wall / steps < best[0] / best[1]):
                    best = (wall, steps)
            if best is not None:
                points.append(Point(b, best[1], best[0] / best[1], model_step(profile, b, context)))
    return points, time.monotonic() - start


def describe(points: Sequence[Point]) -> list[dict[str, Any]]:
    return [
        {
            "batch": p.batch,
            "steps": p.steps,
            "server_step_s": p.server_step_s,
            "model_step_s": p.model_step_s,
            "overhead_s": p.overhead_s,
        }
        for p in points
    ]
