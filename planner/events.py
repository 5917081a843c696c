"""XSimulator, discrete-event mode: runs sampled queries through a configuration,
iteration by iteration, to check the analytic mode's expected-value shortcuts and to
measure what it cannot (p99 end-to-end latency under arrivals).

It shares the per-stage cost model with the analytic mode (``costs.CostModel``) but
none of its averaging: batches hold the actual sampled queries, each with its own
input length, output length and growing context; queries leave the decode batch
when they finish and new ones take their place exactly as the strategy dictates; a
static batch runs to its actual longest output, and all its queries finish then (as
static batching returns a batch). Deterministic for a given ``numpy.random.Generator``.
Pure: no I/O.

``replay`` runs given queries (their arrival times and lengths) instead of sampled
ones: what a benchmark sets against a real replica that served the same queries, so
that the comparison is free of the sampling noise of two independent draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .costs import CostModel
from .moments import Moments
from .paged import PagedKV
from .plan import ExecutionConfig, PlanRequest
from .profile import Profile
from .querylog import FloatArray, QueryLog
from .simulator import Simulator
from .strategies import strategy_model


@dataclass(frozen=True)
class EventResult:
    """Measured on the simulated timeline (all replicas together)."""

    throughput_qps: float
    throughput_tps: float
    latency_s: float  # time to generate the p99-length output (fitted over the window)
    e2e_p99_s: float  # p99 of completion - arrival
    mean_decode_batch: float
    queries: int
    completed: int  # queries that finished (all of them, unless the model is broken)
    window_s: float


@dataclass(frozen=True)
class Timeline:
    """Per query of a replay: when it arrived, was admitted (its encoding began) and
    finished, in the replay's own seconds."""

    arrival: FloatArray
    admitted: FloatArray
    done: FloatArray

    @property
    def e2e(self) -> FloatArray:
        """Each query's end-to-end latency: finished - arrival."""
        return self.done - self.arrival


