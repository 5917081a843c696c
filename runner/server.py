"""The XRunner's HTTP server: OpenAI-compatible completions over an :class:`Engine`,
health and readiness probes, Prometheus metrics, and a graceful drain on shutdown.

The engine calls a request's sink on its own thread; each HTTP request gets an
:class:`asyncio.Queue` that the sink feeds through ``loop.call_soon_threadsafe``.
docs/serving.md describes the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from .auth import bearer_middleware
from .generate import GREEDY, Sampling
from .metrics import CONTENT_TYPE
from .serving import (
    Engine,
    GenerationRequest,
    NotAccepting,
    RequestRejected,
    Sink,
    TokenEvent,
)
from .tokenizer import IncrementalDecoder, Tokenizer

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
MAX_BODY_BYTES = 32 * 1024 * 1024
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1

JSON = dict[str, Any]


# --- errors -------------------------------------------------------------------------


class ApiError(Exception):
    """An OpenAI-style error response: HTTP ``status``, a ``message`` saying what to
    change, the request field it is about (``param``)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind
        self.code = code

    def body(self) -> JSON:
        """The ``{"error": {...}}`` body."""
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        """The JSON response."""
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return web.json_response(self.body(), status=self.status, headers=headers)


def _json_type(value: object) -> str:
    """The JSON name of ``value``'s type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# --- request parsing ----------------------------------------------------------------


@dataclass(frozen=True)
class CompletionParams:
    """A checked ``/v1/completions`` request: one prompt per choice, and how to
    continue each."""

    prompts: tuple[tuple[int, ...], ...]
    max_tokens: int
    sampling: Sampling
    seed: int
    stream: bool
    include_usage: bool

    def requests(self, stop_token: int | None) -> list[GenerationRequest]:
        """The engine requests, one per prompt, in order."""
        return [
            GenerationRequest(
                prompt=prompt,
                max_tokens=self.max_tokens,
                sampling=self.sampling,
                seed=self.seed,
                stop_token=stop_token,
            )
            for prompt in self.prompts
        ]


_PROMPT_FORMS = "a string, a list of token ids, or a list of strings or of token-id lists"


def _token_ids(value: list[Any], where: str) -> tuple[int, ...]:
    if not value:
        raise ApiError(f"{where} is empty: give at least one token", param="prompt")
    for i, token in enumerate(value):
        if not _is_int(token) or token < 0:
            raise ApiError(
                f"{where}[{i}] must be a non-negative integer token id, got {_json_type(token)}",
                param="prompt",
            )
    return tuple(value)


def _encode(text: str, tokenizer: Tokenizer | None, where: str) -> tuple[int, ...]:
    if tokenizer is None:
        raise ApiError(
            f"{where} is text, but this server has no tokenizer: send the prompt as "
            "token ids (a list of integers), or serve the model with its tokenizer.json",
            param="prompt",
        )
    ids = tokenizer.encode(text)
    if not ids:
        raise ApiError(f"{where} encodes to no tokens: give a non-empty prompt", param="prompt")
    return tuple(ids)


def parse_prompts(value: object, tokenizer: Tokenizer | None) -> tuple[tuple[int, ...], ...]:
    """The token ids of each prompt of ``value``: a string, a list of token ids, or a
    list of those (a batch)."""
    if value is None:
        raise ApiError(f"prompt is required: {_PROMPT_FORMS}", param="prompt")
    if isinstance(value, str):
        return (_encode(value, tokenizer, "prompt"),)
    if not isinstance(value, list):
        raise ApiError(f"prompt must be {_PROMPT_FORMS}, got {_json_type(value)}", param="prompt")
    if not value:
        raise ApiError("prompt is an empty list: give at least one prompt", param="prompt")
    if not any(isinstance(v, str | list) for v in value):
        return (_token_ids(value, "prompt"),)
    prompts: list[tuple[int, ...]] = []
    for i, item in enumerate(value):
        where = f"prompt[{i}]"
        if isinstance(item, str):
            prompts.append(_encode(item, tokenizer, where))
        elif isinstance(item, list):
            prompts.append(_token_ids(item, where))
        else:
            raise ApiError(
                f"{where} must be a string or a list of token ids, got {_json_type(item)}",
                param="prompt",
            )
    return tuple(prompts)


def _only(body: Mapping[str, Any], field: str, allowed: Sequence[object], fix: str) -> None:
    """``field`` is absent, null, or one of ``allowed`` (compared by type and value)."""
    value = body.get(field)
    if value is None:
        return
    for ok in allowed:
        if type(value) is type(ok) and value == ok:
            return
        if _is_number(value) and _is_number(ok) and value == ok:
            return
    raise ApiError(f"{field}={json.dumps(value)} is not supported: {fix}", param=field)


def _checked(
    body: Mapping[str, Any], name: str, default: Any, ok: Callable[[Any], bool], expected: str
) -> Any:
    """``body[name]``, or ``default`` when absent or null; a 400 naming the field when
    ``ok`` refuses it."""
    value = body.get(name)
    if value is None:
        return default
    if not ok(value):
        raise ApiError(f"{name} must be {expected}, got {json.dumps(value)}", param=name)
    return value


def parse_completion(
    body: object, *, model_name: str, tokenizer: Tokenizer | None
) -> CompletionParams:
    """Check a ``/v1/completions`` body. Raises :class:`ApiError` naming the first
    field that is wrong and how to fix it. Fields this server does not know are
    ignored."""
    if not isinstance(body, dict):
        raise ApiError(f"the request body must be a JSON object, got {_json_type(body)}")
    model = body.get("model")
    if model is not None:
        if not isinstance(model, str):
            raise ApiError(f"model must be a string, got {_json_type(model)}", param="model")
        if model != model_name:
            raise ApiError(
                f"The model `{model}` does not exist: this server serves `{model_name}`",
                param="model",
                status=404,
                code="model_not_found",
            )
    prompts = parse_prompts(body.get("prompt"), tokenizer)

    max_tokens = _checked(
        body, "max_tokens", DEFAULT_MAX_TOKENS, lambda v: _is_int(v) and v >= 1,
        "an integer >= 1",
    )  # fmt: skip
    temperature = _checked(
        body, "temperature", DEFAULT_TEMPERATURE, lambda v: _is_number(v) and v >= 0,
        "a number >= 0 (0 is greedy)",
    )  # fmt: skip
    top_k = _checked(
        body, "top_k", 0, lambda v: _is_int(v) and v >= 0,
        "an integer >= 0 (0 keeps every token)",
    )  # fmt: skip
    seed = _checked(
        body, "seed", None, lambda v: _is_int(v) and SEED_MIN <= v <= SEED_MAX,
        f"an integer from {SEED_MIN} to {SEED_MAX}",
    )  # fmt: skip

    stream = body.get("stream")
    if stream is None:
        stream = False
    elif not isinstance(stream, bool):
        raise ApiError(f"stream must be a boolean, got {_json_type(stream)}", param="stream")

    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise ApiError(
                f"stream_options must be an object, got {_json_type(options)}",
                param="stream_options",
            )
        if not stream:
            raise ApiError(
                "stream_options is only allowed with stream: true", param="stream_options"
            )
        usage = options.get("include_usage")
        if usage is not None and not isinstance(usage, bool):
            raise ApiError(
                f"stream_options.include_usage must be a boolean, got {_json_type(usage)}",
                param="stream_options",
            )
        include_usage = bool(usage)

    _only(body, "top_p", [1], "only top_p 1.0 is supported; use top_k to narrow sampling")
    _only(body, "n", [1], "only one choice per prompt (n=1); send the prompt again for more")
    _only(body, "best_of", [1], "only best_of=1 is supported")
    _only(
        body,
        "stop",
        [[]],
        "stop sequences are not supported; generation stops at "
        "max_tokens or the model's end-of-sequence token",
    )
    _only(body, "echo", [False], "echo is not supported; the prompt is not returned")
    _only(body, "logprobs", [], "logprobs are not supported; leave the field out or null")
    _only(body, "suffix", [], "suffix is not supported; leave the field out or null")
    _only(body, "presence_penalty", [0], "penalties are not supported; leave it out or 0")
    _only(body, "frequency_penalty", [0], "penalties are not supported; leave it out or 0")
    _only(body, "logit_bias", [{}], "logit_bias is not supported; leave it out or null")

    if temperature == 0:
        sampling = GREEDY
        seed = 0
    else:
        sampling = Sampling(greedy=False, temperature=float(temperature), top_k=top_k)
        if seed is None:
            seed = secrets.randbits(63)
    return CompletionParams(
        prompts=prompts,
        max_tokens=max_tokens,
        sampling=sampling,
        seed=seed,
        stream=stream,
        include_usage=include_usage,
    )


# --- one HTTP request's engine requests -----------------------------------------------


class _Batch:
    """The engine requests of one HTTP request: submits them, receives their events on
    the event loop, cancels those still running when the HTTP request ends early."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._engine = engine
        self._loop = loop
        self._queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()
        self._ids: list[int | None] = [None] * size
        self._open = [False] * size

    def _sink(self, index: int) -> Sink:
        def sink(event: TokenEvent) -> None:
            # The event loop may be gone when a late event comes in: nobody listens.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, (index, event))

        return sink

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Submit every request; when one is refused, cancel those submitted and
        raise (a batch's :class:`RequestRejected` says which prompt)."""
        for i, request in enumerate(requests):
            try:
                self._ids[i] = self._engine.submit(request, self._sink(i))
            except RequestRejected as err:
                self.cancel()
                if len(requests) > 1:
                    raise RequestRejected(err.field, f"prompt {i}: {err.message}") from err
                raise
            except BaseException:
                self.cancel()
                raise
            self._open[i] = True

    @property
    def pending(self) -> bool:
        """Some request has not sent its last event."""
        return any(self._open)

    async def next(self) -> tuple[int, TokenEvent]:
        """The next event: the prompt's index and the event."""
        index, event = await self._queue.get()
        if event.finished is not None:
            self._open[index] = False
        return index, event

    def cancel(self) -> None:
        """Cancel every request still running."""
        for i, request_id in enumerate(self._ids):
            if request_id is not None and self._open[i]:
                self._open[i] = False
                self._engine.cancel(request_id)


# --- the application ----------------------------------------------------------------


def _sse(data: JSON | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def _usage(prompts: Sequence[Sequence[int]], completion_tokens: int) -> JSON:
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _event_error(event: TokenEvent) -> ApiError | None:
    """The error that ends a request early, if ``event`` is one."""
    if event.finished == "error":
        return ApiError(
            f"generation failed: {event.error or 'unknown engine error'}",
            status=500,
            kind="server_error",
        )
    if event.finished == "cancelled":
        return ApiError(
            "the server cancelled the request (it is shutting down); retry",
            status=503,
            kind="server_error",
        )
    return None


class _Api:
    """The route handlers, over one engine."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        tokenizer: Tokenizer | None,
        ready: Callable[[], bool] | None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.ready = ready
        self.healthy = healthy
        self.created = int(time.time())
        self.in_flight: set[asyncio.Task[Any]] = set()

    async def cancel_in_flight(self, timeout: float) -> None:
        """Cancel the completions still being answered (their engine requests with
        them) and wait up to ``timeout`` seconds for them to end."""
        tasks = [task for task in self.in_flight if not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _model_card(self) -> JSON:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "exegpt",
        }

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is alive, and (when ``healthy`` is given) able to go on: a
        worker whose replica lost a peer answers 500, so that it is restarted."""
        if self.healthy is not None and not self.healthy():
            return web.Response(text="unhealthy", status=500)
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        """The engine is loaded and accepting, and the server is not draining."""
        ok = self.engine.ready and (self.ready is None or self.ready())
        return web.Response(text="ok" if ok else "not ready", status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """The Prometheus exposition."""
        text = self.engine.metrics.render()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def models(self, request: web.Request) -> web.Response:
        """The OpenAI model list: the one model served."""
        return web.json_response({"object": "list", "data": [self._model_card()]})

    async def model(self, request: web.Request) -> web.Response:
        """One model, if it is the one served."""
        name = request.match_info["model"]
        if name != self.model_name:
            return ApiError(
                f"The model `{name}` does not exist: this server serves `{self.model_name}`",
                param="model",
                status=404,
                code="model_not_found",
            ).response()
        return web.json_response(self._model_card())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/completions``."""
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - aiohttp runs handlers in tasks
            return await self._completions(request)
        self.in_flight.add(task)
        try:
            return await self._completions(request)
        finally:
            self.in_flight.discard(task)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        metrics = self.engine.metrics
        try:
            body = await request.json()
        except ValueError:
            metrics.rejected("invalid")
            return ApiError("the request body must be a JSON object").response()
        try:
            params = parse_completion(body, model_name=self.model_name, tokenizer=self.tokenizer)
        except ApiError as err:
            metrics.rejected("invalid")
            return err.response()
        stop_token = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        batch = _Batch(self.engine, asyncio.get_running_loop(), len(params.prompts))
        try:
            batch.submit(params.requests(stop_token))
        except RequestRejected as err:
            metrics.rejected("invalid")
            return ApiError(f"{err.field}: {err.message}", param=err.field).response()
        except NotAccepting as err:
            metrics.rejected("not_accepting")
            reason = str(err) or "the server is loading or shutting down"
            return ApiError(
                f"not accepting requests now: {reason}; retry", status=503, kind="server_error"
            ).response()
        meta: JSON = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model_name,
        }
        try:
            if params.stream:
                return await self._stream(request, params, batch, meta)
            return await self._complete(params, batch, meta)
        finally:
            batch.cancel()  # the client went away, or an error ended the response early

    async def _complete(self, params: CompletionParams, batch: _Batch, meta: JSON) -> web.Response:
        n = len(params.prompts)
        tokens: list[list[int]] = [[] for _ in range(n)]
        reasons: list[str | None] = [None] * n
        while batch.pending:
            index, event = await batch.next()
            if event.token is not None:
                tokens[index].append(event.token)
            error = _event_error(event)
            if error is not None:
                return error.response()
            if event.finished is not None:
                reasons[index] = event.finished
        choices = [
            {
                "index": i,
                "text": self.tokenizer.decode(tokens[i]) if self.tokenizer else "",
                "token_ids": tokens[i],
                "logprobs": None,
                "finish_reason": reasons[i],
            }
            for i in range(n)
        ]
        usage = _usage(params.prompts, sum(len(t) for t in tokens))
        return web.json_response({**meta, "choices": choices, "usage": usage})

    async def _stream(
        self, request: web.Request, params: CompletionParams, batch: _Batch, meta: JSON
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        decoders: list[IncrementalDecoder | None] = [
            self.tokenizer.stream() if self.tokenizer else None for _ in params.prompts
        ]
        generated = 0
        try:
            while batch.pending:
                index, event = await batch.next()
                error = _event_error(event)
                if error is not None:
                    await response.write(_sse(error.body()))
                    break
                decoder = decoders[index]
                ids: list[int] = []
                text = ""
                if event.token is not None:
                    ids.append(event.token)
                    generated += 1
                    if decoder is not None:
                        text = decoder.add(event.token)
                if event.finished is not None and decoder is not None:
                    text += decoder.flush()
                choice = {
                    "index": index,
                    "text": text,
                    "token_ids": ids,
                    "logprobs": None,
                    "finish_reason": event.finished,
                }
                await response.write(_sse({**meta, "choices": [choice]}))
            else:
                if params.include_usage:
                    usage = _usage(params.prompts, generated)
                    await response.write(_sse({**meta, "choices": [], "usage": usage}))
            await response.write(_sse("[DONE]"))
            await response.write_eof()
        except ConnectionResetError:
            log.debug("client went away during a streamed completion")
        return response


_API = web.AppKey("exegpt.api", _Api)

ROUTES = "POST /v1/completions, GET /v1/models, /healthz, /readyz, /metrics"


def _http_error(request: web.Request, exc: web.HTTPException) -> ApiError:
    """What aiohttp raises outside the handlers' own errors (no route, a method the
    route does not take, a body over the size limit), as OpenAI's error body."""
    where = f"{request.method} {request.path}"
    if exc.status == 404:
        if request.path.rstrip("/") == "/v1/chat/completions":
            message = (
                "chat completions are not served by this engine: send the conversation "
                "as a prompt to POST /v1/completions"
            )
        else:
            message = f"no route {where}: this server answers {ROUTES}"
        return ApiError(message, status=404, code="not_found")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return ApiError(
            f"{request.method} is not allowed on {request.path}: use {allowed or 'another method'}",
            status=405,
            code="method_not_allowed",
        )
    if exc.status == 413:
        return ApiError(
            f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB: send fewer or "
            "shorter prompts per request",
            status=413,
            code="request_too_large",
        )
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return ApiError(f"{where}: {exc.reason}", status=exc.status, kind=kind)


@web.middleware
async def openai_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer aiohttp's own 4xx and 5xx with OpenAI's error body (docs/serving.md); a
    405 keeps its ``Allow`` header."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _http_error(request, exc).response()
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def build_app(
    engine: Engine,
    *,
    model_name: str,
    tokenizer: Tokenizer | None,
    ready: Callable[[], bool] | None = None,
    healthy: Callable[[], bool] | None = None,
    api_token: str | None = None,
) -> web.Application:
    """The HTTP application over ``engine``. ``/readyz`` answers 200 only while
    ``engine.ready`` and ``ready()`` (when given) are both true; ``/healthz`` 500 when
    ``healthy()`` (when given) is false. With ``api_token``, ``/v1/*`` requires
    ``Authorization: Bearer <api_token>`` (runner/auth.py)."""
    api = _Api(engine, model_name, tokenizer, ready, healthy)
    middlewares: list[Middleware] = [openai_errors]
    if api_token:
        middlewares.append(bearer_middleware(api_token))
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=middlewares)
    app[_API] = api
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{model}", api.model)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/metrics", api.metrics)
    return app


