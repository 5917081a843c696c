"""Where a benchmark's own process stalls: its event loop's lag and its garbage
collector's pauses, with the peak resident memory of the process.

A benchmark that serves what it measures in its own event loop (``exegpt bench
operator`` serves the emulated API) delays every answer while its loop is stalled; the
measured latency then includes the benchmark's pauses. ``Stalls`` records them as
intervals on the ``time.monotonic`` clock, so that a slow measurement can be told to
overlap one or not (``overlapping``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

LOOP_TICK_S = 0.05
STALL_S = 0.25
"""A stall is a loop lag or a collection of at least this long (shorter ones are
counted, not kept)."""
MAX_KEPT = 10_000


@dataclass
class Stalls:
    """The loop's stalls and the collector's pauses while ``watching``."""

    loop_stalls: list[tuple[float, float]] = field(default_factory=list)
    """(start, seconds) of each loop lag of at least ``STALL_S``."""
    gc_pauses: list[tuple[float, float, int]] = field(default_factory=list)
    """(start, seconds, generation) of each collection of at least ``STALL_S``."""
    gc_count: list[int] = field(default_factory=lambda: [0, 0, 0])
    gc_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    gc_max_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    max_loop_lag_s: float = 0.0
    _gc_began: float = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_began = time.monotonic()
            return
        seconds = time.monotonic() - self._gc_began
        gen = int(info.get("generation", 0))
        self.gc_count[gen] += 1
        self.gc_seconds[gen] += seconds
        self.gc_max_seconds[gen] = max(self.gc_max_seconds[gen], seconds)
        if seconds >= STALL_S and len(self.gc_pauses) < MAX_KEPT:
            self.gc_pauses.append((self._gc_began, seconds, gen))

    async def _tick(self) -> None:
        while True:
            due = time.monotonic() + LOOP_TICK_S
            await asyncio.sleep(LOOP_TICK_S)
            lag = time.monotonic() - due
            self.max_loop_lag_s = max(self.max_loop_lag_s, lag)
            if lag >= STALL_S and len(self.loop_stalls) < MAX_KEPT:
                self.loop_stalls.append((due, lag))

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[Stalls]:
        """Record while the block runs (the collector's pauses, and the lag of the
        running loop)."""
        gc.callbacks.append(self._on_gc)
        ticker = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            gc.callbacks.remove(self._on_gc)

    def intervals(self) -> list[tuple[float, float]]:
        """Every kept stall as (start, end), loop lags and collections together."""
        return sorted(
            [(s, s + d) for s, d in self.loop_stalls] + [(s, s + d) for s, d, _ in self.gc_pauses]
        )

    def overlapping(self, begin: float, end: float) -> float:
        """Seconds of ``[begin, end]`` covered by kept stalls (overlaps counted once)."""
        covered, reach = 0.0, begin
        for s, e in self.intervals():
            s, e = max(s, reach), min(e, end)
            if e > s:
                covered += e - s
                reach = e
        return covered

    def summary(self) -> dict[str, Any]:
        return {
            "stall_threshold_seconds": STALL_S,
            "loop_stalls": len(self.loop_stalls),
            "loop_stall_seconds": sum(d for _, d in self.loop_stalls),
            "max_loop_lag_seconds": self.max_loop_lag_s,
            "gc_collections": self.gc_count,
            "gc_seconds": self.gc_seconds,
            "gc_max_pause_seconds": self.gc_max_seconds,
            "gc_pauses_over_threshold": len(self.gc_pauses),
        }


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, MiB (``getrusage``; Linux reports
    KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
