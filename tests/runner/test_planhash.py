"""Workers refuse a plan document that does not hash to their pod's plan hash; the
document and its hash are the ones the operator writes (on the emulated API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import deployed

from exegpt.planner.workerplan import canonical_json
from exegpt.runner.errors import RunnerError
from exegpt.runner.planhash import verify_plan_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def written() -> tuple[dict[str, Any], str]:
    """``plan.json`` and ``plan-hash`` as the operator wrote them for an example."""
    manifest = yaml.safe_load((ROOT / "examples" / "local-tiny.yaml").read_text())
    out = deployed(manifest)
    doc: dict[str, Any] = json.loads(out.plan_json)
    return doc, out.plan_hash


def test_the_operators_document_verifies(
    tmp_path: Path, written: tuple[dict[str, Any], str]
) -> None:
    doc, expected = written
    path = tmp_path / "plan.json"
    path.write_text(canonical_json(doc))
    assert verify_plan_file(str(path), expected).hash() == expected
    # Informational fields may change under the same hash.
    predicted = {**doc["predicted"], "latency_s": doc["predicted"]["latency_s"] * 2}
    path.write_text(json.dumps({**doc, "predicted": predicted}))
    verify_plan_file(str(path), expected)


def test_a_rewritten_plan_is_refused(tmp_path: Path, written: tuple[dict[str, Any], str]) -> None:
    doc, expected = written
    path = tmp_path / "plan.json"
    # Anything that decides what runs may not change.
    path.write_text(json.dumps({**doc, "runner": {**doc["runner"], "image": "evil.example/x:1"}}))
    with pytest.raises(RunnerError, match="changed by something other than the operator"):
        verify_plan_file(str(path), expected)
    path.write_text("not json")
    with pytest.raises(RunnerError, match="not JSON"):
        verify_plan_file(str(path), expected)
    with pytest.raises(RunnerError, match="cannot read"):
        verify_plan_file(str(tmp_path / "absent.json"), expected)
    path.write_text(canonical_json(doc))
    verify_plan_file(str(path), None)  # no hash: a hand-given file
