"""Pipeline stages as a timeline: how long a step of micro-batches takes to pass
through a pipeline of stages, and how soon the next step can start.

Two ways of driving the stages, one per engine (``engines.py``):

* **fill and drain** (the project's own engine): a step's micro-batches enter the
  first stage one after another, and the step ends when the last one leaves the last
  stage; the next step starts then (the driver needs the step's tokens first). Every
  step pays the pipeline's fill and drain: ``(M + S - 1) x stage + p2p chain``.
* **overlapped** (vLLM: as many batches in flight as there are stages): a micro-batch
  starts its next step as soon as its own tokens are back, so in steady state a step
  costs ``max(M x stage, S x stage + p2p chain)``: the busiest stage's share when the
  pipeline is full, one traversal when it is not.

``StageClock`` is the same thing event by event, for the discrete-event mode: every
stage's next free time, and micro-batches passing through in order.
"""

from __future__ import annotations


def fill_drain(stage: float, chain: float, micro: int, stages: int) -> float:
    """A step of ``micro`` equal micro-batches through ``stages`` stages, from the
    first one entering to the last one leaving (``chain``: the hand-overs of one)."""
    return (micro + stages - 1) * stage + chain


def steady(stage: float, chain: float, micro: int, stages: int) -> float:
    """Time between steps of ``micro`` micro-batches when every micro-batch starts its
    next step as soon as it has left the last stage."""
    return max(micro * stage, stages * stage + chain)


class StageClock:
    """When each stage of a pipeline is next free. A micro-batch occupies one stage
    at a time, in stage order, and waits for a stage still busy with an earlier one."""

    def __init__(self, stages: int) -> None:
        if stages < 1:
            raise ValueError(f"a pipeline has at least one stage, got {stages}")
        self.free = [0.0] * stages

    def pass_through(self, ready: float, stage_time: float, hop: float) -> float:
        """Run one micro-batch that can enter the first stage at ``ready``, busy
        ``stage_time`` on each stage and ``hop`` between stages; when it leaves the
        last stage."""
        t = ready
        last = len(self.free) - 1
        for s, free in enumerate(self.free):
            end = max(t, free) + stage_time
            self.free[s] = end
            t = end + hop if s < last else end
        return t
