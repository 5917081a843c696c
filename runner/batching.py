"""When to encode and how many: the admission rule of each execution strategy.

Each policy answers one question before every step: how many waiting requests to
encode now. Pure: no torch, no clock.

- RoundRobin: an encoding of up to ``encode_batch`` waiting requests once
  ``decode_steps_per_encode`` decode iterations have passed since the last one (at
  the first iteration after that with a request waiting; at once when nothing is
  decoding), as long as KV slots are free; the decode batch refills as requests
  finish.
- WorkloadAware (the encoders): encode up to ``encode_batch`` whenever the decoders
  have room for them; the decoders decode continuously.
- Static: a batch of up to ``encode_batch`` requests, only when the previous batch has
  ended (it ends with its longest output).
- Continuous: every iteration, as many as keep ``decode_batch`` requests running.
"""

from __future__ import annotations

from dataclasses import dataclass

from exegpt.planner.plan import ExecutionConfig


@dataclass
class Admission:
    """The admission rule of ``strategy``; ``slots``: requests the KV caches hold (the
    plan's KV capacity, ``exegpt.planner.kvcapacity``)."""

    strategy: str
    encode_batch: int
    decode_batch: int
    decode_steps_per_encode: int
    slots: int
    since_encode: int = 0

    @classmethod
    def of(cls, config: ExecutionConfig, slots: int) -> Admission:
        return cls(
            strategy=config.strategy,
            encode_batch=config.encode_batch,
            decode_batch=config.decode_batch,
            decode_steps_per_encode=config.decode_steps_per_encode,
            slots=slots,
        )

    def admit(self, waiting: int, running: int) -> int:
        """How many of ``waiting`` requests to encode now, with ``running`` requests
        holding KV slots (WorkloadAware: running or on their way to the decoders)."""
        free = self.slots - running
        if waiting <= 0 or free <= 0:
            return 0
        if self.strategy == "RoundRobin":
            if running and self.since_encode < self.decode_steps_per_encode:
                return 0
            return min(self.encode_batch, waiting, free)
        if self.strategy == "Static":
            return min(self.encode_batch, waiting, free) if running == 0 else 0
        if self.strategy == "Continuous":
            return min(waiting, free, self.decode_batch - running)
        if self.strategy == "WorkloadAware":
            return min(self.encode_batch, waiting, free)
        raise ValueError(f"unknown strategy {self.strategy!r}")

    def encoded(self) -> None:
        self.since_encode = 0

    def decoded(self) -> None:
        self.since_encode += 1


def split(n: int, parts: int) -> list[int]:
    """``n`` requests in at most ``parts`` near-equal micro-batches (none empty)."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def max_encode_batch(config: ExecutionConfig) -> int:
    """The most requests one encoding takes: ``decode_batch`` for Continuous (it may
    refill the whole batch at once), else ``encode_batch``."""
    return config.decode_batch if config.strategy == "Continuous" else config.encode_batch
