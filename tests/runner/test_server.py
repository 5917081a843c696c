"""The HTTP server over a fake engine that emits tokens from its own threads: the
completions API, its errors, streaming, probes, metrics and the graceful stop."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers

from exegpt.runner.metrics import ServingMetrics
from exegpt.runner.server import MAX_BODY_BYTES, Server, build_app, run_server
from exegpt.runner.serving import (
    GenerationRequest,
    Limits,
    NotAccepting,
    RequestRejected,
    Sink,
    TokenEvent,
)
from exegpt.runner.tokenizer import Tokenizer, load_tokenizer

MODEL = "tiny-llm"
VOCAB = 100
LIMITS = Limits(max_input_tokens=32, max_total_tokens=64, vocab_size=VOCAB)


def count_up(prompt: tuple[int, ...]) -> list[int]:
    """The fake model: counts up from the prompt's last token."""
    return [(prompt[-1] + 1 + i) % VOCAB for i in range(VOCAB)]


class FakeEngine:
    """The Engine protocol over a thread per request. A request's tokens come from
    ``continuation``; each waits for ``gate`` (set by default) and ``delay``."""

    def __init__(
        self,
        *,
        continuation: Callable[[tuple[int, ...]], list[int]] = count_up,
        delay: float = 0.0,
        fail_at: int | None = None,
        limits: Limits = LIMITS,
    ) -> None:
        self.metrics = ServingMetrics()
        self.continuation = continuation
        self.delay = delay
        self.fail_at = fail_at
        self.gate = threading.Event()
        self.gate.set()
        self.is_ready = True
        self.accepting = True
        self.submitted: list[GenerationRequest] = []
        self.cancelled: list[int] = []
        self.finished: dict[int, str] = {}
        self._limits = limits
        self._ids = itertools.count(1)
        self._stops: dict[int, threading.Event] = {}
        self._idle = threading.Condition()

    @property
    def ready(self) -> bool:
        return self.is_ready

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def running(self) -> int:
        with self._idle:
            return len(self._stops)

    def submit(self, request: GenerationRequest, sink: Sink) -> int:
        if not self.accepting:
            raise NotAccepting("draining")
        if any(t >= VOCAB for t in request.prompt):
            raise RequestRejected("prompt", f"token ids must be below {VOCAB}")
        if len(request.prompt) + request.max_tokens > self._limits.max_total_tokens:
            raise RequestRejected("max_tokens", "prompt plus max_tokens exceeds 64")
        request_id = next(self._ids)
        stop = threading.Event()
        with self._idle:
            self._stops[request_id] = stop
        self.submitted.append(request)
        self.metrics.admitted(len(request.prompt))
        thread = threading.Thread(target=self._run, args=(request_id, request, sink, stop))
        thread.daemon = True
        thread.start()
        return request_id

    def _run(
        self, request_id: int, request: GenerationRequest, sink: Sink, stop: threading.Event
    ) -> None:
        start = time.monotonic()
        tokens = self.continuation(request.prompt)[: request.max_tokens]
        outcome = "length"
        emitted = 0
        for i, token in enumerate(tokens):
            while not self.gate.wait(0.01):
                if stop.is_set():
                    break
            if self.delay:
                stop.wait(self.delay)
            if stop.is_set():
                outcome = "cancelled"
                break
            if self.fail_at == i:
                outcome = "error"
                break
            last = i == len(tokens) - 1
            finished: Any = None
            if request.stop_token is not None and token == request.stop_token:
                finished = "stop"
            elif last:
                finished = "length"
            if i == 0:
                self.metrics.first_token(time.monotonic() - start)
            emitted += 1
            sink(TokenEvent(token=token, index=i, finished=finished))
            if finished:
                outcome = finished
                break
        if outcome in ("cancelled", "error"):
            error = "device fell over" if outcome == "error" else None
            sink(TokenEvent(token=None, index=emitted, finished=outcome, error=error))  # type: ignore[arg-type]
        self.metrics.finished(outcome, emitted, time.monotonic() - start)
        with self._idle:
            self.finished[request_id] = outcome
            del self._stops[request_id]
            self._idle.notify_all()

    def cancel(self, request_id: int) -> None:
        self.cancelled.append(request_id)
        with self._idle:
            stop = self._stops.get(request_id)
        if stop is not None:
            stop.set()

    def begin_drain(self) -> None:
        self.accepting = False

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._stops, timeout)


