"""The discrete-event mode's pipeline: steps of micro-batches through a replica's
stages on a stage-level timeline (``pipeline.StageClock``), as the engine drives them
(``engines.EngineModel.overlapped_steps``).

Each micro-batch is priced at its own size and its own prompts; a step ends when its
last micro-batch leaves the last stage. With fill-and-drain steps the next step starts
then; with overlapped steps each micro-batch starts its next step as soon as it has
left the last stage, while the stages are still busy with the others."""

from __future__ import annotations

import numpy as np

from .costs import CostModel, Group
from .pipeline import StageClock
from .prefill import PrefillLengths
from .querylog import FloatArray


def split(n: int, parts: int) -> list[int]:
    """``n`` queries in at most ``parts`` near-equal micro-batches (none empty), as the
    engine splits a step."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class PipelineSteps:
    """Steps through one pipeline of ``stages`` stages; ``now`` is when the last step
    ended."""

    def __init__(self, costs: CostModel, stages: int) -> None:
        self.k = costs
        self.stages = stages
        self.clock = StageClock(stages)
        self.slot_ready: list[float] = []
        self.now = 0.0

    def _run(self, t: float, jobs: list[tuple[float, float]]) -> float:
        """Run one step's micro-batches (stage time, total hand-over time) no earlier
        than ``t``; the step's end."""
        idle = t > self.now
        overlapped = self.k.overlapped_steps
        hops = max(self.stages - 1, 1)
        end = t
        for j, (stage, chain) in enumerate(jobs):
            if idle or not overlapped or j >= len(self.slot_ready):
                ready = max(t, self.now)
            else:
                ready = self.slot_ready[j]
            done = self.clock.pass_through(ready, stage, chain / hops)
            if j < len(self.slot_ready):
                self.slot_ready[j] = done
            else:
                self.slot_ready.append(done)
            end = max(end, done)
        self.now = end
        return end

    def decode(self, t: float, group: Group, batch: int, context: float, micro: int) -> float:
        """One decode iteration of ``batch`` sequences at mean ``context``, from ``t``;
        when its last token is back."""
        k = self.k
        if self.stages == 1:
            self.now = max(t, self.now) + k.iteration(group, float(batch), context, micro)
            return self.now
        jobs = []
        for size in split(batch, micro):
            stage = k.decode_stage(group, float(size), context)
            jobs.append((stage, k.decode_p2p(group, float(size))[0]))
        return self._run(t, jobs)

    def encode(
        self,
        t: float,
        group: Group,
        prompts: FloatArray,
        lengths: PrefillLengths,
        micro: int,
        chunks: int = 1,
        joined: bool = False,
    ) -> float:
        """Encode ``prompts`` (their lengths) in ``micro`` micro-batches, in
        ``chunks`` steps (chunked prefill), from ``t``; when the last first token is
        back. ``joined``: the engine packs the encoding into the running batch's next
        decode step (vLLM), so it costs its work less a step's floor."""
        k = self.k
        if self.stages == 1:
            xs, ws = lengths.of(prompts)
            _, latency = k.encode_pass(group, float(prompts.size), xs, ws, micro, chunks)
            if joined:
                latency = k.joined_pass(group, latency, micro)
            self.now = max(t, self.now) + latency
            return self.now
        end = t
        for part in np.array_split(prompts, chunks):
            jobs = []
            for mb in np.array_split(part, len(split(part.size, micro))):
                xs, ws = lengths.of(mb)
                stage = k.prefill_stage(group, float(mb.size), xs, ws)
                if joined:
                    stage = k.joined_prefill(group, stage)
                mean = sum(x * w for x, w in zip(xs, ws, strict=True))
                jobs.append((stage, k.encode_p2p(group, float(mb.size), mean)[0]))
            end = self._run(t, jobs)
        return end
