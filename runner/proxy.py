"""The HTTP side of a worker pod that is not its replica's driver: health of its own
stage, and the OpenAI API passed through to the driver (the client Service may send a
request to any pod of the role that takes requests)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def build_proxy_app(
    target: str, *, ready: Callable[[], bool], healthy: Callable[[], bool]
) -> web.Application:
    """``/healthz`` and ``/readyz`` of this pod's stage; ``/v1/*`` forwarded to
    ``target`` (``http://host:port``), streamed responses included."""
    session: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def on_cleanup(app: web.Application) -> None:
        await session["s"].close()

    async def healthz(request: web.Request) -> web.Response:
        ok = healthy()
        return web.Response(text="ok" if ok else "unhealthy", status=200 if ok else 500)

    async def readyz(request: web.Request) -> web.Response:
        ok = ready()
        return web.Response(text="ok" if ok else "not ready", status=200 if ok else 503)

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        url = target + request.path_qs
        try:
            upstream = await session["s"].request(request.method, url, data=body, headers=headers)
        except aiohttp.ClientError as exc:
            return web.json_response(
                {"error": {"message": f"the replica's driver is unreachable: {exc}",
                           "type": "server_error", "param": None, "code": None}},
                status=503,
            )  # fmt: skip
        async with upstream:
            out = web.StreamResponse(status=upstream.status)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP_HEADERS:
                    out.headers[k] = v
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application(client_max_size=32 * 2**20)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_route("*", "/v1/{tail:.*}", forward)
    return app