@asynccontextmanager
async def client_for(
    app: web.Application,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(app)) as client:
        yield client


@asynccontextmanager
async def serve(
    engine: FakeEngine, tokenizer: Tokenizer | None = None
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = build_app(engine, model_name=MODEL, tokenizer=tokenizer)
    async with client_for(app) as client:
        yield client


async def eventually(check: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    """A word-level tokenizer of a few words, ``<eos>`` its end-of-sequence token."""
    words = ["[UNK]", "<eos>", "hello", "world", "how", "are", "you", "today"]
    tokenizer = HFTokenizer(
        models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(["<eos>"])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return tmp_path


def words_continuation(prompt: tuple[int, ...]) -> list[int]:
    """After the prompt: how are you today <eos>."""
    return [4, 5, 6, 7, 1, 2, 2, 2]


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


# --- completions ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_token_id_prompt() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 4}
        )
        assert resp.status == 200
        body = await resp.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {
            "index": 0,
            "text": "",
            "token_ids": [8, 9, 10, 11],
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    request = engine.submitted[0]
    assert request.prompt == (5, 6, 7)
    assert request.max_tokens == 4
    assert request.stop_token is None  # no tokenizer, no stop token
    assert not request.sampling.greedy and request.sampling.temperature == 1.0  # OpenAI default


@pytest.mark.asyncio
async def test_defaults_and_sampling_fields() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"prompt": [1], "temperature": 0, "seed": 3, "x-unknown": 1}
        )
        assert resp.status == 200
        assert len((await resp.json())["choices"][0]["token_ids"]) == 16  # max_tokens default
        resp = await client.post(
            "/v1/completions",
            json={"prompt": [1], "temperature": 0.5, "top_k": 7, "seed": 42, "top_p": 1.0, "n": 1},
        )
        assert resp.status == 200
    greedy, sampled = engine.submitted
    assert greedy.sampling.greedy
    assert not sampled.sampling.greedy
    assert (sampled.sampling.temperature, sampled.sampling.top_k, sampled.seed) == (0.5, 7, 42)


@pytest.mark.asyncio
async def test_batched_prompts_one_choice_each_in_order() -> None:
    engine = FakeEngine(delay=0.001)
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"prompt": [[10], [20, 21], [30]], "max_tokens": 3}
        )
        assert resp.status == 200
        body = await resp.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["token_ids"] for c in body["choices"]] == [[11, 12, 13], [22, 23, 24], [31, 32, 33]]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    assert [r.prompt for r in engine.submitted] == [(10,), (20, 21), (30,)]


