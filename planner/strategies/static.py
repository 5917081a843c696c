"""Static batching: a batch is admitted only when none runs, and runs until its
longest output ends. Latency is the paper's definition, ``encode + the decode steps of
a d99-length output``, which flatters the baseline (``e2e_p99_s`` adds the batch in
flight ahead of a caller).

* **Own engine** (FasterTransformer's baseline): the batch is encoded padded to its
  longest prompt, then decoded with every slot computed (each slot's attention over its
  own context) until its longest output ends; KV is reserved for the longest input plus
  the longest possible output of each slot. A caller waits for the whole batch (static
  batching returns a batch when its longest output ends).
* **vLLM** (the ExeGPT scheduler's static mode, ``runner/vllm_scheduler.py``): the
  prompts are packed and prefilled within the token budget (chunked when longer), and
  vLLM frees each sequence as it finishes, so decode step ``t`` runs only the
  sequences still running, ``B x P(d >= t)`` in expectation (``shrinking_batch.py``);
  each query returns when its own output ends. KV pages grow with the sequences.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..costs import Group
from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import FloatArray, QueryLog
from ..shrinking_batch import ShrinkingSteps, shrinking_steps, steps_of_a_query
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
        if sim.engine.static_frees_finished:
            return self._predict_shrinking(sim, c)
        m, k = sim.m, sim.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = c.encode_batch, c.micro_batches
        lengths, weights = sim.padded_prefill.expected(b)
        _, t_enc = k.encode_pass(g, b, lengths, weights, micro)
        steps = m.expected_max_steps(b)
        t_iter = k.iteration(g, b, m.mean_input + steps / 2, micro)
        t_batch = t_enc + steps * t_iter
        latency = t_enc + m.steps_p99 * t_iter
        memory = sim.static_memory(c, b / micro * lengths[0])
        # A caller waits for the batch in flight, then for its own batch to end (static
        # batching returns a batch when its longest output ends).
        e2e = t_batch + t_enc + max(m.steps_p99, steps) * t_iter
        return sim.finish(c, b / t_batch, latency, e2e, memory, float(b))

    def _predict_shrinking(self, sim: Simulator, c: ExecutionConfig) -> Prediction:
        m, k = sim.m, sim.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = c.encode_batch, c.micro_batches
        lengths, weights = sim.prefill.expected(b)
        tokens = b * m.mean_input
        _, t_enc = k.encode_pass(g, b, lengths, weights, micro, sim.engine.prefill_steps(tokens))
        batch = shrinking_steps(m, b)
        t_batch = t_enc + _decode_time(sim, g, batch, micro)
        latency = t_enc + _decode_time(sim, g, steps_of_a_query(m, b, m.steps_p99), micro)
        budget = sim.engine.token_budget
        step_tokens = min(tokens, float(budget)) if budget is not None else tokens
        memory = sim.static_memory(c, step_tokens / micro)
        # A caller waits for the batch in flight, then for its own output to end (vLLM
        # returns each query as it finishes).
        e2e = t_batch + latency
        steps = float(batch.steps.sum())
        running = float(np.dot(batch.steps, batch.running)) / steps if steps > 0 else 0.0
        return sim.finish(c, b / t_batch, latency, e2e, memory, running)

    def simulate(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        if sim.analytic.engine.static_frees_finished:
            self._simulate_shrinking(sim, c, ins, log)
            return
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

    def _simulate_shrinking(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        """vLLM: a batch is admitted when none runs (with a paged KV cache, as far as its
        prompts' blocks are free), its prompts prefilled packed in chunks of the token
        budget; each decode step runs the sequences still running, and each query
        finishes (and frees its blocks) when its own output ends."""
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, n, kv = c.micro_batches, ins.size, sim.kv
        pipe = PipelineSteps(sim.costs, c.pipeline_stages)
        prefill, engine = sim.analytic.prefill, sim.analytic.engine
        t, nxt = 0.0, 0
        while nxt < n:
            t = max(t, float(log.arrival[nxt]))
            hi = nxt
            while hi < n and hi - nxt < c.encode_batch and log.arrival[hi] <= t:
                if kv is not None and not kv.admit(hi, float(ins[hi]) + 1.0):
                    break
                hi += 1
            if hi == nxt:
                raise ValueError(
                    "kv_blocks is too small for one sequence of this workload: give "
                    "the simulation at least the blocks of the longest input plus output"
                )
            new = np.arange(nxt, hi)
            log.admitted[new] = t
            t = pipe.encode(
                t, g, ins[new], prefill, micro, engine.prefill_steps(float(ins[new].sum()))
            )
            running = new
            j = 0
            while True:
                ended = running[log.steps[running] <= j]
                log.done[ended] = t
                if kv is not None:
                    for q in ended:
                        kv.release(int(q))
                running = running[log.steps[running] > j]
                if not running.size:
                    break
                if kv is not None:
                    for q in running:
                        if not kv.grow(int(q), float(ins[q]) + j + 2.0):
                            raise ValueError(
                                "kv_blocks is too small for this static batch: vLLM would "
                                "preempt, which the Static model does not price"
                            )
                start = t
                t = pipe.decode(t, g, running.size, float(ins[running].mean()) + j + 1.0, micro)
                log.note_batch(running.size, t - start)
                j += 1
            nxt = hi


def _decode_time(sim: Simulator, g: Group, steps: ShrinkingSteps, micro: int) -> float:
    """Time of the decode steps ``steps`` (segments of running batches and contexts)."""
    k = sim.costs
    parts = zip(steps.steps, steps.running, steps.context, strict=True)
    return sum(float(n) * k.iteration(g, float(r), float(x), micro) for n, r, x in parts)
