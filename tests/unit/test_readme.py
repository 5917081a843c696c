"""The README's quick start works as written: its plan command plans the example, its
test command is the one ``.ci/run`` runs, and its links lead to files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
VENV_SETUP = "python3 -m venv .venv"


def quick_start() -> list[str]:
    """The commands of the Quick start section, one per fenced block."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", README, re.M | re.S)
    assert section, "README.md has no '## Quick start' section"
    blocks = re.findall(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    assert len(blocks) == 2, f"expected two commands (plan, tests), found {blocks}"
    assert all(b.count("\n") == 1 for b in blocks), "each command is one line"
    return [b.strip() for b in blocks]


def test_plan_command_plans_the_example() -> None:
    plan_command = quick_start()[0]
    venv, install, plan = plan_command.split(" && ")
    assert (venv, install) == (VENV_SETUP, ".venv/bin/pip install -e .")
    program, *args = shlex.split(plan)
    assert program == ".venv/bin/exegpt" and args[0] == "plan", plan
    example = ROOT / args[1]
    assert example.is_file(), f"the quick start plans {args[1]}, which does not exist"

    # The venv part is the current interpreter's; `python -m exegpt` is `exegpt`.
    run = subprocess.run(
        [sys.executable, "-m", "exegpt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert re.search(r"\b(RoundRobin|WorkloadAware)\b", run.stdout), run.stdout


def test_test_command_is_what_ci_runs() -> None:
    test_command = quick_start()[1]
    assert test_command.startswith(f"{VENV_SETUP} && ") and "pytest" in test_command
    tests_step = re.search(r"^tests\(\) \{\n(.*?)^\}", CI, re.M | re.S)
    assert tests_step, ".ci/run has no tests() step"
    assert test_command in [line.strip() for line in tests_step.group(1).splitlines()]
    assert re.search(r"^all_steps=\(.* tests\)$", CI, re.M), "tests must be .ci/run's last step"


def test_relative_links_lead_to_files() -> None:
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert relative
    missing = sorted({link for link in relative if not (ROOT / link).exists()})
    assert not missing, f"README.md links to missing files: {missing}"
