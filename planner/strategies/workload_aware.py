"""WorkloadAware (WAA): encoders and decoders on separate GPUs.

Analytic: the encoders encode batches back to back, each a step through the encoder
pipeline priced at the prompt lengths the engine batches (the next encoding starts
when the pipeline is free for it: after the whole pass with fill-and-drain steps);
each encoder stage sends its layers' KV to the decoders, overlapping the next
encoding. The decoders keep a decode batch of up to ``B_D``; every query handed over
adds the profile's ``engine.handover_s`` to the decode step it joins (on average
``batch / mean_steps`` joins per iteration). Throughput is the slowest of encoding, KV
transfer and decoding; when encoding is the bottleneck the decode batch settles below
``B_D`` (found on the flow balance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import DecodeBatch, FloatArray, QueryLog
from ..steps import PipelineSteps

if TYPE_CHECKING:
    from ..events import EventSimulator
    from ..simulator import Simulator


class WorkloadAware:
    name: Strategy = "WorkloadAware"
    batch_field = "decode_batch"

    def shape_problem(self, sim: Simulator, c: ExecutionConfig) -> str:
        if c.encode_gpus != c.encode_stages * c.encode_tp:
            return "encode_gpus must equal encode_stages * encode_tp"
        if c.decode_gpus != c.pipeline_stages * c.tensor_parallel:
            return "decode_gpus must equal pipeline_stages * tensor_parallel"
        return ""

    @staticmethod
    def _links(sim: Simulator, c: ExecutionConfig) -> tuple[int, bool]:
        # Each encoder stage sends its own layers' KV: stages x TP links in parallel.
        links = c.encode_stages * min(c.encode_tp, c.tensor_parallel)
        return links, c.gpus_per_replica > sim.request.gpus_per_node

    def predict(self, sim: Simulator, c: ExecutionConfig) -> Prediction:
        m, k = sim.m, sim.costs
        enc, dec = sim.workload_aware_groups(c)
        b_e, micro = c.encode_batch, c.micro_batches
        lengths, weights = sim.prefill.expected(b_e)
        chunks = sim.engine.prefill_steps(b_e * m.mean_input)
        enc_period, enc_lat = k.encode_pass(enc, b_e, lengths, weights, 1, chunks)
        links, inter = self._links(sim, c)
        t_kv = k.kv_transfer(b_e, m.mean_input, links, inter)
        lam = b_e / max(enc_period, t_kv, 1e-12)

        def iteration(batch: float) -> float:
            # the decode step, with the hand-overs of the queries joining it
            joins = batch / m.mean_steps
            return k.iteration(dec, batch, m.mean_context, micro) + joins * sim.handover

        def decode_rate(batch: float) -> float:
            return batch / max(m.mean_steps * iteration(batch), 1e-12)

        batch = float(c.decode_batch)
        if m.mean_steps <= 0:
            qps, t_iter = lam, 0.0
        elif lam >= decode_rate(batch):
            qps = decode_rate(batch)
            t_iter = iteration(batch)
        else:
            batch = settle(decode_rate, lam, batch)
            qps = lam
            t_iter = iteration(batch)
        latency = enc_lat + t_kv + (m.steps_p99 + 1) * t_iter
        memory = sim.workload_aware_memory(c)
        return sim.finish(c, qps, latency, latency + enc_period, memory, batch)

    def simulate(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        k, an = sim.costs, sim.analytic
        enc, dec = an.workload_aware_groups(c)
        micro, cap = c.micro_batches, c.decode_batch
        links, inter = self._links(an, c)
        pipe = PipelineSteps(k, c.pipeline_stages)
        n = ins.size
        enc_free = 0.0  # when the encoders can start the next batch
        ready_t: list[float] = []  # per encoded batch: when its KV reaches the decoders
        ready_ids: list[NDArray[np.int64]] = []
        nxt = 0
        t = 0.0  # decoder clock
        batch = DecodeBatch()
        waiting = 0
        while nxt < n or batch.size or ready_ids:
            # Encoders run ahead of the decoder clock while the hand-over buffer has room.
            while nxt < n and waiting < max(cap, c.encode_batch):
                start = max(enc_free, float(log.arrival[nxt]))
                if start > t and (batch.size or ready_ids):
                    break
                hi = nxt
                while hi < n and hi - nxt < c.encode_batch and log.arrival[hi] <= start:
                    hi += 1
                new = np.arange(nxt, hi)
                b, length = hi - nxt, float(ins[new].mean())
                xs, ws = an.prefill.of(ins[new])
                chunks = an.engine.prefill_steps(float(ins[new].sum()))
                period, latency = k.encode_pass(enc, b, xs, ws, 1, chunks)
                t_kv = k.kv_transfer(b, length, links, inter)
                log.admitted[new] = start
                enc_free = start + max(period, t_kv)
                ready = start + latency + t_kv
                fresh = log.steps[new] > 0
                log.done[new[~fresh]] = ready
                if fresh.any():
                    ready_t.append(ready)
                    ready_ids.append(new[fresh])
                    waiting += int(fresh.sum())
                nxt = hi
            # Join whatever has arrived at the decoders, up to the decode batch.
            if not batch.size and ready_ids and ready_t[0] > t:
                t = ready_t[0]
            joined = 0
            while ready_ids and ready_t[0] <= t and batch.size < cap:
                take, rest = ready_ids[0][: cap - batch.size], ready_ids[0][cap - batch.size :]
                batch.join(take, log, ins)
                joined += take.size
                waiting -= take.size
                if rest.size:
                    ready_ids[0] = rest
                else:
                    ready_ids.pop(0)
                    ready_t.pop(0)
            if not batch.size:
                if not ready_ids and nxt < n:
                    t = max(t, enc_free, float(log.arrival[nxt]))
                continue
            start_t = t
            t = pipe.decode(t, dec, batch.size, batch.context(), micro) + joined * an.handover
            log.note_batch(batch.size, t - start_t)
            batch.step(t, log)


def settle(rate: Callable[[float], float], target: float, cap: float) -> float:
    """The batch ``b`` in (0, cap] where ``rate(b) == target`` (``rate`` increasing,
    ``rate(cap) > target``): regula falsi with the Illinois step, to 0.1 % of ``cap``."""
    lo, f_lo = 0.0, -target
    hi, f_hi = cap, rate(cap) - target
    side = 0
    for _ in range(40):
        if hi - lo <= 1e-3 * cap:
            break
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        mid = min(max(mid, lo + 1e-6 * cap), hi - 1e-6 * cap)
        f_mid = rate(mid) - target
        if f_mid < 0:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = mid, f_mid
            if side == 1:
                f_lo /= 2
            side = 1
        if abs(f_mid) <= 1e-6 * target:
            return mid
    return hi
