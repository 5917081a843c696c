"""Checking that the mounted plan document is the one its hash names.

The operator writes ``plan.json`` with ``plan-hash`` beside it, and gives each worker pod
the same hash in ``$EXEGPT_PLAN_HASH``. ``wait_for_own_plan`` compares the two hashes;
``verify_plan_file`` also hashes the document itself (``WorkerPlan.hash``, the
planner's contract, the operator's own hash), so a plan ConfigMap edited by anyone else
than the operator (a rewritten ``plan.json`` under the old ``plan-hash``) is refused
instead of run.
"""

from __future__ import annotations

from exegpt.planner.workerplan import WorkerPlan

from .errors import RunnerError
from .workerplan import load_plan


def verify_plan_file(plan_file: str, expected: str | None) -> WorkerPlan:
    """The worker plan in ``plan_file``; raises ``RunnerError`` unless it hashes to
    ``expected`` (no check without an expected hash: a plan file given by hand)."""
    plan = load_plan(plan_file)
    if not expected:
        return plan
    actual = plan.hash()
    if actual != expected:
        raise RunnerError(
            f"{plan_file} hashes to {actual}, not to this pod's plan hash {expected}: the "
            "plan ConfigMap was changed by something other than the operator; refusing "
            "to run it (the operator rewrites it on its next pass)"
        )
    return plan
