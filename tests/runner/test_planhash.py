"""Workers refuse a plan document that does not hash to their pod's plan hash, with the
operator's own hash function as the reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exegpt.operator import plandoc
from exegpt.runner.errors import RunnerError
from exegpt.runner.planhash import HASHED_FIELDS, document_hash, verify_plan_file

DOC: dict[str, Any] = {
    "apiVersion": "exegpt.dev/v1alpha1",
    "kind": "WorkerPlan",
    "deployment": "x",
    "model": {"name": "opt-13b", "dtype": "float16"},
    "strategy": "RoundRobin",
    "config": {"encode_batch": 8, "decode_batch": 64, "tensor_parallel": 2},
    "topology": {"replicas": 1},
    "limits": {"maxInputTokens": 512, "maxOutputTokens": 128},
    "runner": {"image": "registry.test/exegpt-runtime:test", "port": 8000},
    "predicted": {"latency_s": 1.0},
}


def test_the_same_hash_as_the_operator() -> None:
    assert HASHED_FIELDS == plandoc.HASHED_FIELDS
    assert document_hash(DOC) == plandoc.plan_hash(DOC)
    other = {**DOC, "config": {**DOC["config"], "encode_batch": 16}}
    assert document_hash(other) == plandoc.plan_hash(other) != document_hash(DOC)


def test_a_rewritten_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    expected = plandoc.plan_hash(DOC)
    path.write_text(plandoc.canonical_json(DOC))
    verify_plan_file(str(path), expected)
    # Informational fields may change under the same hash.
    path.write_text(json.dumps({**DOC, "predicted": {"latency_s": 2.0}}))
    verify_plan_file(str(path), expected)
    # Anything that decides what runs may not.
    path.write_text(json.dumps({**DOC, "runner": {"image": "evil.example/x:1", "port": 8000}}))
    with pytest.raises(RunnerError, match="changed by something other than the operator"):
        verify_plan_file(str(path), expected)
    path.write_text("not json")
    with pytest.raises(RunnerError, match="cannot read"):
        verify_plan_file(str(path), expected)
    verify_plan_file(str(tmp_path / "absent.json"), None)  # no hash: a hand-given file
