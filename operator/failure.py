"""Saying that a deployment's passes fail on API errors: the ``Degraded`` condition
(reason ``ApiRequestFailing`` for transient errors, ``ApiRequestRejected`` for
permanent ones, with the error and the next attempt) and one Warning Event for each
run of failures, not one per retry. The next pass that gets through clears it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .backoff import Failures
from .kube import EXEGPT, Api, KubeError
from .status import Condition, set_condition

FAILING = "ApiRequestFailing"
REJECTED = "ApiRequestRejected"
REASONS = (FAILING, REJECTED)

logger = logging.getLogger(__name__)


def failure_condition(
    status: Mapping[str, Any] | None, failures: Failures, delay: float, generation: int, at: str
) -> list[dict[str, Any]]:
    """``status.conditions`` with ``Degraded`` saying why passes fail."""
    conditions = []
    for raw in (status or {}).get("conditions") or []:
        try:
            conditions.append(Condition.model_validate(raw))
        except ValueError:
            continue  # not ours to keep: the next pass rewrites the list
    kind = "permanent" if failures.permanent else "transient"
    message = (
        f"{failures.count} pass(es) in a row failed on an API request ({kind}): "
        f"{failures.message[:400]}; next attempt in {delay:g} s"
    )
    reason = REJECTED if failures.permanent else FAILING
    out = set_condition(conditions, "Degraded", "True", reason, message, generation, at=at)
    return [c.model_dump(by_alias=True, mode="json") for c in out]


async def report_failure(
    kube: Api,
    body: Mapping[str, Any],
    failures: Failures,
    delay: float,
    events: Callable[[str, str, str], None],
    clock: Callable[[], float],
) -> None:
    """Write the condition (best effort: the failing request may be this very one) and,
    on the first failure of a run, post an Event."""
    meta = body.get("metadata") or {}
    name, namespace = str(meta.get("name", "")), str(meta.get("namespace", "default"))
    generation = int(meta.get("generation") or 0)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))
    conditions = failure_condition(body.get("status"), failures, delay, generation, at)
    if failures.count == 1:
        reason = REJECTED if failures.permanent else FAILING
        events("Warning", reason, conditions_message(conditions))
    try:
        await kube.merge_patch(
            EXEGPT, namespace, name, {"status": {"conditions": conditions}}, "status"
        )
    except KubeError as exc:
        logger.warning("%s/%s: cannot record the failure in status: %s", namespace, name, exc)


def conditions_message(conditions: list[dict[str, Any]]) -> str:
    return next((str(c["message"]) for c in conditions if c.get("type") == "Degraded"), "")
