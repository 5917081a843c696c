"""RoundRobin (RRA): every GPU runs both phases; an encoding of ``B_E`` queries every
``N_D`` decode iterations.

Analytic: a cycle is one encoding then ``N_D`` decode iterations (on vLLM the encoding
is packed into one of those iterations: it adds its work, not a step of its own). In steady state as
many queries leave per cycle as join, so by Little's law the decode batch is
``B_D = B_E x E[d] / N_D``. The encoding is a step of its own through every stage,
in the plan's micro-batches, priced at the prompt lengths the engine batches; what
it takes the pipeline (its fill and drain, or with overlapped steps its share of the
busiest stage) is part of the cycle. Throughput ``B_E / T_cycle``; a query of the p99
output length waits for its own encoding, ``d99`` iterations and ``d99 / N_D``
encodings of others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import DecodeBatch, FloatArray, QueryLog
from ..steps import PipelineSteps

if TYPE_CHECKING:
    from ..events import EventSimulator
    from ..simulator import Simulator


class RoundRobin:
    name: Strategy = "RoundRobin"
    batch_field = "encode_batch"

    def shape_problem(self, sim: Simulator, config: ExecutionConfig) -> str:
        return ""

    def predict(self, sim: Simulator, c: ExecutionConfig) -> Prediction:
        m, k = sim.m, sim.costs
        enc, dec, _ = sim.round_robin_groups(c)
        n_d, b_e, micro = c.decode_steps_per_encode, c.encode_batch, c.micro_batches
        b_d = b_e * m.mean_steps / n_d
        t_iter = k.iteration(dec, b_d, m.mean_context, micro)
        lengths, weights = sim.prefill.expected(b_e)
        chunks = sim.engine.prefill_steps(b_e * m.mean_input)
        # The encoding holds the decode batch for its whole pass: with fill-and-drain
        # steps by construction; with overlapped steps because its heavy micro-batches
        # delay every decode micro-batch behind them (the event mode's stage timeline
        # shows the difference, docs/simulator.md).
        _, t_enc = k.encode_pass(enc, b_e, lengths, weights, micro, chunks)
        d99 = m.steps_p99
        if sim.engine.prefill_joins_decodes:
            # vLLM: the encoding rides in one of the N_D decode steps (the running
            # batch's); a query's own prefill step is one of those steps.
            t_enc = k.joined_pass(enc, t_enc, micro)
            latency = t_iter + t_enc + d99 * t_iter + (d99 / n_d) * t_enc
        else:
            latency = t_enc + d99 * t_iter + (d99 / n_d) * t_enc
        t_cycle = n_d * t_iter + t_enc
        memory = sim.round_robin_memory(c, b_d)
        return sim.finish(c, b_e / t_cycle, latency, latency + t_cycle, memory, b_d)

    def simulate(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        enc, dec, _ = sim.analytic.round_robin_groups(c)
        micro, n_d = c.micro_batches, c.decode_steps_per_encode
        pipe = PipelineSteps(sim.costs, c.pipeline_stages)
        prefill, engine = sim.analytic.prefill, sim.analytic.engine
        n = ins.size
        t, nxt = 0.0, 0
        batch = DecodeBatch()
        since = n_d  # decode iterations since the last encoding
        while nxt < n or batch.size:
            # After N_D decode iterations (or with nothing decoding), encode up to B_E
            # queries that have arrived; with none waiting, the next one to arrive is
            # encoded after the iteration it arrives in (at saturation: every N_D).
            hi = nxt
            if since >= n_d or not batch.size:
                while hi < n and hi - nxt < c.encode_batch and log.arrival[hi] <= t:
                    hi += 1
            if hi == nxt and not batch.size:
                t = max(t, float(log.arrival[nxt]))
                continue
            if hi > nxt:
                new = np.arange(nxt, hi)
                log.admitted[new] = t
                chunks = engine.prefill_steps(float(ins[new].sum()))
                joined = engine.prefill_joins_decodes and batch.size > 0
                t = pipe.encode(t, enc, ins[new], prefill, micro, chunks, joined)
                fresh = log.steps[new] > 0
                log.done[new[~fresh]] = t
                batch.join(new[fresh], log, ins)
                nxt = hi
                since = 0
            if batch.size:
                start = t
                t = pipe.decode(t, dec, batch.size, batch.context(), micro)
                log.note_batch(batch.size, t - start)
                batch.step(t, log)
                since += 1
