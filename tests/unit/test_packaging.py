"""Packaging: the source folders map to ``exegpt.*`` packages, every package is
listed, typed packages ship ``py.typed``, ``operator/`` never shadows the standard
library, and the entry points work. Installing for real (``pip install .`` and
``pip install -e .``) is checked by ``.ci/run packaging``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS: dict[str, Any] = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUPTOOLS["package-dir"]
PACKAGES: list[str] = SETUPTOOLS["packages"]
PROJECT: dict[str, Any] = PYPROJECT["project"]


def folder_of(package: str) -> Path:
    """The source folder of ``package`` under the package-dir mapping (longest prefix)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        mapped = PACKAGE_DIR.get(".".join(parts[:i]))
        if mapped is not None:
            return ROOT.joinpath(mapped, *parts[i:])
    raise AssertionError(f"{package} is under no folder of [tool.setuptools] package-dir")


def packages_on_disk() -> set[str]:
    found = set()
    for name, folder in PACKAGE_DIR.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    return found


def test_folders_map_to_exegpt_packages() -> None:
    assert PACKAGE_DIR == {
        "exegpt": "exegpt",
        "exegpt.planner": "planner",
        "exegpt.operator": "operator",
        "exegpt.runner": "runner",
    }
    assert all(p == "exegpt" or p.startswith("exegpt.") for p in PACKAGES)


def test_every_package_folder_is_listed() -> None:
    unlisted = packages_on_disk() - set(PACKAGES)
    assert not unlisted, (
        f"add {sorted(unlisted)} to [tool.setuptools] packages in pyproject.toml: "
        "setuptools does not discover packages in remapped folders"
    )


def test_every_listed_package_exists() -> None:
    missing = [p for p in PACKAGES if not (folder_of(p) / "__init__.py").is_file()]
    assert not missing, f"listed in pyproject.toml without an __init__.py: {missing}"


@pytest.mark.parametrize("package", ["exegpt", "exegpt.planner", "exegpt.operator"])
def test_typed_packages_ship_py_typed(package: str) -> None:
    assert (folder_of(package) / "py.typed").is_file()
    patterns = SETUPTOOLS["package-data"].get("*", []) + SETUPTOOLS["package-data"].get(package, [])
    assert "py.typed" in patterns


@pytest.mark.parametrize("no_site", [False, True], ids=["site", "no-site"])
def test_operator_folder_never_shadows_the_stdlib(no_site: bool) -> None:
    # From the repository root the working directory comes first on sys.path; without
    # site (-S) nothing has imported the standard library's operator beforehand.
    flags = ["-S"] if no_site else []
    code = "import operator, sys; operator.add; print(operator.__name__, sys.modules['operator'])"
    run = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    shadowed = (
        "`import operator` from the repository root gave operator/__init__.py: imported "
        "under the name `operator`, it must put the standard library's module in its place\n"
    )
    assert run.returncode == 0, shadowed + run.stderr
    assert "exegpt" not in run.stdout and str(ROOT / "operator") not in run.stdout, run.stdout


def test_source_folders_import_as_exegpt_packages() -> None:
    for name in PACKAGE_DIR:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().parent == (ROOT / PACKAGE_DIR[name]).resolve()


def test_console_script_and_python_m() -> None:
    assert PROJECT["scripts"] == {"exegpt": "exegpt.cli:main"}
    module, _, attr = PROJECT["scripts"]["exegpt"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    run = subprocess.run(
        [sys.executable, "-m", "exegpt", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "plan" in run.stdout


def test_python_and_extras() -> None:
    assert PROJECT["requires-python"] == ">=3.11"
    test_extra = {
        canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["test"]
    }
    # The tools .ci/run calls.
    assert test_extra >= {"pytest", "hypothesis", "ruff", "mypy", "types-pyyaml", "import-linter"}


def test_torch_is_always_pinned() -> None:
    # An unpinned torch resolves to a multi-GB CUDA build; the pinned one is on disk.
    requirements = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        requirements += extra
    torch = [Requirement(r) for r in requirements if Requirement(r).name == "torch"]
    assert torch, "the runner extra needs torch"
    assert all(str(r.specifier) == "==2.13.0" for r in torch), torch
    runner = [Requirement(r).name for r in PROJECT["optional-dependencies"]["runner"]]
    assert "torch" in runner
    assert "torch" not in [Requirement(r).name for r in PROJECT["dependencies"]]
