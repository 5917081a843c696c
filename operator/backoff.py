"""How a deployment whose passes keep failing on API errors is retried: exponential
backoff with a cap, and the failure told apart as transient or permanent.

Pure: the handlers keep one ``Failures`` per deployment, record each failed pass in it
and ask when the next pass is due.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kube import KubeError, is_transient


def is_permanent(exc: KubeError) -> bool:
    """Whether the request fails again until something else changes (RBAC, the object,
    the CRD): 400, 403, 404, 422... As opposed to transient failures (no answer, a
    timeout, 409, 429, 5xx), which the next attempt may get past."""
    return not is_transient(exc.status)


def delay_seconds(failures: int, base_seconds: float, max_seconds: float) -> float:
    """The wait after the ``failures``-th failure in a row: ``base_seconds`` doubled
    for each earlier one, at most ``max_seconds``."""
    if failures <= 0:
        return 0.0
    return float(min(base_seconds * 2.0 ** min(failures - 1, 60), max_seconds))


@dataclass
class Failures:
    """The failures in a row of one deployment's passes (kept in memory)."""

    count: int = 0
    retry_at: float = 0.0  # monotonic seconds: no periodic pass before it
    generation: int = 0  # the spec generation that failed: an edit is tried at once
    permanent: bool = False
    message: str = ""

    def record(
        self, exc: KubeError, generation: int, now: float, base_seconds: float, max_seconds: float
    ) -> float:
        """Count a failed pass; the seconds until the next attempt."""
        self.count += 1
        self.generation = generation
        self.permanent = is_permanent(exc)
        self.message = str(exc)
        delay = delay_seconds(self.count, base_seconds, max_seconds)
        self.retry_at = now + delay
        return delay

    def backing_off(self, generation: int, now: float) -> bool:
        """Whether a periodic pass over ``generation`` should wait (an edited spec is
        never held back)."""
        return self.count > 0 and generation == self.generation and now < self.retry_at

    def clear(self) -> None:
        self.count, self.retry_at, self.permanent, self.message = 0, 0.0, False, ""
