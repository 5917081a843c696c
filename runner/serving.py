"""What the HTTP server and the engine say to each other: a generation request, the
events that stream its tokens back, the errors a request can meet, and the
:class:`Engine` protocol the server drives.

The engine runs its steps on its own thread; it calls a request's ``sink`` from that
thread, once per generated token and a last time with ``finished`` set. The server
moves the events onto its event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from .generate import GREEDY, Sampling
from .metrics import ServingMetrics

FinishReason = Literal["length", "stop", "error", "cancelled"]


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (token ids) and how to continue it: up to ``max_tokens`` new tokens,
    greedy or sampled (``seed`` makes a sampled request reproducible), ending early at
    ``stop_token`` when given."""

    prompt: tuple[int, ...]
    max_tokens: int
    sampling: Sampling = GREEDY
    seed: int = 0
    stop_token: int | None = None


@dataclass(frozen=True)
class TokenEvent:
    """The ``index``-th new token of a request, or (``token`` None) only the end.
    ``finished`` is set on the request's last event; ``error`` says what went wrong
    when it is ``"error"``."""

    token: int | None
    index: int
    finished: FinishReason | None = None
    error: str | None = None


Sink = Callable[[TokenEvent], None]


class RequestRejected(ValueError):
    """A request the engine will never run as given (HTTP 400): ``field`` names the
    request field, the message says what to change."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotAccepting(RuntimeError):
    """The engine takes no new requests now (HTTP 503): it is loading or draining."""


@dataclass(frozen=True)
class Limits:
    """What a request may ask for: ``max_input_tokens`` prompt tokens,
    ``max_total_tokens`` prompt plus new tokens (a KV cache slot's length), token ids
    below ``vocab_size``."""

    max_input_tokens: int
    max_total_tokens: int
    vocab_size: int


class Engine(Protocol):
    """What the server needs from an engine."""

    metrics: ServingMetrics

    @property
    def ready(self) -> bool:
        """Loaded and accepting requests."""
        ...

    @property
    def limits(self) -> Limits: ...

    def submit(self, request: GenerationRequest, sink: Sink) -> int:
        """Queue ``request``; returns its id. Raises :class:`RequestRejected` for a
        request that can never run and :class:`NotAccepting` while loading or
        draining."""
        ...

    def cancel(self, request_id: int) -> None:
        """Stop a request (its client went away); its sink gets ``cancelled``."""
        ...

    def begin_drain(self) -> None:
        """Stop admitting: later submissions raise :class:`NotAccepting`; requests
        already queued or running go on."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is queued or running; False on timeout."""
        ...
