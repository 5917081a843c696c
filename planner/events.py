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

from .costs import CostModel, Group
from .moments import Moments
from .plan import ExecutionConfig, PlanRequest
from .profile import Profile
from .simulator import Simulator

FloatArray = NDArray[np.float64]


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


@dataclass
class _Run:
    """Per-query timeline of one replica."""

    arrival: FloatArray
    admitted: FloatArray
    done: FloatArray
    steps: FloatArray
    outputs: FloatArray
    lag: FloatArray  # pipeline traversal delay added to a query's completion (RoundRobin)
    batch_time: float = 0.0  # integral of decode batch size over decode time
    decode_time: float = 0.0

    def note_batch(self, size: int, dt: float) -> None:
        self.batch_time += size * dt
        self.decode_time += dt


class _Running:
    """The decode batch: each member's query id, KV context and decode steps left."""

    def __init__(self) -> None:
        self.ids: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self.ctx: FloatArray = np.empty(0)
        self.left: FloatArray = np.empty(0)

    @property
    def size(self) -> int:
        return int(self.ids.size)

    def context(self) -> float:
        """The mean context of the next decode step (the token being decoded included)."""
        return float(self.ctx.mean()) + 1.0 if self.ids.size else 0.0

    def join(self, ids: NDArray[np.int64], run: _Run, inputs: FloatArray) -> None:
        self.ids = np.concatenate((self.ids, ids))
        self.ctx = np.concatenate((self.ctx, inputs[ids]))
        self.left = np.concatenate((self.left, run.steps[ids]))

    def step(self, t: float, run: _Run, lag: bool = False) -> None:
        """One decode iteration ending at ``t``: every member decodes one token; those
        done leave (finishing ``run.lag`` later when ``lag``)."""
        self.ctx += 1.0
        self.left -= 1.0
        fin = self.left <= 0
        if fin.any():
            done = self.ids[fin]
            run.done[done] = t + run.lag[done] if lag else t
            keep = ~fin
            self.ids, self.ctx, self.left = self.ids[keep], self.ctx[keep], self.left[keep]