@pytest.mark.asyncio
async def test_string_prompt_with_a_tokenizer(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer is not None
    assert tokenizer.eos_token_id == 1
    engine = FakeEngine(continuation=words_continuation)
    async with serve(engine, tokenizer) as client:
        resp = await client.post("/v1/completions", json={"prompt": "hello world", "max_tokens": 8})
        assert resp.status == 200
        body = await resp.json()
        batch = await client.post(
            "/v1/completions", json={"prompt": ["hello", [3]], "max_tokens": 2}
        )
        assert batch.status == 200
        batch_body = await batch.json()
    assert engine.submitted[0].prompt == (2, 3)
    assert engine.submitted[0].stop_token == 1
    choice = body["choices"][0]
    assert choice["token_ids"] == [4, 5, 6, 7, 1]  # ends at <eos>
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == "how are you today"  # <eos> is not text
    assert [c["text"] for c in batch_body["choices"]] == ["how are", "how are"]
    assert [r.prompt for r in engine.submitted[1:]] == [(2,), (3,)]


@pytest.mark.asyncio
async def test_string_prompt_without_a_tokenizer_is_refused() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json={"prompt": "hello"})
        assert resp.status == 400
        error = error_of(await resp.json())
    assert error["param"] == "prompt"
    assert error["type"] == "invalid_request_error"
    assert error["code"] is None
    assert "token ids" in error["message"] and "tokenizer" in error["message"]
    assert engine.submitted == []


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({}, "prompt", "required"),
    ({"prompt": 5}, "prompt", "got an integer"),
    ({"prompt": []}, "prompt", "empty"),
    ({"prompt": [[]]}, "prompt", "prompt[0] is empty"),
    ({"prompt": [1, -2]}, "prompt", "non-negative"),
    ({"prompt": [1, True]}, "prompt", "prompt[1]"),
    ({"prompt": [[1], {"a": 1}]}, "prompt", "prompt[1]"),
    ({"prompt": [1], "model": 3}, "model", "string"),
    ({"prompt": [1], "max_tokens": 0}, "max_tokens", ">= 1"),
    ({"prompt": [1], "max_tokens": 2.5}, "max_tokens", "integer"),
    ({"prompt": [1], "max_tokens": "9"}, "max_tokens", "integer"),
    ({"prompt": [1], "temperature": -1}, "temperature", ">= 0"),
    ({"prompt": [1], "temperature": "hot"}, "temperature", "number"),
    ({"prompt": [1], "top_p": 0.9}, "top_p", "top_k"),
    ({"prompt": [1], "top_k": -1}, "top_k", ">= 0"),
    ({"prompt": [1], "top_k": 1.5}, "top_k", "integer"),
    ({"prompt": [1], "seed": "x"}, "seed", "integer"),
    ({"prompt": [1], "seed": 2**64}, "seed", "integer"),
    ({"prompt": [1], "stream": "yes"}, "stream", "boolean"),
    ({"prompt": [1], "stream_options": {"include_usage": True}}, "stream_options", "stream: true"),
    ({"prompt": [1], "stream": True, "stream_options": 1}, "stream_options", "object"),
    ({"prompt": [1], "n": 2}, "n", "n=1"),
    ({"prompt": [1], "best_of": 3}, "best_of", "best_of"),
    ({"prompt": [1], "stop": ["\n"]}, "stop", "not supported"),
    ({"prompt": [1], "stop": "\n"}, "stop", "not supported"),
    ({"prompt": [1], "echo": True}, "echo", "not supported"),
    ({"prompt": [1], "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": [1], "suffix": "x"}, "suffix", "not supported"),
    ({"prompt": [1], "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"prompt": [1], "frequency_penalty": 1}, "frequency_penalty", "not supported"),
    ({"prompt": [1], "logit_bias": {"1": 5}}, "logit_bias", "not supported"),
]


@pytest.mark.asyncio
async def test_every_invalid_field_is_named() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        for body, param, fragment in INVALID:
            resp = await client.post("/v1/completions", json=body)
            assert resp.status == 400, body
            error = error_of(await resp.json())
            assert error["param"] == param, body
            assert error["type"] == "invalid_request_error"
            assert fragment in error["message"], (body, error["message"])
        resp = await client.post("/v1/completions", data=b"{not json")
        assert resp.status == 400
        assert "JSON object" in error_of(await resp.json())["message"]
        resp = await client.post("/v1/completions", json=[1, 2])
        assert resp.status == 400
    assert engine.submitted == []
    rejected = engine.metrics.snapshot()['exegpt_requests_rejected_total{reason="invalid"}']
    assert rejected == len(INVALID) + 2


@pytest.mark.asyncio
async def test_null_fields_take_their_defaults() -> None:
    engine = FakeEngine()
    body = {
        "prompt": [1],
        "max_tokens": None,
        "temperature": None,
        "stop": None,
        "echo": False,
        "logprobs": None,
        "stream": None,
        "n": None,
        "top_p": 1,
        "stop_": [],
    }
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
    assert engine.submitted[0].max_tokens == 16


@pytest.mark.asyncio
async def test_unknown_model_is_404() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json={"model": "gpt-9", "prompt": [1]})
        assert resp.status == 404
        error = error_of(await resp.json())
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert "gpt-9" in error["message"] and MODEL in error["message"]


