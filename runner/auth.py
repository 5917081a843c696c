"""Bearer-token authentication of the OpenAI API (``/v1/*``).

With ``spec.runner.apiKeySecret`` the operator hands the workers the Secret's token in
``$EXEGPT_API_TOKEN``; every ``/v1/*`` request must then carry
``Authorization: Bearer <token>``. ``/healthz``, ``/readyz`` and ``/metrics`` stay open
(the kubelet's probes and the operator's drift check use them; the NetworkPolicy limits
who reaches the port at all).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import RunnerError

TOKEN_ENV = "EXEGPT_API_TOKEN"
PROTECTED_PREFIX = "/v1/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def api_token_from_env(environ: Mapping[str, str]) -> str | None:
    """The token ``/v1/*`` requires, or None when none is set. A set but blank value is
    an error (a Secret key holding only whitespace would otherwise disable the check)."""
    raw = environ.get(TOKEN_ENV)
    if raw is None:
        return None
    token = raw.strip()
    if not token:
        raise RunnerError(
            f"${TOKEN_ENV} is set but empty: put a token in the Secret that "
            "spec.runner.apiKeySecret names, or remove apiKeySecret"
        )
    return token


def _unauthorized(message: str) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": "authentication_error", "code": 401}},
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="exegpt"'},
    )


def bearer_middleware(token: str) -> Middleware:
    """An aiohttp middleware answering 401 to ``/v1/*`` requests without the token."""
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PROTECTED_PREFIX):
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given:
                return _unauthorized("missing 'Authorization: Bearer <token>' header")
            if not hmac.compare_digest(given.strip().encode(), expected):
                return _unauthorized("invalid bearer token")
        return await handler(request)

    return check
