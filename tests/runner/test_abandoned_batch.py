"""A client that abandons a batch: the HTTP server cancels its requests in the real
engine, and those still waiting leave the queue and ``exegpt_queue_length`` at once,
with no further request to update the gauge."""

from __future__ import annotations

import asyncio
import re
import threading

import aiohttp
import pytest

from exegpt.planner.plan import ExecutionConfig
from exegpt.runner.engine import Engine
from exegpt.runner.overhead import StandInChain
from exegpt.runner.server import Server
from exegpt.runner.serving import Limits
from exegpt.runner.topology import MAIN

BATCH = 20  # prompts in the abandoned request
SLOTS = 2  # the engine admits two at a time: the rest wait


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in the exposition"
    return float(match.group(1))


@pytest.mark.asyncio
async def test_an_abandoned_batch_leaves_the_queue_and_its_gauge() -> None:
    gate = threading.Event()  # the chain's steps wait on it: nothing finishes meanwhile
    chain = StandInChain(work=lambda _batch: gate.wait(10))
    engine = Engine(
        ExecutionConfig(strategy="Continuous", decode_batch=SLOTS),
        {MAIN: chain},
        limits=Limits(max_input_tokens=8, max_total_tokens=64, vocab_size=100),
        slots=SLOTS,
    )
    engine.start()
    server = Server(engine, model_name="m", host="127.0.0.1", port=0, shutdown_timeout=1.0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as session:
            body = {"prompt": [[1, 2]] * BATCH, "max_tokens": 32}
            with pytest.raises(TimeoutError):  # the client gives up on the batch
                await asyncio.wait_for(session.post(f"{url}/v1/completions", json=body), 0.5)
            assert not gate.is_set()  # the engine is still inside its first step

            async def queued() -> float:
                resp = await session.get(f"{url}/metrics")
                return _gauge(await resp.text(), "exegpt_queue_length")

            for _ in range(200):
                if await queued() == 0:
                    break
                await asyncio.sleep(0.01)
            assert await queued() == 0
            text = await (await session.get(f"{url}/metrics")).text()
            cancelled = r'^exegpt_requests_total\{outcome="cancelled"\} (\S+)$'
            match = re.search(cancelled, text, re.MULTILINE)
            assert match and float(match.group(1)) == BATCH - SLOTS  # the waiting ones
    finally:
        gate.set()
        await server.close()
        engine.stop(5)