@pytest.mark.asyncio
async def test_unknown_routes_and_methods_answer_openai_errors() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        resp = await client.get("/v2/nothing")
        assert resp.status == 404 and resp.content_type == "application/json"
        error = error_of(await resp.json())
        assert error["type"] == "invalid_request_error" and error["code"] == "not_found"
        assert error["message"].startswith("no route GET /v2/nothing: this server answers ")
        assert "POST /v1/completions" in error["message"]

        resp = await client.post("/v1/chat/completions", json={"messages": []})
        assert resp.status == 404
        error = error_of(await resp.json())
        assert error["message"].startswith("chat completions are not served by this engine")

        resp = await client.get("/v1/completions")
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        error = error_of(await resp.json())
        assert error["code"] == "method_not_allowed"
        assert error["message"] == "GET is not allowed on /v1/completions: use POST"
    assert engine.submitted == []


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_413_with_an_openai_error() -> None:
    engine = FakeEngine()
    big = b'{"prompt": [' + b"1," * (MAX_BODY_BYTES // 2) + b"1]}"
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", data=big, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 413
        error = error_of(await resp.json())
    assert error["code"] == "request_too_large"
    assert "larger than 32 MiB: send fewer or shorter prompts" in error["message"]
    assert engine.submitted == []


@pytest.mark.asyncio
async def test_engine_rejection_is_400_with_its_field() -> None:
    engine = FakeEngine(delay=0.05)
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json={"prompt": [1], "max_tokens": 100})
        assert resp.status == 400
        error = error_of(await resp.json())
        assert error["param"] == "max_tokens"
        assert "exceeds 64" in error["message"]
        # in a batch, the refused prompt is named and those already submitted cancelled
        resp = await client.post("/v1/completions", json={"prompt": [[1], [200]]})
        assert resp.status == 400
        error = error_of(await resp.json())
        assert error["param"] == "prompt"
        assert "prompt 1" in error["message"]
        await eventually(lambda: engine.running == 0)
    assert engine.cancelled == [1]
    assert engine.metrics.snapshot()['exegpt_requests_rejected_total{reason="invalid"}'] == 2


@pytest.mark.asyncio
async def test_not_accepting_is_503() -> None:
    engine = FakeEngine()
    engine.accepting = False
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json={"prompt": [1]})
        assert resp.status == 503
        assert "Retry-After" in resp.headers
        error = error_of(await resp.json())
    assert "not accepting" in error["message"]
    assert engine.metrics.snapshot()['exegpt_requests_rejected_total{reason="not_accepting"}'] == 1


@pytest.mark.asyncio
async def test_engine_error_is_500_and_the_rest_of_the_batch_cancelled() -> None:
    engine = FakeEngine(fail_at=2)
    async with serve(engine) as client:
        resp = await client.post("/v1/completions", json={"prompt": [1], "max_tokens": 5})
        assert resp.status == 500
        error = error_of(await resp.json())
    assert error["type"] == "server_error"
    assert "device fell over" in error["message"]


# --- streaming ------------------------------------------------------------------------


async def sse_events(resp: aiohttp.ClientResponse) -> list[str]:
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    text = (await resp.read()).decode()
    assert text.endswith("\n\n")
    events = text.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


@pytest.mark.asyncio
async def test_streaming_sends_a_chunk_per_token_then_done(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    engine = FakeEngine(continuation=words_continuation, delay=0.001)
    async with serve(engine, tokenizer) as client:
        resp = await client.post(
            "/v1/completions",
            json={
                "prompt": "hello",
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        )
        assert resp.status == 200
        events = await sse_events(resp)
        whole = await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 8})
        whole_text = (await whole.json())["choices"][0]["text"]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks.pop()
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["token_ids"] for c in chunks] == [[4], [5], [6], [7], [1]]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["stop"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole_text == "how are you today"


@pytest.mark.asyncio
async def test_streaming_a_batch_interleaves_by_index() -> None:
    engine = FakeEngine(delay=0.001)
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"prompt": [[10], [50]], "max_tokens": 3, "stream": True}
        )
        events = await sse_events(resp)
    assert events[-1] == "[DONE]"
    by_index: dict[int, list[int]] = {0: [], 1: []}
    for event in events[:-1]:
        choice = json.loads(event)["choices"][0]
        by_index[choice["index"]] += choice["token_ids"]
    assert by_index == {0: [11, 12, 13], 1: [51, 52, 53]}


