"""Timing a piece of work: warm-up runs, then the median of repeated runs, timed with CUDA
events on a GPU and a monotonic clock on the CPU."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median: float  # seconds
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples."""
        if not self.samples or self.median <= 0:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median


class Timer:
    """Times ``fn()`` on ``device``.

    ``warmup`` untimed runs come first; then ``repeats`` timed runs, more when one run
    is shorter than ``min_seconds / repeats`` (up to ``max_repeats``), so that short
    kernels are timed over enough runs. ``reset()``, when given, runs untimed before
    each run (to restore state a run changes).
    """

    def __init__(
        self,
        device: torch.device | str,
        *,
        warmup: int = 2,
        repeats: int = 5,
        min_seconds: float = 0.02,
        max_repeats: int = 50,
    ) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.repeats = max(warmup, 0), max(repeats, 1)
        self.min_seconds, self.max_repeats = min_seconds, max(max_repeats, repeats)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _once(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def time(self, fn: Callable[[], object], reset: Callable[[], object] | None = None) -> Timing:
        with torch.inference_mode():
            for _ in range(self.warmup):
                if reset is not None:
                    reset()
                fn()
            self.sync()
            if reset is not None:
                reset()
                self.sync()
            first = self._once(fn)
            wanted = self.repeats
            if first > 0:
                wanted = max(wanted, math.ceil(self.min_seconds / first))
            wanted = min(wanted, self.max_repeats)
            samples = [first]
            for _ in range(wanted - 1):
                if reset is not None:
                    reset()
                    self.sync()
                samples.append(self._once(fn))
        return Timing(statistics.median(samples), tuple(samples))
