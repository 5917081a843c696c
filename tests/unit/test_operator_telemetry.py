"""The operator's own metrics and log lines, as Prometheus and a log reader see them."""

from __future__ import annotations

import json
import logging
import re
import sys

import pytest

from exegpt.operator.logs import JsonFormatter, TextFormatter, deployment_fields
from exegpt.operator.telemetry import Counter, Histogram, OperatorMetrics


def test_counters_and_histograms_render_the_text_format() -> None:
    m = OperatorMetrics()
    m.passes.inc("create", "ok")
    m.passes.inc("create", "ok")
    m.failures.inc("converge", 'Key"Error')
    m.plan_seconds.observe(0.3, "plan")
    m.plan_seconds.observe(7.0, "replan")
    text = m.render()
    assert 'exegpt_operator_passes_total{handler="create",result="ok"} 2' in text
    assert 'error="Key\\"Error"' in text  # label values escaped
    assert 'exegpt_operator_plan_seconds_bucket{kind="plan",le="0.25"} 0' in text
    assert 'exegpt_operator_plan_seconds_bucket{kind="plan",le="0.5"} 1' in text
    assert 'exegpt_operator_plan_seconds_bucket{kind="replan",le="+Inf"} 1' in text
    assert 'exegpt_operator_plan_seconds_sum{kind="replan"} 7' in text
    assert "# TYPE exegpt_operator_profiling_jobs_total counter" in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        Counter("c", "h", ("a",)).inc()
    with pytest.raises(ValueError, match="only goes up"):
        Counter("c", "h").inc(by=-1)
    with pytest.raises(ValueError, match="labels"):
        Histogram("h", "h", ("a",)).observe(1.0)


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "exegpt.operator", logging.ERROR, __file__, 1, "pass %s", ("failed",), None
    )
    record.__dict__.update(extra)
    return record


def test_log_lines_name_the_deployment() -> None:
    ours = _record(**deployment_fields("team-a", "llm"))
    doc = json.loads(JsonFormatter().format(ours))
    assert (doc["level"], doc["message"], doc["namespace"], doc["name"]) == (
        "ERROR", "pass failed", "team-a", "llm",
    )  # fmt: skip
    kopfs = _record(k8s_ref={"namespace": "team-b", "name": "chat", "kind": "ExeGPTDeployment"})
    assert json.loads(JsonFormatter().format(kopfs))["name"] == "chat"
    assert "[team-b/chat] pass failed" in TextFormatter().format(kopfs)
    plain = json.loads(JsonFormatter().format(_record()))
    assert "name" not in plain and "namespace" not in plain


def test_exceptions_are_kept_in_json() -> None:
    try:
        raise OverflowError("too big")
    except OverflowError:
        record = _record()
        record.exc_info = sys.exc_info()
    doc = json.loads(JsonFormatter().format(record))
    assert "OverflowError: too big" in doc["exception"]
