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
once, every one of the same prompt and output length, so that after their prefill
every step decodes exactly ``batch`` sequences. A request's decode steps are the time
from its first token to its last over its ``OUTPUT_TOKENS - 1`` decoded tokens (the
median over the batch's requests): the connections' set-up and the prefill step are
not spread over the decode steps (the prefill is priced from the profile's encoding;
``CostModel.mixed_iteration``). The server's decode step less the profile's model step
at that batch and mean context (its step without its ``engine`` curve) is what serving
adds; the median of ``repeats`` runs at each batch (as the profile keeps the median of
its timings; the batches taken in turn, ``probe_order``), made non-decreasing in the
batch and joined point to point (``with_overhead``), replaces the profile's ``engine``
curve. The engine's step counter (``/metrics``) is kept beside, as a check
that the batch decoded together.

A server of another shape adds something else to a step: a pipeline's engine core
hands every step to two workers and waits for both; a WorkloadAware pair runs two
servers and a router. Here all of them share the machine's cores with the model, so
``exegpt bench vllm`` measures the shape of each such row the same way: a server of two
stages under the ExeGPT schedule, which fills its pipeline with two batches of
``batch`` sequences in flight as the row's schedule does (a request's decode step is
then one iteration of both; the model's iteration is ``CostModel.iteration`` at two
micro-batches, and what serving adds is charged once per stage and micro-batch, as the
cost model charges the engine curve), and a WorkloadAware pair whose decode server's
steps are timed through the router.