class EventSimulator:
    """Discrete-event XSimulator bound to one request and profile."""

    def __init__(
        self, request: PlanRequest, profile: Profile, *, kv_blocks: int | None = None
    ) -> None:
        """``kv_blocks``: the capacity of vLLM's paged KV cache per replica, in blocks
        (from the memory model); without it, KV memory does not limit the run."""
        self.analytic = Simulator(request, profile)
        self.request = request
        self.costs: CostModel = self.analytic.costs
        self.m: Moments = self.analytic.m
        self.kv_blocks = kv_blocks
        block = self.analytic.engine.kv_block_tokens
        if kv_blocks is not None and block is None:
            raise ValueError(
                f"kv_blocks is the capacity of vLLM's paged KV cache; the request's engine "
                f"is {request.engine!r}: set engine='vLLM' or leave kv_blocks out"
            )
        self.kv: PagedKV | None = None

    def run(
        self,
        config: ExecutionConfig,
        rng: np.random.Generator,
        *,
        queries: int | None = None,
        arrival_rate: float | None = None,
    ) -> EventResult:
        """Simulate ``queries`` sampled queries on one replica of ``config``.

        ``arrival_rate`` (queries/s over all replicas) draws Poisson arrivals; without
        it every query is waiting at time 0 (saturation, for throughput). The default
        query count scales with the decode batch so the steady state dominates."""
        self._check(config)
        expected = self.analytic.evaluate(config)
        n = queries or int(min(max(3000, 30 * expected.decode_batch), 60000))
        inputs, outputs = self.request.workload.sample(n, rng)
        if arrival_rate is None:
            arrival = np.zeros(n)
        else:
            per_replica = arrival_rate / config.replicas
            arrival = np.cumsum(rng.exponential(1.0 / per_replica, size=n))
        run = self._simulate(config, arrival, inputs, outputs)
        return self._measure(config, run, saturated=arrival_rate is None)

    def replay(
        self,
        config: ExecutionConfig,
        arrival: ArrayLike,
        inputs: ArrayLike,
        outputs: ArrayLike,
    ) -> Timeline:
        """Run the given queries through one replica of ``config``: query ``i``
        arrives at ``arrival[i]`` seconds (non-decreasing) with ``inputs[i]`` prompt
        tokens and generates ``outputs[i]`` tokens. Each query's simulated timeline,
        to set against what a real replica did with the same queries."""
        self._check(config)
        a = np.asarray(arrival, dtype=np.float64)
        ins = np.asarray(inputs, dtype=np.int64)
        outs = np.asarray(outputs, dtype=np.int64)
        if a.ndim != 1 or a.shape != ins.shape or a.shape != outs.shape or a.size == 0:
            raise ValueError("arrival, inputs and outputs must be non-empty 1-D, one per query")
        if not np.isfinite(a).all() or (np.diff(a) < 0).any():
            raise ValueError("arrival times must be finite and non-decreasing")
        if (ins < 1).any() or (outs < 1).any():
            raise ValueError("input and output lengths must be >= 1")
        run = self._simulate(config, a - a[0], ins, outs)
        # A query reaches the engine what the server adds to a request after it arrives
        # (the profile's engine.request_s): every time after its arrival shifts by it.
        late = a[0] + self.analytic.request_overhead
        return Timeline(arrival=a.copy(), admitted=run.admitted + late, done=run.done + late)

    def _check(self, config: ExecutionConfig) -> None:
        problem = self.analytic.check_shape(config)
        if problem:
            raise ValueError(f"configuration cannot run: {problem}")

    def _simulate(
        self,
        config: ExecutionConfig,
        arrival: FloatArray,
        inputs: NDArray[np.int64],
        outputs: NDArray[np.int64],
    ) -> QueryLog:
        n = arrival.size
        ed = self.m.encoder_decoder
        run = QueryLog(
            arrival=arrival,
            admitted=np.full(n, np.nan),
            done=np.full(n, np.nan),
            steps=outputs.astype(np.float64) - (0.0 if ed else 1.0),
            outputs=outputs.astype(np.float64),
            lag=np.zeros(n),
        )
        block = self.analytic.engine.kv_block_tokens
        if self.kv_blocks is not None and block is not None:
            self.kv = PagedKV(self.kv_blocks, block)
        strategy_model(config.strategy).simulate(self, config, inputs.astype(np.float64), run)
        return run

    # -- measurement ---------------------------------------------------------------------
    def _measure(self, config: ExecutionConfig, run: QueryLog, saturated: bool) -> EventResult:
        n = run.done.size
        order = np.argsort(run.admitted, kind="stable")
        if saturated:
            # Steady state: from the 20th percentile admission to the last admission
            # (after which the queue is empty and the batch drains).
            t0 = float(run.admitted[order[int(0.2 * n)]])
            t1 = float(run.admitted[order[-1]])
        else:
            t0 = float(run.arrival[int(0.2 * n)])
            t1 = float(run.arrival[-1])
        if t1 <= t0:
            t0, t1 = 0.0, float(np.nanmax(run.done))
        # Half-open (t0, t1]: a batch that ends exactly at t0 (a static batch ending
        # as the window's first admission begins) belongs to the time before it.
        in_window = (run.done > t0) & (run.done <= t1)
        count = int(in_window.sum())
        if count < max(10, n // 20):
            # Too few queries for a steady state (the queue drained before the batch
            # filled): fall back to the whole run, fill and drain included.
            t0, t1 = float(np.nanmin(run.admitted)), float(np.nanmax(run.done))
            in_window = np.isfinite(run.done)
            count = int(in_window.sum())
        qps = count / (t1 - t0) if t1 > t0 else 0.0
        lat = run.done - run.admitted
        sel = in_window & np.isfinite(lat)
        d99 = self.m.steps_p99
        if sel.sum() >= 2 and np.ptp(run.steps[sel]) > 0:
            slope, intercept = np.polyfit(run.steps[sel], lat[sel], 1)
            latency = float(intercept + slope * d99)
        else:
            latency = float(np.nanmax(lat))
        e2e = float(np.percentile((run.done - run.arrival)[sel], 99)) if sel.any() else 0.0
        e2e += self.analytic.request_overhead  # the same shift for every query
        mean_batch = run.batch_time / run.decode_time if run.decode_time > 0 else 0.0
        q = qps * config.replicas
        tokens = float(run.outputs[in_window].mean()) if count else 0.0
        return EventResult(
            throughput_qps=q,
            throughput_tps=q * tokens,
            latency_s=latency,
            e2e_p99_s=e2e,
            mean_decode_batch=mean_batch,
            queries=n,
            completed=int(np.isfinite(run.done).sum()),
            window_s=t1 - t0,
        )