@pytest.mark.asyncio
async def test_streaming_error_is_an_error_event_then_done() -> None:
    engine = FakeEngine(fail_at=1)
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"prompt": [1], "max_tokens": 4, "stream": True}
        )
        events = await sse_events(resp)
    assert json.loads(events[0])["choices"][0]["token_ids"] == [2]
    assert "device fell over" in json.loads(events[1])["error"]["message"]
    assert events[2:] == ["[DONE]"]


@pytest.mark.asyncio
async def test_stream_client_disconnect_cancels_the_request() -> None:
    engine = FakeEngine(delay=0.01)
    async with serve(engine) as client:
        resp = await client.post(
            "/v1/completions", json={"prompt": [1], "max_tokens": 60, "stream": True}
        )
        first = await resp.content.readuntil(b"\n\n")
        assert json.loads(first.removeprefix(b"data: "))["choices"][0]["token_ids"] == [2]
        resp.close()
        await eventually(lambda: engine.finished.get(1) == "cancelled")
    assert engine.cancelled == [1]


@pytest.mark.asyncio
async def test_client_disconnect_while_waiting_cancels_the_request() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    async with serve(engine) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.post("/v1/completions", json={"prompt": [1]}), 0.1)
        await eventually(lambda: engine.finished.get(1) == "cancelled")
    assert engine.cancelled == [1]


# --- probes, models, metrics ----------------------------------------------------------


@pytest.mark.asyncio
async def test_health_and_readiness() -> None:
    engine = FakeEngine()
    engine.is_ready = False
    extra = {"ready": True}
    app = build_app(engine, model_name=MODEL, tokenizer=None, ready=lambda: extra["ready"])
    async with client_for(app) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        engine.is_ready = True
        assert (await client.get("/readyz")).status == 200
        extra["ready"] = False
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200


@pytest.mark.asyncio
async def test_models() -> None:
    async with serve(FakeEngine()) as client:
        listed = await (await client.get("/v1/models")).json()
        one = await client.get(f"/v1/models/{MODEL}")
        missing = await client.get("/v1/models/other")
        assert one.status == 200 and missing.status == 404
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [MODEL]
    assert listed["data"][0]["object"] == "model"


@pytest.mark.asyncio
async def test_metrics_exposition_after_requests() -> None:
    engine = FakeEngine()
    async with serve(engine) as client:
        for prompt in ([1], [1, 2, 3]):
            resp = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 5})
            assert resp.status == 200
        assert (await client.post("/v1/completions", json={"prompt": [1], "n": 3})).status == 400
        resp = await client.get("/metrics")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await resp.text()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            match = re.fullmatch(r"([a-z_]+)(\{.*\})? (\S+)", line)
            assert match, line
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    assert samples['exegpt_requests_total{outcome="length"}'] == 2
    assert samples["exegpt_generated_tokens_total"] == 10
    assert samples["exegpt_requests_admitted_total"] == 2
    assert samples['exegpt_requests_rejected_total{reason="invalid"}'] == 1
    assert samples['exegpt_input_tokens_bucket{le="1"}'] == 1
    assert samples['exegpt_input_tokens_bucket{le="2"}'] == 1
    assert samples['exegpt_input_tokens_bucket{le="4"}'] == 2
    assert (
        samples['exegpt_input_tokens_bucket{le="+Inf"}']
        == samples["exegpt_input_tokens_count"]
        == 2
    )
    assert samples["exegpt_input_tokens_sum"] == 4
    assert samples['exegpt_output_tokens_bucket{le="4"}'] == 0
    assert samples['exegpt_output_tokens_bucket{le="8"}'] == 2
    assert samples["exegpt_time_to_first_token_seconds_count"] == 2
    assert samples["exegpt_request_latency_seconds_count"] == 2
    buckets = [
        v for k, v in samples.items() if k.startswith("exegpt_request_latency_seconds_bucket")
    ]
    assert buckets == sorted(buckets)  # cumulative


