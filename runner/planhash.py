"""Checking that the mounted plan document is the one its hash names.

The operator writes ``plan.json`` with ``plan-hash`` beside it, and gives each worker pod
the same hash in ``$EXEGPT_PLAN_HASH``. ``wait_for_own_plan`` compares the two hashes;
``verify_plan_file`` also hashes the document itself, so a plan ConfigMap edited by
anyone else than the operator (a rewritten ``plan.json`` under the old ``plan-hash``)
is refused instead of run.

The hash is the operator's (``exegpt.operator.plandoc.plan_hash``, which the runner does
not import): the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys,
no spaces) of the document's ``HASHED_FIELDS``. tests/runner/test_planhash.py checks
that both agree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .errors import RunnerError

HASHED_FIELDS = (
    "apiVersion",
    "kind",
    "deployment",
    "model",
    "strategy",
    "config",
    "topology",
    "limits",
    "runner",
)


def document_hash(doc: Mapping[str, Any]) -> str:
    stable = {k: doc[k] for k in HASHED_FIELDS if k in doc}
    text = json.dumps(stable, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def verify_plan_file(plan_file: str, expected: str | None) -> None:
    """Raise ``RunnerError`` unless ``plan_file``'s document hashes to ``expected`` (no
    check without an expected hash: a plan file given by hand)."""
    if not expected:
        return
    try:
        with open(plan_file, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as exc:
        raise RunnerError(f"cannot read the plan document {plan_file}: {exc}") from None
    if not isinstance(doc, Mapping):
        raise RunnerError(f"{plan_file}: the plan document is not a JSON object")
    actual = document_hash(doc)
    if actual != expected:
        raise RunnerError(
            f"{plan_file} hashes to {actual}, not to this pod's plan hash {expected}: the "
            "plan ConfigMap was changed by something other than the operator; refusing "
            "to run it (the operator rewrites it on its next pass)"
        )
