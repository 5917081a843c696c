"""The API's bearer token (spec.runner.apiKeySecret): ``/v1/*`` requires it, the probes
and ``/metrics`` do not, and a blank token is refused at start."""

from __future__ import annotations

import pytest
from test_server import MODEL, FakeEngine, client_for

from exegpt.runner.auth import TOKEN_ENV, api_token_from_env
from exegpt.runner.errors import RunnerError
from exegpt.runner.server import build_app

TOKEN = "s3cret-token"
BODY = {"model": MODEL, "prompt": [5, 6, 7], "max_tokens": 2}


@pytest.mark.asyncio
async def test_v1_needs_the_bearer_token() -> None:
    app = build_app(FakeEngine(), model_name=MODEL, tokenizer=None, api_token=TOKEN)
    async with client_for(app) as client:
        missing = await client.post("/v1/completions", json=BODY)
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await missing.json())["error"]["type"] == "authentication_error"
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        basic = await client.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status == 401
        ok = await client.post(
            "/v1/completions", json=BODY, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert ok.status == 200
        assert (await client.get("/v1/models", headers={"Authorization": f"bearer {TOKEN}"})).ok
        # Probes and the metrics the operator reads stay open.
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/metrics")).status == 200


@pytest.mark.asyncio
async def test_without_a_token_the_api_is_open() -> None:
    app = build_app(FakeEngine(), model_name=MODEL, tokenizer=None)
    async with client_for(app) as client:
        assert (await client.get("/v1/models")).status == 200


def test_the_token_comes_from_the_environment() -> None:
    assert api_token_from_env({}) is None
    assert api_token_from_env({TOKEN_ENV: f" {TOKEN}\n"}) == TOKEN
    with pytest.raises(RunnerError, match="apiKeySecret"):
        api_token_from_env({TOKEN_ENV: "  "})