# --- the graceful stop ----------------------------------------------------------------


@asynccontextmanager
async def running_server(engine: FakeEngine, grace: float) -> AsyncIterator[tuple[Server, str]]:
    server = Server(
        engine,
        model_name=MODEL,
        host="127.0.0.1",
        port=0,
        grace_seconds=grace,
        shutdown_timeout=1.0,
    )
    await server.start()
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_stop_drains_then_closes() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    async with (
        running_server(engine, grace=5.0) as (server, url),
        aiohttp.ClientSession() as session,
    ):
        assert (await session.get(f"{url}/readyz")).status == 200
        in_flight = asyncio.create_task(
            session.post(f"{url}/v1/completions", json={"prompt": [1], "max_tokens": 3})
        )
        await eventually(lambda: engine.running == 1)
        stopping = asyncio.create_task(server.stop())
        await eventually(lambda: server.draining)
        assert (await session.get(f"{url}/readyz")).status == 503
        assert (await session.get(f"{url}/healthz")).status == 200
        late = await session.post(f"{url}/v1/completions", json={"prompt": [1]})
        assert late.status == 503
        assert not stopping.done()
        engine.gate.set()
        resp = await in_flight
        assert resp.status == 200
        assert (await resp.json())["choices"][0]["token_ids"] == [2, 3, 4]
        assert await stopping is True
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{url}/healthz")
    assert engine.cancelled == []


@pytest.mark.asyncio
async def test_stop_after_the_grace_period_cancels_what_is_left() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    async with (
        running_server(engine, grace=0.1) as (server, url),
        aiohttp.ClientSession() as session,
    ):
        in_flight = asyncio.create_task(session.post(f"{url}/v1/completions", json={"prompt": [1]}))
        await eventually(lambda: engine.running == 1)
        assert await server.stop() is False
        with pytest.raises(aiohttp.ClientError):
            await in_flight
        await eventually(lambda: engine.finished.get(1) == "cancelled")
    assert engine.cancelled == [1]


@pytest.mark.asyncio
async def test_force_stop_ends_the_wait() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    async with (
        running_server(engine, grace=30.0) as (server, url),
        aiohttp.ClientSession() as session,
    ):
        in_flight = asyncio.create_task(session.post(f"{url}/v1/completions", json={"prompt": [1]}))
        await eventually(lambda: engine.running == 1)
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.05)
        started = time.monotonic()
        server.force_stop()
        assert await stopping is False
        assert time.monotonic() - started < 5
        with pytest.raises(aiohttp.ClientError):
            await in_flight
    assert engine.cancelled == [1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.asyncio
async def test_run_server_drains_on_sigterm() -> None:
    engine = FakeEngine()
    engine.gate.clear()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serving = asyncio.create_task(
        run_server(
            engine, host="127.0.0.1", port=port, model_name=MODEL, tokenizer=None, grace_seconds=5
        )
    )
    async with aiohttp.ClientSession() as session:

        async def up() -> bool:
            try:
                return (await session.get(f"{url}/healthz")).status == 200
            except aiohttp.ClientConnectionError:
                return False

        deadline = time.monotonic() + 5
        while not await up():
            assert time.monotonic() < deadline and not serving.done()
            await asyncio.sleep(0.01)
        in_flight = asyncio.create_task(
            session.post(f"{url}/v1/completions", json={"prompt": [1], "max_tokens": 2})
        )
        await eventually(lambda: engine.running == 1)
        os.kill(os.getpid(), signal.SIGTERM)
        await eventually(lambda: not engine.accepting)
        assert (await session.get(f"{url}/readyz")).status == 503
        engine.gate.set()
        assert (await in_flight).status == 200
        assert await serving is True