A WorkloadAware pair also pays for every request it hands over, on the decode server's
steps: the prompt's KV cache taken in, its last token computed, and here the prefill
server's and the router's work for the request on the same cores. Its probe therefore
also runs requests that join and leave (``handover_cost``): closed loops of
``batch + 2`` requests in flight over a decode batch of ``batch``, with long outputs
and with short ones, in turn; the short ones join four times as often, and the
difference of their decode steps (each less the model's step at its batch and context)
per join is what a hand-over costs (the profile's ``engine.handover_s``).

The stock server's probe runs the same two loads at a decode batch of ``JOIN_BATCH``
(nothing spare in flight: a stock server decodes every request it has). There the
difference per join is the joining prompt's encoding, which the profile prices, and
the server's admission of the request (its input processing, the scheduler taking it
in, its output's set-up, on the cores the model's steps run on), which it did not:
less the first, it is what a join costs (``join_cost``; the profile's
``engine.join_s``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exegpt.bench.openai_load import Client, Request, Timed
from exegpt.bench.vllm_servers import read_counters, serve
from exegpt.planner.isotonic import non_decreasing
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.profile import Curve, EngineOverhead, Profile
from exegpt.runner.vllm_profiler import step_prediction

PROMPT_TOKENS = 32
OUTPUT_TOKENS = 96

# requests in flight beyond a WorkloadAware decode batch in its hand-over probe's loads
HANDOVER_SPARE = 2
# the decode batch of the loads that read what a join costs a stock server
JOIN_BATCH = 8


@dataclass(frozen=True)
class Point:
    """One batch: the server's seconds per step, the profile's model step (through every
    stage of the server's pipeline), and what serving added to each stage's step (their
    difference over the ``stages`` the step passed)."""

    batch: int
    steps: float
    server_step_s: float
    model_step_s: float
    stages: int = 1
    request_e2e_s: float = math.nan  # a request's end-to-end latency (median), as sent

    @property
    def overhead_s(self) -> float:
        return (self.server_step_s - self.model_step_s) / self.stages


def random_prompt(rng: np.random.Generator, vocab: int) -> tuple[int, ...]:
    """``PROMPT_TOKENS`` random prompt tokens (the three special tokens left out)."""
    return tuple(int(t) for t in rng.integers(3, vocab, PROMPT_TOKENS))


def probe_requests(n: int, rng: np.random.Generator, vocab: int) -> list[Request]:
    """``n`` requests of ``PROMPT_TOKENS`` random prompt tokens and ``OUTPUT_TOKENS``
    output tokens, each with its own seed."""
    return [
        Request(random_prompt(rng, vocab), OUTPUT_TOKENS, int(rng.integers(0, 2**31)))
        for _ in range(n)
    ]


def decode_step(timed: Sequence[Timed]) -> float:
    """Seconds per decode step of requests of ``OUTPUT_TOKENS`` tokens decoded
    together: the median over requests of first token to last token over the tokens
    decoded after the first."""
    return statistics.median((t.last_token - t.first_token) / (t.output_tokens - 1) for t in timed)


def model_step(profile: Profile, batch: int, context: int) -> float:
    """The profile's decode step at ``batch`` and ``context`` without its engine curve:
    the model's part of the step."""
    whole = step_prediction(profile, 1, "decode", batch, context)
    return whole - (profile.engine.step.at(batch) if profile.engine is not None else 0.0)


def with_overhead(profile: Profile, points: Sequence[Point]) -> Profile:
    """``profile`` with its engine curve replaced by the piecewise-linear curve through
    ``points`` (never below zero, never falling as the batch grows: ``non_decreasing``;
    linear beyond the first and last batch). Not a line
    fitted through them: what serving adds is not linear in the batch (here 0.65, 1.56,
    1.60 and 6.71 ms at batches 1, 8, 32 and 96), and a line that the largest batch
    pulls priced the small batches' steps, where a tight bound's configurations run,
    about 10 % short."""
    ordered = sorted(points, key=lambda p: p.batch)
    batches = [p.batch for p in ordered]
    # a measured batch below a smaller one is the machine's drift between the two
    # measurements (at batch 4: 0.28 to 1.54 ms over the runs of 5 December, each a
    # fraction of a second long), which priced the configurations near it short or long
    seconds = non_decreasing([max(p.overhead_s, 0.0) for p in ordered])
    curve = Curve(x=[float(b) for b in batches], seconds=seconds)
    # what the engine adds to a request, a hand-over or a join stays as it was
    engine = (
        profile.engine.model_copy(update={"step": curve})
        if profile.engine is not None
        else EngineOverhead(step=curve)
    )
    note = (
        f"engine curve measured through vLLM's OpenAI server: {1e3 * seconds[0]:.2f} ms per "
        f"step at batch {batches[0]}, {1e3 * seconds[-1]:.2f} ms at {batches[-1]}"
    )
    notes = "; ".join(x for x in (profile.provenance.notes, note) if x)
    provenance = profile.provenance.model_copy(update={"notes": notes})
    return profile.model_copy(update={"engine": engine, "provenance": provenance})


def measure_overhead(
    probe: Plan,
    price: Callable[[float, float], float],
    model_dir: Path,
    max_input: int,
    max_output: int,
    workdir: Path,
    environment: Mapping[str, str],
    batches: Sequence[int],
    repeats: int,
    rng: np.random.Generator,
    vocab: int,
    in_flight: int = 1,
    churn_batch: int | None = None,
    churn_spare: int = HANDOVER_SPARE,
) -> tuple[list[Point], float, list[tuple[Churn, Churn]]]:
    """The step of ``probe``'s servers at each of ``batches`` sequences per step (with
    ``in_flight`` batches in flight, as many times the requests), beside ``price`` (the
    model's step of such batches at a context through every stage of ``probe``'s
    pipeline, without the engine curve), and the seconds the measurement took (the
    servers' start included). With ``churn_batch``, also ``repeats`` pairs of loads
    that join and leave a decode batch of that size, ``churn_spare`` more in flight
    (short outputs, long outputs: ``churn``; ``handover_cost`` and ``join_cost`` read
    what a hand-over or a join costs from them)."""
    start = time.monotonic()
    context = PROMPT_TOKENS + OUTPUT_TOKENS // 2
    stages = probe.config.pipeline_stages
    points = []
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[int, list[tuple[float, float, float]]] = {b: [] for b in batches}
    loads: list[tuple[Churn, Churn]] = []
    with serve(probe, model_dir, max_input, max_output, workdir, environment) as s:
        client = Client(s.url, "bench")
        client.warm()
        for b in probe_order(batches, repeats):
            reqs = probe_requests(b * in_flight, rng, vocab)
            before = read_counters(s.engines)["steps"]
            timed = client.closed_loop(reqs, b * in_flight)
            steps = read_counters(s.engines)["steps"] - before
            e2e = statistics.median(t.finished - t.arrival for t in timed)
            runs[b].append((decode_step(timed), steps, e2e))
        if churn_batch is not None:
            b, spare = churn_batch, churn_spare
            for _ in range(repeats):
                short = churn_requests(24 * b, SHORT_OUTPUTS, rng, vocab)
                long = churn_requests(6 * b, LONG_OUTPUTS, rng, vocab)
                loads.append(
                    (churn(client, b, short, price, spare), churn(client, b, long, price, spare))
                )
    for b in batches:
        if runs[b]:
            # the run of the median step (the lower middle one of an even count): the
            # step a server takes as it serves, not its fastest (the profile's steps
            # are medians too)
            step_s, steps, _ = statistics.median_low(runs[b])
            request_s = statistics.median(r[2] for r in runs[b])
            points.append(Point(b, steps, step_s, price(b, context), stages, request_s))
    return points, time.monotonic() - start, loads


@dataclass(frozen=True)
class Churn:
    """A closed loop of requests joining and leaving a decode batch: the requests'
    decode step (median), the joins per step at a full batch, and the model's step at
    that batch and the loop's mean context (no engine curve)."""

    step_s: float
    joins_per_step: float
    model_step_s: float

    @property
    def residual_s(self) -> float:
        return self.step_s - self.model_step_s


# outputs of the hand-over probe's loads: long (as the lockstep probe's, spread) and
# short (a quarter of it), so that the short ones join four times as often
LONG_OUTPUTS = (OUTPUT_TOKENS // 2, OUTPUT_TOKENS * 3 // 2)
SHORT_OUTPUTS = (OUTPUT_TOKENS // 8, OUTPUT_TOKENS * 3 // 8)


def churn_requests(
    n: int, outputs: tuple[int, int], rng: np.random.Generator, vocab: int
) -> list[Request]:
    """``n`` requests of ``PROMPT_TOKENS`` random prompt tokens and outputs uniform over
    ``outputs`` (both ends included), each with its own seed."""
    lo, hi = outputs
    return [
        Request(
            random_prompt(rng, vocab), int(rng.integers(lo, hi + 1)), int(rng.integers(0, 2**31))
        )
        for _ in range(n)
    ]


def churn(
    client: Client,
    batch: int,
    reqs: Sequence[Request],
    price: Callable[[float, float], float],
    spare: int = HANDOVER_SPARE,
) -> Churn:
    """``reqs`` served as a closed loop of ``batch + spare`` in flight over a decode batch
    of ``batch`` (for a WorkloadAware pair, two extra keep it full while a request is
    handed over; a stock server decodes every request in flight, so none)."""
    timed = client.closed_loop(reqs, batch + spare)
    mean_output = statistics.fmean(r.max_tokens for r in reqs)
    # a request decodes in `max_tokens` steps of the decode server, the first computing
    # its last prompt token
    context = PROMPT_TOKENS + mean_output / 2
    return Churn(decode_step(timed), batch / mean_output, price(batch, context))


def per_join(short: Sequence[Churn], long: Sequence[Churn]) -> float:
    """Seconds each join adds to the step it joins: the difference between the short
    and the long loads' residual steps (the median of each; the model's decode step at
    their contexts taken out) over their difference in joins per step."""
    if not short or not long:
        raise ValueError("a join's cost needs short and long loads")
    dj = statistics.median(c.joins_per_step for c in short) - statistics.median(
        c.joins_per_step for c in long
    )
    if dj <= 0:
        raise ValueError("the short loads must join more often than the long ones")
    dr = statistics.median(c.residual_s for c in short) - statistics.median(
        c.residual_s for c in long
    )
    return dr / dj


def handover_cost(short: Sequence[Churn], long: Sequence[Churn]) -> float:
    """Seconds a hand-over adds to the WorkloadAware decode step it joins (``per_join``;
    the decode server computes no prompt); never below 0."""
    return max(per_join(short, long), 0.0)


def join_cost(short: Sequence[Churn], long: Sequence[Churn], prefill_s: float) -> float:
    """Seconds a request joining a stock server's step adds to it beyond its prompt's
    encoding as the profile prices it (``prefill_s``: the prompt of ``PROMPT_TOKENS``
    tokens packed into a step that runs anyway): ``per_join`` less that; never below
    0."""
    return max(per_join(short, long) - prefill_s, 0.0)


def with_engine(profile: Profile, **seconds: float) -> Profile:
    """``profile`` with the given fields of its ``engine`` block set (a profile without
    one gets a flat zero step curve), the others kept."""
    engine = profile.engine or EngineOverhead(step=Curve(x=[1.0], seconds=[0.0]))
    return profile.model_copy(update={"engine": engine.model_copy(update=seconds)})


def with_handover(profile: Profile, seconds: float) -> Profile:
    """``profile`` whose hand-over to a WorkloadAware decode server costs ``seconds``
    (``engine.handover_s``)."""
    return with_engine(profile, handover_s=seconds)


def with_join(profile: Profile, seconds: float) -> Profile:
    """``profile`` whose servers' steps grow by ``seconds`` for each request they take
    in (``engine.join_s``)."""
    return with_engine(profile, join_s=seconds)


def describe_churn(c: Churn) -> dict[str, float]:
    return {"step_s": c.step_s, "joins_per_step": c.joins_per_step, "model_step_s": c.model_step_s}


def churn_from_json(doc: Mapping[str, Any]) -> Churn:
    return Churn(float(doc["step_s"]), float(doc["joins_per_step"]), float(doc["model_step_s"]))


def describe_cost(seconds: float, loads: Sequence[tuple[Churn, Churn]]) -> dict[str, Any]:
    """What a hand-over or a join costs and the loads it was read from."""
    return {
        "seconds": seconds,
        "loads": [{"short": describe_churn(s), "long": describe_churn(lg)} for s, lg in loads],
    }


def probe_order(batches: Sequence[int], repeats: int) -> list[int]:
    """The batches in the order they are measured: every batch once, ``repeats`` times
    over, so that each batch's median spans the whole probe and the machine's drift
    (several per cent within a minute here) spreads over every batch alike, instead of
    one batch's runs falling together into a slow or a fast moment."""
    return [b for _ in range(repeats) for b in batches]


def stock_config(batches: Sequence[int]) -> ExecutionConfig:
    """A stock vLLM server (Continuous) with room for the largest of ``batches``: the
    server whose steps the profile's engine curve is measured on."""
    return ExecutionConfig(strategy="Continuous", decode_batch=max(batches))


def stock_probe(template: Plan, batches: Sequence[int]) -> Plan:
    """``template``'s document as the server of ``stock_config``."""
    return template.model_copy(update={"strategy": "Continuous", "config": stock_config(batches)})


def describe(points: Sequence[Point]) -> list[dict[str, Any]]:
    return [
        {
            "batch": p.batch,
            "steps": p.steps,
            "server_step_s": p.server_step_s,
            "model_step_s": p.model_step_s,
            "stages": p.stages,
            "overhead_s": p.overhead_s,
            "request_e2e_s": p.request_e2e_s,
        }
        for p in points
    ]