class EventSimulator:
    """Discrete-event XSimulator bound to one request and profile."""

    def __init__(self, request: PlanRequest, profile: Profile) -> None:
        self.analytic = Simulator(request, profile)
        self.request = request
        self.costs: CostModel = self.analytic.costs
        self.m: Moments = self.analytic.m

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
        return Timeline(arrival=a.copy(), admitted=run.admitted + a[0], done=run.done + a[0])

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
    ) -> _Run:
        n = arrival.size
        ed = self.m.encoder_decoder
        run = _Run(
            arrival=arrival,
            admitted=np.full(n, np.nan),
            done=np.full(n, np.nan),
            steps=outputs.astype(np.float64) - (0.0 if ed else 1.0),
            outputs=outputs.astype(np.float64),
            lag=np.zeros(n),
        )
        ins = inputs.astype(np.float64)
        if config.strategy == "RoundRobin":
            self._round_robin(config, ins, run)
        elif config.strategy == "WorkloadAware":
            self._workload_aware(config, ins, run)
        elif config.strategy == "Static":
            self._static(config, ins, run)
        else:
            self._continuous(config, ins, run)
        return run

    # -- measurement ---------------------------------------------------------------------
    def _measure(self, config: ExecutionConfig, run: _Run, saturated: bool) -> EventResult:
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
        in_window = (run.done >= t0) & (run.done <= t1)
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

    # -- strategies ---------------------------------------------------------------------
    def _round_robin(self, c: ExecutionConfig, ins: FloatArray, run: _Run) -> None:
        k = self.costs
        enc, dec, _ = self.analytic.round_robin_groups(c)
        s, micro, n_d = c.pipeline_stages, c.micro_batches, c.decode_steps_per_encode
        n = ins.size
        t, nxt = 0.0, 0
        batch = _Running()
        since = n_d  # decode iterations since the last encoding
        while nxt < n or batch.size:
            # After N_D decode iterations (or with nothing decoding), encode up to B_E
            # queries that have arrived; with none waiting, the next one to arrive is
            # encoded after the iteration it arrives in (at saturation: every N_D).
            hi = nxt
            if since >= n_d or not batch.size:
                while hi < n and hi - nxt < c.encode_batch and run.arrival[hi] <= t:
                    hi += 1
            if hi == nxt and not batch.size:
                t = max(t, float(run.arrival[nxt]))
                continue
            if hi > nxt:
                new = np.arange(nxt, hi)
                b, length = hi - nxt, float(ins[new].mean())
                enc_lat = k.encode_latency(enc, b, length)
                t_enc = k.encode_stage(enc, b, length) if micro >= s else enc_lat
                run.admitted[new] = t
                t += t_enc
                # The pipeline traversal beyond the stage's busy time delays these
                # queries' tokens but not the cycle.
                lag = enc_lat - t_enc
                fresh = run.steps[new] > 0
                run.done[new[~fresh]] = t + lag
                batch.join(new[fresh], run, ins)
                run.lag[new] = lag
                nxt = hi
                since = 0
            if batch.size:
                dt = k.iteration(dec, float(batch.size), batch.context(), micro)
                run.note_batch(batch.size, dt)
                t += dt
                batch.step(t, run, lag=True)
                since += 1

    def _workload_aware(self, c: ExecutionConfig, ins: FloatArray, run: _Run) -> None:
        k, sim = self.costs, self.analytic
        enc, dec = sim.workload_aware_groups(c)
        micro, cap = c.micro_batches, c.decode_batch
        links = c.encode_stages * min(c.encode_tp, c.tensor_parallel)
        inter = c.gpus_per_replica > self.request.gpus_per_node
        n = ins.size
        enc_free = 0.0  # when the encoders can start the next batch
        ready_t: list[float] = []  # per encoded batch: when its KV reaches the decoders
        ready_ids: list[NDArray[np.int64]] = []
        nxt = 0
        t = 0.0  # decoder clock
        batch = _Running()
        waiting = 0
        while nxt < n or batch.size or ready_ids:
            # Encoders run ahead of the decoder clock while the hand-over buffer has room.
            while nxt < n and waiting < max(cap, c.encode_batch):
                start = max(enc_free, float(run.arrival[nxt]))
                if start > t and (batch.size or ready_ids):
                    break
                hi = nxt
                while hi < n and hi - nxt < c.encode_batch and run.arrival[hi] <= start:
                    hi += 1
                new = np.arange(nxt, hi)
                b, length = hi - nxt, float(ins[new].mean())
                stage = k.encode_stage(enc, b, length)
                t_kv = k.kv_transfer(b, length, links, inter)
                run.admitted[new] = start
                enc_free = start + max(stage, t_kv)
                ready = start + k.encode_latency(enc, b, length) + t_kv
                fresh = run.steps[new] > 0
                run.done[new[~fresh]] = ready
                if fresh.any():
                    ready_t.append(ready)
                    ready_ids.append(new[fresh])
                    waiting += int(fresh.sum())
                nxt = hi
            # Join whatever has arrived at the decoders, up to the decode batch.
            if not batch.size and ready_ids and ready_t[0] > t:
                t = ready_t[0]
            while ready_ids and ready_t[0] <= t and batch.size < cap:
                take, rest = ready_ids[0][: cap - batch.size], ready_ids[0][cap - batch.size :]
                batch.join(take, run, ins)
                waiting -= take.size
                if rest.size:
                    ready_ids[0] = rest
                else:
                    ready_ids.pop(0)
                    ready_t.pop(0)
            if not batch.size:
                if not ready_ids and nxt < n:
                    t = max(t, enc_free, float(run.arrival[nxt]))
                continue
            dt = k.iteration(dec, float(batch.size), batch.context(), micro)
            run.note_batch(batch.size, dt)
            t += dt
            batch.step(t, run)

    def _static(self, c: ExecutionConfig, ins: FloatArray, run: _Run) -> None:
        k = self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, n = c.micro_batches, ins.size
        t, nxt = 0.0, 0
        while nxt < n:
            t = max(t, float(run.arrival[nxt]))
            hi = nxt
            while hi < n and hi - nxt < c.encode_batch and run.arrival[hi] <= t:
                hi += 1
            new = np.arange(nxt, hi)
            b, in_max = hi - nxt, float(ins[new].max())
            stage = k.encode_stage(g, b / micro, in_max)
            chain, _ = k.encode_p2p(g, b / micro, in_max)
            run.admitted[new] = t
            t += (micro + g.stages - 1) * stage + chain
            longest = int(run.steps[new].max())
            # Every slot is computed until the longest output ends; attention reads each
            # sequence's own context.
            context = float(ins[new].mean())
            it = np.array(
                [k.iteration(g, float(b), context + j + 1.0, micro) for j in range(longest)]
            )
            decoding = float(it.sum())
            t += decoding
            # Static batching returns a batch when its longest output ends: every
            # member finishes then (the engine reports them together).
            run.done[new] = t
            if longest:
                run.note_batch(b, decoding)
            nxt = hi

    def _continuous(self, c: ExecutionConfig, ins: FloatArray, run: _Run) -> None:
        k = self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, cap, n = c.micro_batches, c.decode_batch, ins.size
        t, nxt = 0.0, 0
        batch = _Running()
        while nxt < n or batch.size:
            hi = nxt
            while hi < n and batch.size + (hi - nxt) < cap and run.arrival[hi] <= t:
                hi += 1
            if hi == nxt and not batch.size:
                t = max(t, float(run.arrival[nxt]))
                continue
            new = np.arange(nxt, hi)
            joins = hi - nxt
            length = float(ins[new].mean()) if joins else 0.0
            dt = k.mixed_iteration(
                g, float(batch.size), batch.context(), float(joins), length, micro
            )
            run.note_batch(batch.size + joins, dt)
            run.admitted[new] = t
            t += dt
            batch.step(t, run)
            if joins:
                fresh = run.steps[new] > 0
                run.done[new[~fresh]] = t
                batch.join(new[fresh], run, ins)
            nxt = hi
