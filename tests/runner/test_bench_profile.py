"""``exegpt bench profile``: its JSON and table (the accuracy figures themselves are for
docs/runner.md, not asserted: the machines are shared and noisy)."""

from __future__ import annotations

import json

import pytest

from exegpt.cli import main


def test_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "profile", "--quick", "--json", "--model", "llama-small",
               "--profile-seconds", "2", "--device", "cpu"])  # fmt: skip
    out, _ = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out)
    s = doc["summary"]
    assert s["device"] == "cpu" and s["target_pct"] == 10.0 and s["threads"] == 1
    assert s["points"] == len(doc["models"][0]["points"]) == 7
    assert 0 <= s["median_abs_error_pct"] <= s["worst_abs_error_pct"]
    assert isinstance(s["target_met"], bool)
    for p in doc["models"][0]["points"]:
        assert p["phase"] in ("encode", "decode")
        assert p["measured_s"] > 0 and p["predicted_s"] > 0


def test_table_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "profile", "--quick", "--model", "t5-small", "--profile-seconds", "1",
               "--device", "cpu"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0
    assert "t5-small" in out and "error %" in out and "steps off the grid on cpu" in out
    assert "profiling t5-small" in err
    assert main(["bench", "profile", "--model", "nope", "--device", "cpu"]) == 2
