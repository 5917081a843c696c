"""Where a deployment's profile comes from, decided from what is observed: the cached
profile ConfigMap and the profiling Jobs for the profile's content key.

Pure: the reconciler passes in the observed objects and the time, and carries out the
decision (create the next Job, wait, use the profile, or report the failure).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from exegpt.planner.profilekeys import PROFILE_DATA_KEY

from . import names

Action = Literal["ready", "create", "wait", "failed"]


@dataclass(frozen=True)
class ProfilingDecision:
    action: Action
    reason: str  # a condition reason: CacheHit, Profiling, ProfilingRetrying, ProfilingFailed...
    message: str
    attempts: int  # Jobs seen so far
    job: str | None = None  # the Job to create, or the one in progress
    profile_text: str | None = None  # the cached profile's JSON, when ready
    recheck_after: float | None = None  # seconds until the decision may change


@dataclass(frozen=True)
class JobState:
    name: str
    attempt: int
    state: Literal["active", "succeeded", "failed"]
    message: str
    finished_at: float | None
    started_at: float | None


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def job_state(job: Mapping[str, Any]) -> JobState:
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    name = str(meta.get("name", ""))
    labels = meta.get("labels") or {}
    try:
        attempt = int(labels.get(names.LABEL_ATTEMPT) or name.rsplit("-", 1)[-1])
    except ValueError:
        attempt = 0
    state: Literal["active", "succeeded", "failed"] = "active"
    message, finished = "", None
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            state = "succeeded"
            finished = _timestamp(cond.get("lastTransitionTime"))
        elif cond.get("type") in ("Failed", "FailureTarget"):
            state = "failed"
            finished = _timestamp(cond.get("lastTransitionTime"))
            message = f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip(": ")
    if state == "active":
        if int(status.get("succeeded") or 0) > 0:
            state = "succeeded"
        elif int(status.get("failed") or 0) > 0:
            state = "failed"
            message = "the profiling pod failed"
        finished = finished or _timestamp(status.get("completionTime"))
    started = _timestamp(status.get("startTime")) or _timestamp(meta.get("creationTimestamp"))
    return JobState(name, attempt, state, message, finished, started)


def has_profile(configmap: Mapping[str, Any] | None) -> bool:
    """Whether a profile ConfigMap holds a profile (not only a recorded failure)."""
    text = ((configmap or {}).get("data") or {}).get(PROFILE_DATA_KEY)
    return isinstance(text, str) and bool(text)


def recorded_failure(configmap: Mapping[str, Any] | None) -> str | None:
    """The failure recorded on a profile ConfigMap once retries were exhausted."""
    annotations = ((configmap or {}).get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_PROFILING_FAILED)
    return str(value) if value else None


def _recorded_job(configmap: Mapping[str, Any] | None) -> tuple[int, str | None]:
    annotations = ((configmap or {}).get("metadata") or {}).get("annotations") or {}
    job = annotations.get(names.ANNOTATION_PROFILING_LAST_JOB)
    try:
        attempts = int(annotations.get(names.ANNOTATION_PROFILING_ATTEMPTS) or 0)
    except ValueError:
        attempts = 0
    return attempts, str(job) if job else None


def failure_record(profile_key: str, namespace: str, decision: ProfilingDecision) -> dict[str, Any]:
    """The profile ConfigMap holding no profile but the failure that ended profiling
    (``decision``'s message without the advice, its attempts and last Job): it outlives
    the failed Jobs, which are then deleted."""
    core = decision.message.split(_RETRY_ADVICE_SEPARATOR, 1)[0]
    annotations = {
        names.ANNOTATION_PROFILE_KEY: profile_key,
        names.ANNOTATION_PROFILING_FAILED: core[:1000],
        names.ANNOTATION_PROFILING_ATTEMPTS: str(decision.attempts),
    }
    if decision.job:
        annotations[names.ANNOTATION_PROFILING_LAST_JOB] = decision.job
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.profile_configmap(profile_key),
            "namespace": namespace,
            "labels": dict(sorted(names.profile_labels(profile_key).items())),
            "annotations": dict(sorted(annotations.items())),
        },
    }


_RETRY_ADVICE_SEPARATOR = ". Delete ConfigMap "


def _retry_advice(profile_key: str) -> str:
    return (
        f"{_RETRY_ADVICE_SEPARATOR}{names.profile_configmap(profile_key)} (it records the "
        "failure; the failed Jobs are deleted) to profile again"
    )


def decide(
    profile_key: str,
    configmap: Mapping[str, Any] | None,
    jobs: Sequence[Mapping[str, Any]],
    *,
    now: float,
    max_retries: int,
    timeout_seconds: float,
    backoff_seconds: float,
    backoff_max_seconds: float,
) -> ProfilingDecision:
    """The next step for a measured profile: ``jobs`` are every Job observed in the
    namespace (filtered here by the profile's label, as label selectors may be
    ignored by the server)."""
    digest = names.profile_digest(profile_key)
    mine = sorted(
        (
            job_state(j)
            for j in jobs
            if ((j.get("metadata") or {}).get("labels") or {}).get(names.LABEL_PROFILE) == digest
        ),
        key=lambda s: s.attempt,
    )
    attempts = max((s.attempt for s in mine), default=0)
    text = ((configmap or {}).get("data") or {}).get(PROFILE_DATA_KEY)
    if isinstance(text, str) and text:
        return ProfilingDecision("ready", "ProfileCached", "", attempts, profile_text=text)
    failure = recorded_failure(configmap)
    if failure is not None:
        recorded_attempts, last_job = _recorded_job(configmap)
        return ProfilingDecision(
            "failed", "ProfilingFailed", failure + _retry_advice(profile_key),
            max(attempts, recorded_attempts), job=last_job,
        )  # fmt: skip
    active = [s for s in mine if s.state == "active"]
    if active:
        job = active[-1]
        if job.started_at is not None and now - job.started_at > timeout_seconds + 60:
            return ProfilingDecision(
                "failed", "ProfilingTimedOut",
                f"profiling Job {job.name} has run longer than spec.profiling.timeout "
                f"({timeout_seconds:g} s); raise the timeout or check the node",
                attempts, job=job.name,
            )  # fmt: skip
        return ProfilingDecision(
            "wait", "Profiling", f"profiling Job {job.name} (attempt {job.attempt}) is running",
            attempts, job=job.name,
        )  # fmt: skip
    failed = [s for s in mine if s.state != "active"]
    last = failed[-1] if failed else None
    if last is not None and last.state == "succeeded":
        message = f"Job {last.name} succeeded but wrote no profile to its ConfigMap"
    else:
        message = last.message if last else ""
    if last is not None and len(failed) > max_retries:
        return ProfilingDecision(
            "failed", "ProfilingFailed",
            f"{len(failed)} profiling Jobs failed (spec.profiling.maxRetries is {max_retries}); "
            f"last: {last.name}: {message or 'failed'}" + _retry_advice(profile_key),
            attempts, job=last.name,
        )  # fmt: skip
    nxt = attempts + 1
    if last is not None:
        wait = min(backoff_seconds * 2 ** (len(failed) - 1), backoff_max_seconds)
        ready_at = (last.finished_at or now) + wait
        if now < ready_at:
            when = datetime.fromtimestamp(ready_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            return ProfilingDecision(
                "wait", "ProfilingRetrying",
                f"profiling Job {last.name} failed ({message or 'failed'}); attempt {nxt} "
                f"at {when}",
                attempts, job=last.name, recheck_after=ready_at - now,
            )  # fmt: skip
    return ProfilingDecision(
        "create", "Profiling", f"starting profiling Job (attempt {nxt})", attempts,
        job=names.profile_job(profile_key, nxt),
    )  # fmt: skip
