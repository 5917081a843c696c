"""Failures are visible: every failed pass is logged with the deployment's namespace and
name (JSON on request), and counted in the operator's own Prometheus metrics, served on
``metrics_port``."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import urllib.request
from collections.abc import Awaitable, Callable, Iterator

import pytest
from builders import deployment
from harness import Cluster, Operator, is_condition

from exegpt.operator.logs import configure_logging

pytestmark = pytest.mark.asyncio


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The operator's logging configured as ``--log-format json`` does, into a buffer."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("json", "INFO", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def records(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_a_failing_pass_is_logged_with_the_deployment_and_counted(
    cluster: Cluster,
    start_operator: Callable[..., Awaitable[Operator]],
    json_log: io.StringIO,
) -> None:
    port = free_port()
    op = await start_operator(metrics_port=port)
    fault = cluster.fail("create", "statefulsets", status=403, times=3)
    await cluster.create(deployment("x", strategy="RoundRobin"))
    await cluster.wait_for(lambda: fault.exhausted, timeout=20)
    await cluster.wait_for(lambda: cluster.statefulsets(), timeout=20)
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))

    failures = [
        r for r in records(json_log) if r["level"] == "ERROR" and "pass failed" in str(r["message"])
    ]
    assert len(failures) >= 3
    for r in failures:
        assert (r["namespace"], r["name"]) == ("default", "x")
        assert r["logger"] == "exegpt.operator"
        assert "403" in str(r["message"])
    # kopf's own records about the deployment carry it too.
    kopf_records = [r for r in records(json_log) if str(r["logger"]).startswith("kopf.objects")]
    assert kopf_records and all(r.get("name") == "x" for r in kopf_records)

    assert op.memo is not None
    telemetry = op.memo.telemetry
    failed = sum(v for (h, result), v in telemetry.passes.values.items() if result == "failed")
    assert failed >= 3
    assert sum(telemetry.failures.values.values()) == failed
    # A failed pass writes no status, so the next one plans again (every one counted).
    plans = telemetry.plan_seconds.count("plan")
    assert plans >= 1

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as rsp:
            assert rsp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            return str(rsp.read().decode())

    text = await asyncio.to_thread(scrape)
    scraped = sum(
        float(m[1])
        for m in re.finditer(
            r'^exegpt_operator_failures_total\{handler="\w+",error="KubeError"\} (\S+)$', text, re.M
        )
    )
    assert scraped == failed
    assert 'exegpt_operator_passes_total{handler="converge",result="ok"}' in text
    assert f'exegpt_operator_plan_seconds_count{{kind="plan"}} {plans}' in text
