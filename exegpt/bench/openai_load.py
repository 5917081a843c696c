"""Load generation over vLLM's OpenAI API for ``exegpt bench vllm``: streamed
``/v1/completions`` requests of token-id prompts, driven as a closed loop (a new
request as each finishes) or as Poisson arrivals, each one timed as the client sees it.

Every request asks for exactly its output length (``ignore_eos``) at temperature 1 with
a seed of its own, and streams: the first chunk with text marks its first token, the
last one its last token, and the usage chunk at the end gives the tokens it generated.
The API says nothing of when a request's prefill began; a record's ``encoded`` is its
first token less the server's mean prefill time over the run (``prefill_s``, from
vLLM's own ``vllm:request_prefill_time_seconds``), so that its generation time counts
the prefill step as the simulator's latency does.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from exegpt.bench.records import Record
from exegpt.planner.workload import Workload


@dataclass(frozen=True)
class Request:
    """One completion request: its prompt's token ids, output length and seed."""

    prompt: tuple[int, ...]
    max_tokens: int
    seed: int


def make_requests(
    workload: Workload, n: int, rng: np.random.Generator, vocab_size: int
) -> list[Request]:
    """``n`` requests with lengths drawn from ``workload`` and random prompt tokens (the
    three special tokens left out)."""
    inputs, outputs = workload.sample(n, rng)
    seeds = rng.integers(0, 2**31, n)
    return [
        Request(tuple(int(t) for t in rng.integers(3, vocab_size, int(i))), int(o), int(s))
        for i, o, s in zip(inputs, outputs, seeds, strict=True)
    ]


@dataclass(frozen=True)
class Timed:
    """A request as the client saw it (monotonic seconds)."""

    input_tokens: int
    output_tokens: int
    arrival: float
    first_token: float
    last_token: float
    finished: float

    def record(self, prefill_s: float) -> Record:
        """The bench's record, its encoding taken to begin ``prefill_s`` before its
        first token."""
        return Record(
            self.input_tokens, self.output_tokens, self.arrival,
            max(self.arrival, self.first_token - prefill_s), self.first_token,
            self.last_token, self.finished,
        )  # fmt: skip


class RequestFailed(RuntimeError):
    """The server answered a request with an error, or not in full."""


class Client:
    """Streams completions from one OpenAI server (or router) at ``url``."""

    def __init__(self, url: str, model: str, timeout_s: float = 600.0) -> None:
        self.url = f"{url.rstrip('/')}/v1/completions"
        self.model = model
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def one(
        self, session: aiohttp.ClientSession, r: Request, arrival: float | None = None
    ) -> Timed:
        """``r`` streamed; ``arrival``: when it arrived (a Poisson run's scheduled time,
        so that a late send counts against the server, not for it), else now."""
        body = {
            "model": self.model, "prompt": list(r.prompt), "max_tokens": r.max_tokens,
            "ignore_eos": True, "temperature": 1.0, "seed": r.seed, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        arrival = time.monotonic() if arrival is None else arrival
        first = last = 0.0
        generated = -1
        async with session.post(self.url, json=body, timeout=self.timeout) as resp:
            if resp.status != 200:
                raise RequestFailed(f"{self.url}: {resp.status} {await resp.text()}")
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                now = time.monotonic()
                chunk = json.loads(line[6:])
                if chunk.get("choices"):
                    if not first:
                        first = now
                    last = now
                usage = chunk.get("usage")
                if usage:
                    generated = int(usage["completion_tokens"])
        finished = time.monotonic()
        if generated != r.max_tokens or not first:
            raise RequestFailed(
                f"{self.url}: asked for {r.max_tokens} tokens, got {generated} (streamed "
                f"{'some' if first else 'none'})"
            )
        return Timed(len(r.prompt), generated, arrival, first, last, finished)

    async def _closed(self, requests: Sequence[Request], concurrency: int) -> list[Timed]:
        pending = iter(requests)
        out: list[Timed] = []
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                for r in pending:
                    out.append(await self.one(session, r))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
        return out

    async def _poisson(
        self, requests: Sequence[Request], gaps: Sequence[float], rate: float
    ) -> list[Timed]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = []
            at = time.monotonic()
            for r, gap in zip(requests, gaps, strict=True):
                at += gap / rate
                delay = at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(self.one(session, r, at)))
            return list(await asyncio.gather(*tasks))

    def closed_loop(self, requests: Sequence[Request], concurrency: int) -> list[Timed]:
        """``concurrency`` requests in flight, a new one as each finishes."""
        return asyncio.run(self._closed(requests, concurrency))

    def poisson(
        self, requests: Sequence[Request], gaps: Sequence[float], rate: float
    ) -> list[Timed]:
        """``requests`` arriving at Poisson times: ``gaps`` (unit-rate exponential
        draws) divided by ``rate`` per second."""
        return asyncio.run(self._poisson(requests, gaps, rate))

    def warm(self, n: int = 2) -> None:
        """A few short requests, untimed: the server's first requests pay one-off costs."""
        self.closed_loop([Request((5, 6, 7), 4, i) for i in range(n)], n)


def records(timed: Sequence[Timed], prefill_s: float) -> list[Record]:
    return [t.record(prefill_s) for t in timed]
