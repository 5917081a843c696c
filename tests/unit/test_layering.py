"""Import layering, read statically from the source with ``ast``: every import of every
module, including lazy imports inside functions and ``importlib.import_module("...")``
with a literal name. ``.ci/run layers`` checks the same contracts with import-linter
(pyproject.toml, [tool.importlinter]); this test needs no install and names the line."""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> (its folder, the modules it must never import)
LAYERS: dict[str, tuple[str, frozenset[str]]] = {
    "exegpt.planner": (
        "planner",
        frozenset(
            {
                "kopf",
                "kubernetes",
                "torch",
                "vllm",
                "vllm_router",
                "exegpt.operator",
                "exegpt.runner",
                "exegpt.cli",
                "exegpt.bench",
            }
        ),
    ),
    "exegpt.operator": (
        "operator",
        frozenset({"torch", "vllm", "vllm_router", "exegpt.runner", "exegpt.cli", "exegpt.bench"}),
    ),
    "exegpt.runner": ("runner", frozenset({"kopf", "exegpt.operator", "exegpt.cli"})),
}


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def imported(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of each import in ``source``, the source of
    ``module``. ``from a import b`` yields ``a`` and ``a.b`` (b may be a module)."""
    base = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                parent = ".".join(anchor + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            yield node.lineno, parent
            for alias in node.names:
                yield node.lineno, f"{parent}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node.lineno, node.args[0].value


def violations(source: str, module: str, is_package: bool, forbidden: frozenset[str]) -> list[str]:
    """``line N: name`` for the first forbidden module each line imports."""
    found: dict[int, str] = {}
    for line, name in imported(source, module, is_package):
        if any(name == f or name.startswith(f + ".") for f in forbidden):
            found.setdefault(line, f"line {line}: {name}")
    return list(found.values())


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_imports_nothing_forbidden(package: str) -> None:
    folder_name, forbidden = LAYERS[package]
    folder = ROOT / folder_name
    found = []
    for path in sorted(folder.rglob("*.py")):
        module = module_name(package, folder, path)
        for v in violations(
            path.read_text(encoding="utf-8"), module, path.name == "__init__.py", forbidden
        ):
            found.append(f"{path.relative_to(ROOT)} {v}")
    assert not found, f"{package} must not import {sorted(forbidden)}:\n" + "\n".join(found)


def test_contracts_match_import_linter() -> None:
    # The same rules as pyproject.toml's import-linter contracts, so neither can drift.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["include_external_packages"] is True  # else kopf/torch are not checked
    contracts = {
        tuple(c["source_modules"]): frozenset(c["forbidden_modules"])
        for c in config["contracts"]
        if c["type"] == "forbidden"
    }
    assert contracts == {(package,): forbidden for package, (_, forbidden) in LAYERS.items()}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import kopf", ["line 1: kopf"]),
        ("import torch.nn as nn", ["line 1: torch.nn"]),
        ("def f():\n    from kubernetes import client", ["line 2: kubernetes"]),
        ("from exegpt import operator", ["line 1: exegpt.operator"]),
        ("from ..operator.spec import X", ["line 1: exegpt.operator.spec"]),
        ("import importlib\nimportlib.import_module('torch')", ["line 2: torch"]),
        ("import operator\nfrom . import simulator\nimport numpy", []),
        ("from .operator import x", []),  # exegpt.planner.operator: not the operator
    ],
)
def test_checker_sees_lazy_relative_and_dynamic_imports(source: str, expected: list[str]) -> None:
    forbidden = LAYERS["exegpt.planner"][1]
    assert violations(source, "exegpt.planner.simulator", False, forbidden) == expected
