"""The XRunner's driver: it queues requests, decides every step by the plan's strategy,
runs the steps through the replica's chains and streams each request's tokens.

One thread runs RoundRobin, Static and Continuous (encode steps and decode iterations
on one chain). WorkloadAware runs two: the encode thread encodes batches on the
encoder chain (whose ranks send the caches to the decoders) and the decode thread
admits them into the decoder chain and decodes continuously.

A request finishes when it has ``max_tokens`` tokens or emits its stop token. Static
batching keeps a finished request in its batch (its tokens discarded) until the batch's
longest output ends, as FasterTransformer does, and reports it finished then.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from exegpt.planner.plan import ExecutionConfig

from .batching import Admission, split
from .chain import ChainClient
from .metrics import ServingMetrics
from .sampling import RowSampling
from .serving import (
    FinishReason,
    GenerationRequest,
    Limits,
    NotAccepting,
    RequestRejected,
    Sink,
    TokenEvent,
)
from .wire import Command, Op

log = logging.getLogger(__name__)


@dataclass
class Timings:
    """When a request arrived, was first encoded, got its first and last token, and
    was reported finished (monotonic seconds)."""

    arrival: float
    encoded: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    finished: float | None = None


@dataclass(eq=False)
class _Request:
    id: int
    request: GenerationRequest
    sink: Sink
    timings: Timings
    tokens: list[int] = field(default_factory=list)
    finish: FinishReason | None = None  # decided (Static: reported at the batch's end)
    cancelled: bool = False
    steps: int = 0  # tokens computed, Static's padding included
    parked: bool = False  # Static: finished, and its cache slot is full
    owner: int = 0  # partial TP, decode data parallel: the TP rank that decodes it

    def row(self) -> RowSampling:
        return RowSampling.of(self.request.sampling, self.request.seed, len(self.tokens))


@dataclass(frozen=True)
class Finished:
    """What the engine keeps of a finished request (for benchmarks)."""

    id: int
    input_tokens: int
    output_tokens: int
    reason: FinishReason
    timings: Timings


class Engine:
    """Drives one replica. ``main`` is the chain of RoundRobin, Static and Continuous;
    ``encoder`` and ``decoder`` those of WorkloadAware."""

    def __init__(
        self,
        config: ExecutionConfig,
        chains: dict[str, ChainClient],
        *,
        limits: Limits,
        slots: int,
        metrics: ServingMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        keep_finished: bool = False,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.config = config
        self.chains = chains
        self._limits = limits
        self.metrics = metrics or ServingMetrics()
        self.clock = clock
        self.admission = Admission.of(config, slots)
        self.micro_batches = config.micro_batches
        self.heartbeat_s = heartbeat_s
        # partial tensor parallelism: the phase that runs data parallel over the TP ranks
        partial = config.tp_scope != "all" and config.tensor_parallel > 1
        self._dp_phase = (
            ("encode" if config.tp_scope == "decode" else "decode")
            if partial and config.strategy != "WorkloadAware"
            else None
        )
        self._dp_load = [0] * config.tensor_parallel
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._active: dict[int, _Request] = {}  # admitted, not yet reported finished
        self._occupied = 0  # WorkloadAware: requests the decoders hold or will hold
        self._encoded: deque[tuple[list[_Request], list[int]]] = deque()
        self._release: dict[str, list[int]] = {name: [] for name in chains}
        self._last_command: dict[str, float] = {name: time.monotonic() for name in chains}
        self._accepting = True
        self._stopping = False
        self._failed: str | None = None
        self._threads: list[threading.Thread] = []
        self.finished: list[Finished] | None = [] if keep_finished else None

    # -- the Engine protocol -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._accepting and self._failed is None

    @property
    def healthy(self) -> bool:
        """No step has failed (a failed engine cannot go on: its replica restarts)."""
        return self._failed is None

    @property
    def limits(self) -> Limits:
        return self._limits

    def submit(self, request: GenerationRequest, sink: Sink) -> int:
        self._validate(request)
        with self._cond:
            if not self.ready:
                raise NotAccepting(self._failed or "the engine is not accepting requests")
            r = _Request(next(self._ids), request, sink, Timings(self.clock()))
            self._waiting.append(r)
            self.metrics.queue_length(len(self._waiting))
            self._cond.notify_all()
        return r.id

    def cancel(self, request_id: int) -> None:
        with self._cond:
            for r in self._waiting:
                if r.id == request_id:
                    self._waiting.remove(r)
                    self.metrics.queue_length(len(self._waiting))  # it waits no more
                    self._report(r, "cancelled")
                    return
            r2 = self._active.get(request_id)
            if r2 is not None:
                r2.cancelled = True

    def begin_drain(self) -> None:
        with self._cond:
            self._accepting = False

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._waiting or self._active:
                left = deadline - time.monotonic()
                if left <= 0 or self._failed is not None:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def _validate(self, request: GenerationRequest) -> None:
        lim = self._limits
        n = len(request.prompt)
        if n == 0:
            raise RequestRejected("prompt", "is empty; send at least one token")
        if n > lim.max_input_tokens:
            raise RequestRejected(
                "prompt",
                f"has {n} tokens; this deployment takes at most {lim.max_input_tokens} "
                "(its workload's longest input)",
            )
        if request.max_tokens < 1:
            raise RequestRejected("max_tokens", "must be at least 1")
        if n + request.max_tokens > lim.max_total_tokens:
            raise RequestRejected(
                "max_tokens",
                f"prompt ({n}) plus max_tokens ({request.max_tokens}) exceeds the "
                f"{lim.max_total_tokens} tokens a KV-cache slot holds; lower max_tokens to "
                f"at most {lim.max_total_tokens - n}",
            )
        bad = [t for t in request.prompt if not 0 <= t < lim.vocab_size]
        if bad:
            raise RequestRejected(
                "prompt", f"token id {bad[0]} is outside the vocabulary (0..{lim.vocab_size - 1})"
            )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        loops: list[Callable[[], None]]
        if self.config.strategy == "WorkloadAware":
            loops = [self._encode_loop, self._decode_loop]
        else:
            loops = [self._main_loop]
        for fn in loops:
            t = threading.Thread(target=self._guard(fn), name=f"exegpt-{fn.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the loops (after what they are doing) and the chains' ranks."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        if self._failed is None:
            for chain in self.chains.values():
                try:
                    chain.stop()
                except Exception:  # a rank already gone: nothing more to stop
                    log.exception("stopping the %s chain", chain.chain.name)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # a failed step fails every request in flight
                log.exception("engine loop failed")
                self._fail(f"the engine failed: {exc}")

        return run

    def _fail(self, message: str) -> None:
        with self._cond:
            self._failed = message
            self._accepting = False
            self._stopping = True
            for r in list(self._waiting) + list(self._active.values()):
                self._report(r, "error", message)
            self._waiting.clear()
            self._active.clear()
            self.metrics.queue_length(0)
            self.metrics.running(0)
            self._cond.notify_all()

    # -- reporting (under the lock) -----------------------------------------------------------
    def _report(self, r: _Request, reason: FinishReason, error: str | None = None) -> None:
        now = self.clock()
        r.timings.finished = now
        r.finish = r.finish or reason
        self._active.pop(r.id, None)
        self.metrics.finished(reason, len(r.tokens), now - r.timings.arrival)
        self.metrics.running(len(self._active))
        if self.finished is not None and reason != "cancelled":
            self.finished.append(
                Finished(r.id, len(r.request.prompt), len(r.tokens), reason, r.timings)
            )
        try:
            r.sink(TokenEvent(None, len(r.tokens), reason, error))
        except Exception:  # a sink must not stop the engine
            log.exception("request %d: sink failed", r.id)
        self._cond.notify_all()

    def _emit(self, r: _Request, token: int, now: float) -> bool:
        """Record a new token of ``r``; True when ``r`` is done with it."""
        r.steps += 1
        if r.finish is not None:
            return True  # Static: a finished request's padding token
        if not r.tokens:
            r.timings.first_token = now
            self.metrics.first_token(now - r.timings.arrival)
        r.tokens.append(token)
        r.timings.last_token = now
        index = len(r.tokens) - 1
        if r.cancelled:
            r.finish = "cancelled"
        elif r.request.stop_token is not None and token == r.request.stop_token:
            r.finish = "stop"
        elif len(r.tokens) >= r.request.max_tokens:
            r.finish = "length"
        try:
            r.sink(TokenEvent(token, index))
        except Exception:
            log.exception("request %d: sink failed", r.id)
            r.cancelled = True
        return r.finish is not None

    # -- steps --------------------------------------------------------------------------------
    def _take(self, k: int) -> list[_Request]:
        batch: list[_Request] = []
        while self._waiting and len(batch) < k:
            r = self._waiting.popleft()
            r.timings.encoded = self.clock()
            self._active[r.id] = r
            self.metrics.admitted(len(r.request.prompt))
            batch.append(r)
        self.metrics.queue_length(len(self._waiting))
        self.metrics.running(len(self._active))
        return batch

    def _prefill(self, chain: ChainClient, batch: list[_Request], micro: int) -> list[int]:
        """Encode ``batch`` in ``micro`` micro-batches; the first token of each."""
        return self._step(chain, Op.PREFILL, batch, micro)

    def _decode(self, chain: ChainClient, batch: list[_Request]) -> list[int]:
        """One decode iteration of ``batch``; the next token of each."""
        return self._step(chain, Op.DECODE, batch, self.micro_batches)

    def _step(self, chain: ChainClient, op: Op, batch: list[_Request], micro: int) -> list[int]:
        """One step of ``batch`` through ``chain`` in ``micro`` micro-batches (the
        chain's pending releases go with the first)."""
        prefill = op == Op.PREFILL
        release = self._releases(chain)
        items: list[tuple[Command, Sequence[Sequence[int]] | Sequence[int] | None]] = []
        at = 0
        for size in split(len(batch), micro):
            part = batch[at : at + size]
            at += size
            if prefill:
                new = [len(r.request.prompt) for r in part]
                owners = self._prefill_owners(part)
                feed: Sequence[Sequence[int]] | Sequence[int] = [
                    list(r.request.prompt) for r in part
                ]
            else:
                new = [1] * len(part)
                owners = [r.owner for r in part] if self._dp_phase == "decode" else []
                feed = [r.tokens[-1] if r.tokens else 0 for r in part]
            rows = [r.row() for r in part]
            cmd = Command(op, [r.id for r in part], new, rows, [] if items else release, owners)
            items.append((cmd, feed))
        phase = "encode" if prefill else "decode"
        start = time.perf_counter()
        tokens = [t for got in chain.run(items) for t in got]
        self.metrics.step(phase, time.perf_counter() - start)
        self.metrics.batch(phase, len(batch))
        return tokens

    def _prefill_owners(self, part: list[_Request]) -> list[int]:
        """Partial TP: which TP rank runs each request's data-parallel phase. Encoding:
        near-equal slices of the micro-batch. Decoding: the least loaded rank, for the
        request's whole life."""
        if self._dp_phase == "encode":
            sizes = split(len(part), len(self._dp_load))
            return [u for u, n in enumerate(sizes) for _ in range(n)]
        if self._dp_phase == "decode":
            for r in part:
                r.owner = min(range(len(self._dp_load)), key=self._dp_load.__getitem__)
                self._dp_load[r.owner] += 1
            return [r.owner for r in part]
        return []

    def _free(self, r: _Request) -> None:
        """``r`` leaves the decoding caches (with the chain's next command)."""
        if self.config.strategy == "WorkloadAware":
            self._release["decoder"].append(r.id)
            self._occupied -= 1
            return
        self._release["main"].append(r.id)
        if self._dp_phase == "decode":
            self._dp_load[r.owner] -= 1

    def _releases(self, chain: ChainClient) -> list[int]:
        """The sequences ``chain`` may free (sent with its next command)."""
        name = chain.chain.name
        release = self._release[name]
        self._release[name] = []
        self._last_command[name] = time.monotonic()
        return release

    def _heartbeat(self, chain: ChainClient) -> None:
        """An idle chain still hears from the driver every ``heartbeat_s`` seconds (and
        frees what it may): its ranks' receives never wait for long, so a rank that
        stops answering is noticed within the process group's timeout."""
        if time.monotonic() - self._last_command[chain.chain.name] < self.heartbeat_s:
            return
        chain.run([(Command(Op.RELEASE, release=self._releases(chain)), None)])

    # -- RoundRobin, Static, Continuous ---------------------------------------------------------
    def _main_loop(self) -> None:
        chain = self.chains["main"]
        static = self.config.strategy == "Static"
        running: list[_Request] = []
        while True:
            with self._cond:
                if not (self._waiting or running or self._stopping):
                    self._cond.wait(self.heartbeat_s)
                idle = not (self._waiting or running or self._stopping)
                if self._stopping and not running:
                    return
                k = self.admission.admit(len(self._waiting), len(running))
                batch = self._take(k) if k else []
            if idle:
                self._heartbeat(chain)
                continue
            if batch:
                tokens = self._prefill(chain, batch, self.micro_batches)
                self.admission.encoded()
                now = self.clock()
                with self._cond:
                    for r, t in zip(batch, tokens, strict=True):
                        self._emit(r, t, now)
                running += batch
                running = self._settle(running, static)
            stepping = [r for r in running if not r.parked]
            if stepping:
                tokens = self._decode(chain, stepping)
                self.admission.decoded()
                now = self.clock()
                with self._cond:
                    for r, t in zip(stepping, tokens, strict=True):
                        self._emit(r, t, now)
                running = self._settle(running, static)

    def _settle(self, running: list[_Request], static: bool) -> list[_Request]:
        """Report finished requests and free their caches (Static: when the whole
        batch is done, or a finished request's cache slot is full)."""
        max_len = self._limits.max_total_tokens
        with self._cond:
            if static:
                if all(r.finish is not None for r in running):
                    for r in running:
                        self._free(r)
                        self._report(r, r.finish or "length")
                    return []
                for r in running:
                    if r.finish is not None and len(r.request.prompt) + r.steps >= max_len:
                        r.parked = True
                return running
            keep = []
            for r in running:
                if r.finish is not None:
                    self._free(r)
                    self._report(r, r.finish)
                else:
                    keep.append(r)
            return keep

    # -- WorkloadAware ----------------------------------------------------------------------------
    def _encode_loop(self) -> None:
        chain = self.chains["encoder"]
        while True:
            with self._cond:
                k = self.admission.admit(len(self._waiting), self._occupied)
                if not k and not self._stopping:
                    self._cond.wait(self.heartbeat_s)
                    k = self.admission.admit(len(self._waiting), self._occupied)
                if self._stopping:
                    return
                batch = self._take(k) if k else []
                self._occupied += len(batch)
            if not batch:
                self._heartbeat(chain)
                continue
            # one command: the decoders admit what one encoding shipped
            tokens = self._prefill(chain, batch, 1)
            now = self.clock()
            with self._cond:
                for r, t in zip(batch, tokens, strict=True):
                    self._emit(r, t, now)
                self._encoded.append((batch, [len(r.request.prompt) for r in batch]))
                self._cond.notify_all()

    def _decode_loop(self) -> None:
        chain = self.chains["decoder"]
        running: list[_Request] = []
        while True:
            with self._cond:
                if not (self._encoded or running or self._stopping):
                    self._cond.wait(self.heartbeat_s)
                idle = not (self._encoded or running or self._stopping)
                if self._stopping and not running and not self._encoded:
                    return
                arrived = list(self._encoded)
                self._encoded.clear()
            if idle:
                self._heartbeat(chain)
                continue
            for batch, lengths in arrived:
                release = self._releases(chain)
                cmd = Command(
                    Op.ADMIT, [r.id for r in batch], lengths, [r.row() for r in batch], release
                )
                chain.run([(cmd, None)])
                running += batch
            running = self._settle(running, static=False)
            if running:
                tokens = self._decode(chain, running)
                now = self.clock()
                with self._cond:
                    for r, t in zip(running, tokens, strict=True):
                        self._emit(r, t, now)
                running = self._settle(running, static=False)
