"""Continuous (iteration-level) batching: the ORCA / vLLM baseline, up to
``decode_batch`` running queries.

On the own engine an iteration is a prefill step of the queries that joined (when
any did), then a decode step of the running batch. On vLLM an iteration is one mixed
step: the running batch's decodes plus prompt tokens up to the token budget
(``max_num_batched_tokens``), a longer prompt chunked over several steps (chunked
prefill); when the prompts that must join to keep the batch full exceed what the
budget leaves, the running batch settles lower.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from ..costs import Group
from ..paged import PagedKV
from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import DecodeBatch, FloatArray, QueryLog
from ..steps import PipelineSteps

if TYPE_CHECKING:
    from ..events import EventSimulator
    from ..simulator import Simulator


class Continuous:
    name: Strategy = "Continuous"
    batch_field = "decode_batch"

    def shape_problem(self, sim: Simulator, config: ExecutionConfig) -> str:
        return ""

    def predict(self, sim: Simulator, c: ExecutionConfig) -> Prediction:
        m, k = sim.m, sim.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = float(c.decode_batch), c.micro_batches
        iters = m.mean_steps + 1.0  # the prefill iteration, then the decode steps
        budget = sim.engine.token_budget
        if budget is not None:
            # Decode tokens plus the prompt tokens joining per step fit the budget.
            b = min(b, budget / (1.0 + m.mean_input / iters))
        joins = b / iters
        if sim.engine.overlapped_steps or budget is not None:
            t_iter = k.mixed_iteration(g, b, m.mean_context, joins, m.mean_input, micro)
        else:
            # A prefill step when anyone joined (probability 1 - e^-joins), then a
            # decode step of the running batch.
            p = -math.expm1(-joins)
            t_iter = k.iteration(g, b, m.mean_context, micro)
            if p > 0:
                per_step = joins / p
                lengths, weights = sim.prefill.expected(per_step)
                _, t_pre = k.encode_pass(g, per_step, lengths, weights, micro)
                t_iter += p * t_pre
        qps = b / (iters * t_iter)
        latency = (m.steps_p99 + 1.0) * t_iter
        memory = sim.continuous_memory(c, b, joins)
        return sim.finish(c, qps, latency, latency + t_iter, memory, b)

    def simulate(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        if sim.analytic.engine.token_budget is not None:
            self._mixed_steps(sim, c, ins, log)
        else:
            self._prefill_then_decode(sim, c, ins, log)

    def _prefill_then_decode(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, cap, n = c.micro_batches, c.decode_batch, ins.size
        pipe = PipelineSteps(sim.costs, c.pipeline_stages)
        prefill = sim.analytic.prefill
        t, nxt = 0.0, 0
        batch = DecodeBatch()
        while nxt < n or batch.size:
            hi = nxt
            while hi < n and batch.size + (hi - nxt) < cap and log.arrival[hi] <= t:
                hi += 1
            if hi == nxt and not batch.size:
                t = max(t, float(log.arrival[nxt]))
                continue
            start = t
            new = np.arange(nxt, hi)
            if new.size:
                log.admitted[new] = t
                t = pipe.encode(t, g, ins[new], prefill, micro)
            running = batch.size
            if running:
                t = pipe.decode(t, g, running, batch.context(), micro)
                batch.step(t, log)
            log.note_batch(running + new.size, t - start)
            if new.size:
                fresh = log.steps[new] > 0
                log.done[new[~fresh]] = t
                batch.join(new[fresh], log, ins)
            nxt = hi

    def _mixed_steps(
        self, sim: EventSimulator, c: ExecutionConfig, ins: FloatArray, log: QueryLog
    ) -> None:
        """vLLM: every step decodes the running batch and prefills prompt tokens up to
        the token budget, oldest first; a prompt whose last chunk ran joins the batch.
        With a paged KV cache (``sim.kv``) a query is admitted only when its prompt's
        blocks are free, a sequence takes a block more as it crosses a block boundary,
        and when none is free the newest running sequence is preempted: its blocks
        are freed and its context is computed again when it is readmitted (vLLM's
        recompute preemption)."""
        k, kv = sim.costs, sim.kv
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro, cap, n = c.micro_batches, c.decode_batch, ins.size
        budget = sim.analytic.engine.token_budget or 0
        t, nxt = 0.0, 0
        batch = DecodeBatch()
        pending: list[int] = []  # admitted queries whose context is not fully computed
        left: dict[int, float] = {}  # their tokens still to compute
        preempted: list[tuple[int, float, float]] = []  # (query, context, steps left)
        resumed: dict[int, tuple[float, float]] = {}
        while nxt < n or batch.size or pending or preempted:
            while preempted and batch.size + len(pending) < cap:
                q, ctx, rest = preempted[0]
                if kv is not None and not kv.admit(q, ctx):
                    break
                preempted.pop(0)
                pending.append(q)
                left[q], resumed[q] = ctx, (ctx, rest)
            while (
                not preempted
                and nxt < n
                and batch.size + len(pending) < cap
                and log.arrival[nxt] <= t
            ):
                if kv is not None and not kv.admit(nxt, float(ins[nxt]) + 1.0):
                    break
                log.admitted[nxt] = t
                pending.append(nxt)
                left[nxt] = float(ins[nxt])
                nxt += 1
            if not pending and not batch.size:
                if preempted or nxt >= n or log.arrival[nxt] <= t:
                    raise ValueError(
                        "kv_blocks is too small for one sequence of this workload: give "
                        "the simulation at least the blocks of the longest input plus output"
                    )
                t = max(t, float(log.arrival[nxt]))
                continue
            if kv is not None:
                self._make_room(kv, batch, preempted)
            room = max(float(budget - batch.size), 0.0)
            tokens, lengths, finished = 0.0, [], []
            for q in pending:
                if room <= 0:
                    break
                take = min(left[q], room)
                left[q] -= take
                room -= take
                tokens += take
                lengths.append(float(ins[q]))
                if left[q] <= 0:
                    finished.append(q)
            length = float(np.mean(lengths)) if lengths else 0.0
            joins = tokens / length if length else 0.0
            dt = k.mixed_iteration(g, float(batch.size), batch.context(), joins, length, micro)
            log.note_batch(batch.size + len(lengths), dt)
            t += dt
            before = batch.ids
            batch.step(t, log)
            if kv is not None and batch.size < before.size:
                for q in np.setdiff1d(before, batch.ids):
                    kv.release(int(q))
            if finished:
                for q in finished:
                    del left[q]
                pending = pending[len(finished) :]
                fresh = []
                for q in finished:
                    if q in resumed:
                        ctx, rest = resumed.pop(q)
                        batch.resume(q, ctx, rest)
                    elif log.steps[q] > 0:
                        fresh.append(q)
                    else:
                        log.done[q] = t
                        if kv is not None:
                            kv.release(q)
                if fresh:
                    batch.join(np.array(fresh, dtype=np.int64), log, ins)

    @staticmethod
    def _make_room(
        kv: PagedKV, batch: DecodeBatch, preempted: list[tuple[int, float, float]]
    ) -> None:
        """A block for every running sequence about to cross a block boundary,
        preempting the newest ones while none is free."""
        i = 0
        while i < batch.size:
            q = int(batch.ids[i])
            if kv.grow(q, float(batch.ctx[i]) + 1.0):
                i += 1
                continue
            victim, ctx, rest = batch.evict_newest()
            kv.release(victim)
            preempted.insert(0, (victim, ctx, rest))
            if victim == q:
                continue  # the one that needed the block has gone
