"""Fixtures of the operator tests.

``cluster``: an emulated cluster serving in the test's event loop (``harness.Cluster``).
``operator``: the ExeGPT operator running against it (``harness.exegpt_operator``),
stopped at the end of the test; ``start_operator(**settings)`` starts one with other
settings. Every test that runs the ExeGPT operator has its API calls
checked against ``api_usage.json``, the ``(apiGroup, resource, verb)`` triples the
operator may use, which the chart's RBAC grants: a call outside it fails the test.
``EXEGPT_RECORD_API_USAGE=1 pytest tests/operator`` rewrites the file from what the
tests used instead.

Test modules mark themselves ``pytestmark = pytest.mark.asyncio``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from harness import Cluster, Operator, exegpt_operator, running_cluster

API_USAGE = Path(__file__).with_name("api_usage.json")
RECORD = os.environ.get("EXEGPT_RECORD_API_USAGE") == "1"
_used: set[tuple[str, str, str]] = set()


def load_api_usage() -> set[tuple[str, str, str]]:
    if not API_USAGE.exists():
        return set()
    doc = json.loads(API_USAGE.read_text())
    return {(r["apiGroup"], r["resource"], r["verb"]) for r in doc["calls"]}


def write_api_usage(used: set[tuple[str, str, str]]) -> None:
    doc = {
        "description": "The (apiGroup, resource, verb) triples the operator's API calls use, "
        "recorded by tests/operator (EXEGPT_RECORD_API_USAGE=1). The chart's RBAC must grant "
        "each of them.",
        "calls": [{"apiGroup": g, "resource": r, "verb": v} for g, r, v in sorted(used)],
    }
    API_USAGE.write_text(json.dumps(doc, indent=2) + "\n")


def pytest_sessionfinish(session: pytest.Session) -> None:
    if RECORD and _used:
        write_api_usage(_used)


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as c:
        yield c


@pytest_asyncio.fixture
async def start_operator(cluster: Cluster) -> AsyncIterator[Callable[..., Awaitable[Operator]]]:
    """``await start_operator(**settings)``: the ExeGPT operator with ``OperatorSettings``
    overrides, started; stopped at the end of the test, its API calls checked."""
    started: list[Operator] = []

    async def start(**settings: Any) -> Operator:
        op = exegpt_operator(cluster, **settings)
        await op.start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            await op.stop()
    used = cluster.api_usage()
    _used.update(used)
    unlisted = sorted(used - load_api_usage())
    if unlisted and not RECORD:
        lines = "\n".join(f"  {g or 'core'} {r} {v}" for g, r, v in unlisted)
        pytest.fail(
            f"the operator made API calls that {API_USAGE.name} does not list:\n{lines}\n"
            "update api_usage.json (EXEGPT_RECORD_API_USAGE=1 pytest tests/operator) and the "
            "chart's RBAC",
            pytrace=False,
        )


@pytest_asyncio.fixture
async def operator(start_operator: Callable[..., Awaitable[Operator]]) -> Operator:
    """The ExeGPT operator with the test settings (``harness.test_settings``), running."""
    return await start_operator()
