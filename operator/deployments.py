"""What the operator process keeps in memory per deployment, between passes: the lock
that serialises its passes, its failures in a row, the parsed spec and the planner's
last result. Forgotten when the deployment is deleted, so the memory stays bounded by
the deployments that exist. It also counts the passes in flight, so that the operator
can stop by letting them finish (``drain``) before it closes what they use."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

from exegpt.planner.plan import Infeasible, Plan

from .backoff import Failures
from .parsing import Parsed


@dataclass
class PassCache:
    """What a pass over one deployment reuses from the last: the parsed spec (by the
    raw spec's hash) and the planner's result (by the planning inputs' hash). A pass
    whose status write failed then does not plan again on its retry."""

    spec_key: str = ""
    parsed: Parsed | None = None
    plan_key: str = ""
    planned: Plan | Infeasible | None = None


@dataclass
class DeploymentMemory:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: Failures = field(default_factory=Failures)
    cache: PassCache = field(default_factory=PassCache)
    phased: bool = False  # its periodic passes were moved to their phase (resync_phase)


def resync_phase(uid: str, period: float) -> float:
    """Where in each resync period a deployment's periodic pass falls, in [0, period):
    spread by its uid, so the passes of deployments created (or resumed, after a
    restart) together do not all come at once, every period, as one burst of requests
    that a spec edit of any of them would wait behind."""
    digest = hashlib.sha256(uid.encode()).digest()
    return period * int.from_bytes(digest[:8], "big") / 2**64


class Deployments:
    """Every deployment's memory, by uid; ``written`` is ``reconcile.Context.written``."""

    def __init__(self) -> None:
        self._by_uid: dict[str, DeploymentMemory] = {}
        self.written: dict[str, str] = {}
        self.profiles: dict[str, str] = {}  # ``reconcile.Context.profiles``
        self._stopping = False  # set by ``drain``: no pass starts after it
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def stopping(self) -> bool:
        """Whether the operator is stopping (``drain`` was called)."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """Passes started and not yet ended."""
        return self._in_flight

    def pass_started(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def pass_ended(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop starting passes, and wait up to ``timeout`` seconds for those in flight
        to end; False if some were still running then."""
        self._stopping = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def of(self, uid: str) -> DeploymentMemory:
        memory = self._by_uid.get(uid)
        if memory is None:
            memory = self._by_uid[uid] = DeploymentMemory()
        return memory

    def forget(self, uid: str) -> None:
        self._by_uid.pop(uid, None)
        self.written.pop(uid, None)

    def __len__(self) -> int:
        return len(self._by_uid)
