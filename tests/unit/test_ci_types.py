"""CI's type-checking step covers the whole package: the CLI and ``exegpt.bench`` as
well as the planner, the operator and the runner (docs/development.md)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _types_step() -> str:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    start = script.index("\ntypes() {")
    return script[start : script.index("\n}\n", start)]


def test_mypy_runs_on_the_exegpt_package_itself() -> None:
    step = _types_step()
    assert "/.venv/bin/mypy" in step
    # `-p exegpt` checks every module under it; naming sub-packages would leave the
    # CLI and the benchmarks out
    assert re.findall(r"-p\s+(\S+?)\)?(?=\s|$)", step) == ["exegpt"]
