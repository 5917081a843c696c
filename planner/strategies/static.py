"""Static batching (the FasterTransformer baseline), on either engine.

A batch is encoded padded to its longest prompt (FasterTransformer pads; the own
engine's Static mode pads the same way), then decoded until its longest output ends
with every slot computed throughout (each slot's attention over its own context); KV
is reserved for the longest input plus the longest possible output of each slot.
Latency is the paper's definition, ``encode + d99 x T_iter``, which flatters the
baseline: its callers wait for the whole batch (``e2e_p99_s`` is the batch in flight
plus a batch that runs to ``max(d99, E[max])`` iterations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..costs import Group
from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import FloatArray, QueryLog
from ..steps import PipelineSteps

if TYPE_CHECKING:
    from ..events import EventSimulator
    from ..simulator import Simulator


class Static:
    name: Strategy = "Static"
    batch_field = "encode_batch"

    def shape_problem(self, sim: Simulator, config: ExecutionConfig) -> str:
        return ""

    def predict(self, sim: Simulator, c: ExecutionConfig) -> Prediction:
        m, k = sim.m, sim.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = c.encode_batch, c.micro_batches
        lengths, weights = sim.padded_prefill.expected(b)
        _, t_enc = k.encode_pass(g, b, lengths, weights, micro)
        steps = m.expected_max_steps(b)
        t_iter = k.iteration(g, b, m.mean_input + steps / 2, micro)
        t_batch = t_enc + steps * t_iter
        latency = t_enc + m.steps_p99 * t_iter
        memory = sim.static_memory(c, lengths[0])
        # A caller waits for the batch in flight, then for its own batch to end (static
        # batching returns a batch when its longest output ends).
        e2e = t_batch + t_enc + max(m.steps_p99, steps) * t_iter
        return sim.finish(c, b / t_batch, latency, e2e, memory, float(b))

    def simulate(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, n = c.micro_batches, ins.size
        pipe = PipelineSteps(sim.costs, c.pipeline_stages)
        padded = sim.analytic.padded_prefill
        t, nxt = 0.0, 0
        while nxt < n:
            t = max(t, float(log.arrival[nxt]))
            hi = nxt
            while hi < n and hi - nxt < c.encode_batch and log.arrival[hi] <= t:
                hi += 1
            new = np.arange(nxt, hi)
            b = hi - nxt
            log.admitted[new] = t
            t = pipe.encode(t, g, ins[new], padded, micro)
            longest = int(log.steps[new].max())
            # Every slot is computed until the longest output ends; attention reads each
            # sequence's own context.
            context = float(ins[new].mean())
            start = t
            for j in range(longest):
                t = pipe.decode(t, g, b, context + j + 1.0, micro)
            # Static batching returns a batch when its longest output ends: every
            # member finishes then (the engine reports them together).
            log.done[new] = t
            if longest:
                log.note_batch(b, t - start)
            nxt = hi
