"""The profiling decision: cache hits, Job progress, bounded retries with backoff."""

from __future__ import annotations

import time
from typing import Any

import pytest

from exegpt.operator import names
from exegpt.operator.profiling import (
    ProfilingDecision,
    decide,
    failure_record,
    has_profile,
    job_state,
    recorded_failure,
)
from exegpt.planner.profilekeys import PROFILE_DATA_KEY

KEY = "opt-13b-nvidia-a100-80gb-0123456789ab"
T0 = 1_700_000_000.0


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def job(attempt: int, state: str = "active", at: float = T0, key: str = KEY) -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": _iso(at)}
    if state != "active":
        kind = "Complete" if state == "succeeded" else "Failed"
        status["conditions"] = [
            {"type": kind, "status": "True", "reason": "BackoffLimitExceeded",
             "message": "pod failed", "lastTransitionTime": _iso(at)}
        ]  # fmt: skip
    return {
        "metadata": {
            "name": names.profile_job(key, attempt),
            "labels": {**names.profile_labels(key), names.LABEL_ATTEMPT: str(attempt)},
        },
        "status": status,
    }


def _decide(
    cm: dict[str, Any] | None, jobs: list[dict[str, Any]], now: float = T0, **kw: Any
) -> ProfilingDecision:
    args: dict[str, Any] = {
        "now": now, "max_retries": 2, "timeout_seconds": 600.0, "backoff_seconds": 30.0,
        "backoff_max_seconds": 600.0,
    }  # fmt: skip
    args.update(kw)
    return decide(KEY, cm, jobs, **args)


def test_no_job_and_no_cache_creates_the_first_attempt() -> None:
    d = _decide(None, [])
    assert d.action == "create"
    assert d.job == names.profile_job(KEY, 1)


def test_a_cached_profile_is_used_whatever_the_jobs() -> None:
    cm = {"data": {PROFILE_DATA_KEY: '{"x": 1}'}}
    d = _decide(cm, [job(1, "failed"), job(2, "active")])
    assert d.action == "ready"
    assert d.profile_text == '{"x": 1}'


def test_a_running_job_is_waited_for_and_no_second_is_created() -> None:
    d = _decide(None, [job(1, "active")], now=T0 + 30)
    assert (d.action, d.reason, d.job) == ("wait", "Profiling", names.profile_job(KEY, 1))


def test_jobs_of_other_profiles_are_ignored() -> None:
    other = job(1, "active", key="llama-2-7b-nvidia-h100-80gb-ba9876543210")
    assert _decide(None, [other]).action == "create"


def test_a_failure_is_retried_after_the_backoff_then_doubles() -> None:
    jobs = [job(1, "failed", at=T0)]
    early = _decide(None, jobs, now=T0 + 10)
    assert (early.action, early.reason) == ("wait", "ProfilingRetrying")
    assert early.recheck_after == pytest.approx(20.0)
    late = _decide(None, jobs, now=T0 + 31)
    assert (late.action, late.job) == ("create", names.profile_job(KEY, 2))
    jobs.append(job(2, "failed", at=T0 + 40))
    assert _decide(None, jobs, now=T0 + 40 + 59).action == "wait"  # 60 s after the second
    assert _decide(None, jobs, now=T0 + 40 + 61).action == "create"


def test_retries_are_bounded_by_max_retries() -> None:
    jobs = [job(i, "failed", at=T0 + i) for i in (1, 2, 3)]
    d = _decide(None, jobs, now=T0 + 10_000, max_retries=2)
    assert (d.action, d.reason) == ("failed", "ProfilingFailed")
    assert "maxRetries is 2" in d.message
    assert f"Delete ConfigMap {names.profile_configmap(KEY)}" in d.message  # how to retry


def test_a_recorded_failure_outlives_the_deleted_jobs() -> None:
    jobs = [job(i, "failed", at=T0 + i) for i in (1, 2, 3)]
    first = _decide(None, jobs, now=T0 + 10_000, max_retries=2)
    record = failure_record(KEY, "ns", first)
    assert record["metadata"]["name"] == names.profile_configmap(KEY)
    assert "data" not in record
    assert recorded_failure(record) is not None and not has_profile(record)
    # The Jobs are gone: the record alone keeps the deployment failed, with the same
    # message (no status rewrite), instead of starting attempt 1 again.
    later = _decide(record, [], now=T0 + 20_000, max_retries=2)
    assert (later.action, later.reason) == ("failed", "ProfilingFailed")
    assert (later.message, later.attempts, later.job) == (first.message, 3, first.job)
    # A profile written since wins over the record.
    written = {**record, "data": {PROFILE_DATA_KEY: '{"x": 1}'}}
    assert _decide(written, []).action == "ready"
    # Without the record (the ConfigMap deleted), profiling starts again.
    assert _decide(None, []).action == "create"


def test_a_job_that_succeeded_without_a_profile_counts_as_a_failure() -> None:
    d = _decide(None, [job(1, "succeeded")], now=T0 + 1000)
    assert d.action == "create"
    d = _decide(None, [job(1, "succeeded")], now=T0 + 1, max_retries=0)
    assert d.action == "failed"
    assert "wrote no profile" in d.message


def test_a_job_running_past_the_timeout_is_reported() -> None:
    d = _decide(None, [job(1, "active", at=T0)], now=T0 + 700, timeout_seconds=600)
    assert (d.action, d.reason) == ("failed", "ProfilingTimedOut")
    assert "spec.profiling.timeout" in d.message


def test_job_state_reads_counts_when_conditions_are_missing() -> None:
    body = {"metadata": {"name": "exegpt-profile-0123456789ab-3"}, "status": {"failed": 1}}
    s = job_state(body)
    assert (s.attempt, s.state) == (3, "failed")
