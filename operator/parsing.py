"""Reading a deployment's spec into the planner's request, as one bounded step that
never raises for bad input: the result is the spec and request, or the message of an
``InvalidSpec``. Run off the event loop (it builds the workload), and keyed by a hash
of the raw spec so that a pass over an unchanged spec reuses the last result."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from exegpt.planner.plan import PlanRequest

from .request import SpecError, plan_request
from .spec import ExeGPTDeploymentSpec, format_errors, parse_spec


@dataclass(frozen=True)
class Parsed:
    """A spec read: ``spec`` and ``request``, or ``error`` (why it is invalid)."""

    spec: ExeGPTDeploymentSpec | None = None
    request: PlanRequest | None = None
    error: str = ""


def spec_key(raw: Mapping[str, Any] | None) -> str:
    """A content hash of a raw spec, as the API server stores it."""
    text = json.dumps(raw or {}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def parse(raw: Mapping[str, Any] | None) -> Parsed:
    """The spec and plan request of ``raw``, or why it cannot be planned."""
    try:
        spec = parse_spec(raw or {})
        return Parsed(spec, plan_request(spec))
    except ValidationError as exc:
        return Parsed(error="; ".join(format_errors(exc, prefix="spec")))
    except SpecError as exc:
        return Parsed(error=str(exc))
    except (ValueError, ArithmeticError) as exc:
        # What a validator did not foresee (a number out of range in the planner's
        # arithmetic): still a spec that cannot be planned, said as such.
        return Parsed(error=f"spec cannot be planned: {type(exc).__name__}: {str(exc)[:300]}")