# --- running and draining -------------------------------------------------------------


class Server:
    """The application on a TCP port, with a graceful stop: :meth:`stop` turns
    ``/readyz`` to 503, stops the engine admitting, waits up to ``grace_seconds`` for
    the requests in flight to finish, then closes the port (handlers still running
    after ``shutdown_timeout`` more seconds are cancelled, and so are their engine
    requests)."""

    def __init__(
        self,
        engine: Engine,
        *,
        model_name: str,
        tokenizer: Tokenizer | None = None,
        host: str = "0.0.0.0",
        port: int = 8000,
        grace_seconds: float = 60.0,
        shutdown_timeout: float = 5.0,
        ready: Callable[[], bool] | None = None,
        healthy: Callable[[], bool] | None = None,
        api_token: str | None = None,
    ) -> None:
        self.engine = engine
        self.host = host
        self.grace_seconds = grace_seconds
        self._requested_port = port
        self._shutdown_timeout = shutdown_timeout
        self._ready = ready
        self._draining = False
        self._force = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Task[bool] | None = None
        self.app = build_app(
            engine,
            model_name=model_name,
            tokenizer=tokenizer,
            ready=self._accepting,
            healthy=healthy,
            api_token=api_token,
        )

    def _accepting(self) -> bool:
        return not self._draining and (self._ready is None or self._ready())

    @property
    def draining(self) -> bool:
        """:meth:`stop` has begun."""
        return self._draining

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose when asked for port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the server is not started")
        address = self._runner.addresses[0]
        return int(address[1])

    async def start(self) -> None:
        """Listen on ``host``:``port``."""
        if self._runner is not None:
            raise RuntimeError("the server is already started")
        runner = web.AppRunner(
            self.app, handler_cancellation=True, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self._requested_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("serving on %s:%d", self.host, self.port)

    def force_stop(self) -> None:
        """Stop waiting for requests in flight: a :meth:`stop` under way closes the
        port now."""
        self._force.set()

    async def stop(self) -> bool:
        """Drain and close; True when every request finished within the grace period.
        Calling it again waits for the same stop."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return await asyncio.shield(self._stopping)

    async def _stop(self) -> bool:
        self._draining = True
        self.engine.begin_drain()
        log.info("draining: waiting up to %.0f s for requests in flight", self.grace_seconds)
        idle_wait = asyncio.ensure_future(self._wait_idle(self.grace_seconds))
        forced = asyncio.ensure_future(self._force.wait())
        await asyncio.wait({idle_wait, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        idle = idle_wait.result() if idle_wait.done() else False
        if not idle_wait.done():
            idle_wait.cancel()
            log.warning("stopping now: requests in flight are cancelled")
        elif not idle:
            log.warning("grace period over: requests still in flight are cancelled")
        if not idle:
            await self.app[_API].cancel_in_flight(self._shutdown_timeout)
        await self.close()
        log.info("stopped")
        return idle

    async def close(self) -> None:
        """Close the port now, without draining (handlers still running are cancelled
        after ``shutdown_timeout``). Nothing to do when not started or stopped."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _wait_idle(self, timeout: float) -> bool:
        """``engine.wait_idle`` on a daemon thread: a forced stop need not wait for it,
        nor does the interpreter at exit."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(result: bool | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(bool(result))

        def work() -> None:
            try:
                result = self.engine.wait_idle(timeout)
            except Exception as err:  # handed to the event loop
                outcome: tuple[bool | None, BaseException | None] = (None, err)
            else:
                outcome = (result, None)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=work, name="exegpt-drain", daemon=True).start()
        return await done


async def run_server(
    engine: Engine,
    *,
    host: str,
    port: int,
    model_name: str,
    tokenizer: Tokenizer | None,
    grace_seconds: float = 60.0,
    ready: Callable[[], bool] | None = None,
    healthy: Callable[[], bool] | None = None,
    api_token: str | None = None,
) -> bool:
    """Serve until SIGTERM or SIGINT, then drain (:meth:`Server.stop`); a second signal
    stops without waiting further. Returns whether every request finished in time."""
    server = Server(
        engine,
        model_name=model_name,
        tokenizer=tokenizer,
        host=host,
        port=port,
        grace_seconds=grace_seconds,
        ready=ready,
        healthy=healthy,
        api_token=api_token,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: stopping without waiting", signum.name)
            server.force_stop()
        else:
            log.info("%s: shutting down", signum.name)
            stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await server.start()
        await stop.wait()
        return await server.stop()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await server.close()
