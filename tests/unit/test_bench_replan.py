"""``exegpt bench replan`` replans every edit and reports its timing."""

from __future__ import annotations

import json

import pytest

from exegpt.bench.replan import run


def test_quick_replan_bench_replans_every_edit(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--quick", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert len(rows) == 9
    assert all(r["replanned"] and r["planned"] for r in rows)
    assert report["summary"]["all_replanned"] is True
    assert all(r["seconds"] > 0 for r in rows)
    # The new bound is part of the workers' plan document: its ConfigMap is rewritten.
    assert all(r["children_written"] >= 1 for r in rows)
