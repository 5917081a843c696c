"""The discrete-event mode's state: every query's timeline on one replica, and the
running decode batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass
class QueryLog:
    """Per-query timeline of one replica."""

    arrival: FloatArray
    admitted: FloatArray
    done: FloatArray
    steps: FloatArray
    outputs: FloatArray
    lag: FloatArray  # delay added to a query's completion after its last step
    batch_time: float = 0.0  # integral of decode batch size over decode time
    decode_time: float = 0.0

    def note_batch(self, size: int, dt: float) -> None:
        self.batch_time += size * dt
        self.decode_time += dt


class DecodeBatch:
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

    def join(self, ids: NDArray[np.int64], log: QueryLog, inputs: FloatArray) -> None:
        self.ids = np.concatenate((self.ids, ids))
        self.ctx = np.concatenate((self.ctx, inputs[ids]))
        self.left = np.concatenate((self.left, log.steps[ids]))

    def resume(self, query: int, context: float, left: float) -> None:
        """Rejoin a preempted query whose context was computed again."""
        self.ids = np.append(self.ids, query)
        self.ctx = np.append(self.ctx, context)
        self.left = np.append(self.left, left)

    def evict_newest(self) -> tuple[int, float, float]:
        """Take out the member that joined last: (query id, context, steps left)."""
        q, c, r = int(self.ids[-1]), float(self.ctx[-1]), float(self.left[-1])
        self.ids, self.ctx, self.left = self.ids[:-1], self.ctx[:-1], self.left[:-1]
        return q, c, r

    def step(self, t: float, log: QueryLog, lag: bool = False) -> None:
        """One decode iteration ending at ``t``: every member decodes one token; those
        done leave (finishing ``log.lag`` later when ``lag``)."""
        self.ctx += 1.0
        self.left -= 1.0
        fin = self.left <= 0
        if fin.any():
            done = self.ids[fin]
            log.done[done] = t + log.lag[done] if lag else t
            keep = ~fin
            self.ids, self.ctx, self.left = self.ids[keep], self.ctx[keep], self.left[keep]
