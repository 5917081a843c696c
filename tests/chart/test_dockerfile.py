"""The Dockerfile, read as Docker would (no Docker engine here): its targets, pinned
base, numeric non-root user, no build tools in the images, entrypoints that exist in
the ``exegpt`` command line and agree with the pods that run them, and a build context
(.dockerignore) that holds what the build copies."""

from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helmchart import operator_container
from test_operator_manifests import CASES, manifests

from exegpt.cli import build_parser
from exegpt.operator.podspec import RUN_AS, pod_spec_of

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
FINAL = ("operator", "runtime")  # the targets users build
BUILD_TOOLS = ("gcc", "g++", "clang", "build-essential", "make", "cmake", "cargo", "rustc")
PINNED_BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")


@dataclass
class Stage:
    base: str  # as written, ${ARG}s resolved
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [args for o, args in self.instructions if o == op]

    def last(self, op: str) -> str | None:
        found = self.all(op)
        return found[-1] if found else None


@functools.cache
def parse() -> tuple[dict[str, str], tuple[Stage, ...]]:
    """Global ARG defaults and the stages, in order: instructions with continuation
    lines joined and comments dropped, as the Dockerfile frontend reads them."""
    text = DOCKERFILE.read_text()
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = rest.split()
            assert len(words) == 3 and words[1].upper() == "AS", f"unnamed stage: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2]))
        elif not stages:
            assert op == "ARG", f"only ARG may precede the first FROM: {line}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((op, rest))
    return args, tuple(stages)


def stages() -> dict[str, Stage]:
    return {s.name: s for s in parse()[1]}


def chain(name: str) -> list[Stage]:
    """The stage and the stages it copies from, transitively."""
    out: list[Stage] = []
    todo = [name]
    while todo:
        stage = stages()[todo.pop()]
        out.append(stage)
        for copy in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", copy)
            if source and source.group(1) in stages():
                todo.append(source.group(1))
    return out


def run_text(stage_names: list[Stage]) -> str:
    return " ".join(args for s in stage_names for args in s.all("RUN"))


def test_targets() -> None:
    names = [s.name for s in parse()[1]]
    assert set(FINAL) <= set(names)
    assert names[-1] == "operator", "`docker build .` builds the operator image"
    assert len(names) == len(set(names))


def test_base_image_is_pinned() -> None:
    args, all_stages = parse()
    for stage in all_stages:
        assert PINNED_BASE.fullmatch(stage.base), f"{stage.name}: FROM {stage.base}"
    for final in FINAL:
        # Final images start from the plain base, not from a stage with build steps.
        assert stages()[final].base == args["PYTHON_IMAGE"]


@pytest.mark.parametrize("target", FINAL)
def test_final_images_run_as_a_numeric_non_root_user(target: str) -> None:
    user = stages()[target].last("USER")
    assert user is not None and re.fullmatch(r"\d+:\d+", user), user
    uid, gid = map(int, user.split(":"))
    assert uid != 0 and gid != 0
    assert (uid, gid) == (RUN_AS, RUN_AS), "the pods' runAsUser/runAsGroup (podspec.RUN_AS)"


@pytest.mark.parametrize("target", FINAL)
def test_final_images_hold_no_build_tools(target: str) -> None:
    final = stages()[target]
    assert not final.all("RUN"), f"{target}: the final stage only copies a built venv"
    for copy in final.all("COPY"):
        assert "--from=" in copy, f"{target}: copies sources into the final image: {copy}"
    everything = run_text(chain(target))
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", everything), tool


def entrypoint(target: str) -> list[str]:
    text = stages()[target].last("ENTRYPOINT")
    assert text and text.startswith("["), "ENTRYPOINT in exec (JSON) form"
    return list(json.loads(text))


def subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name for a in actions for name in a.choices}


@pytest.mark.parametrize("target", FINAL)
def test_entrypoint_is_exegpt(target: str) -> None:
    assert entrypoint(target) == ["exegpt"]
    cmd = json.loads(stages()[target].last("CMD") or "[]")
    assert cmd and (cmd[0] in subcommands() or cmd[0] == "--help"), cmd
    assert "PATH=/opt/exegpt/bin:" in " ".join(stages()[target].all("ENV"))


def test_operator_image_runs_what_the_chart_runs() -> None:
    container = operator_container("default")
    assert container["command"] == entrypoint("operator")
    assert container["args"][0] in subcommands()
    assert json.loads(stages()["operator"].last("CMD") or "[]") == container["args"]


def test_runtime_image_runs_what_the_operator_starts() -> None:
    """The profiling Job and the workers run the runtime image with their own command;
    the subcommands they name exist."""
    pods = [pod_spec_of(obj) for example in CASES for obj in manifests(example)]
    commands = {
        (tuple(c["command"]), c["args"][0]) for pod in pods if pod for c in pod["containers"]
    }
    vllm = ("python3", "-m", "vllm.entrypoints.openai.api_server")
    expected = {(("exegpt",), "profile"), (("exegpt",), "serve"), (vllm, "--model")}
    # the other nodes of a vLLM server over several nodes: a start script that runs
    # vLLM's headless workers (docs/vllm.md)
    scripts = {c for c in commands if c[0][:2] == ("sh", "-c")}
    assert scripts, "an example plans a vLLM server over several nodes"
    for command, first in scripts:
        assert "exec python3 -m vllm.entrypoints.cli.main serve --headless" in command[2]
        assert first == "--model"
    assert commands - {(("vllm-router",), "--host")} - scripts == expected
    assert entrypoint("runtime") == ["exegpt"]
    assert {"profile", "serve"} <= subcommands()
    # vLLM's server (plans for vLLM) runs from the same image, at the tested version
    args = dict(a.partition("=")[::2] for s in chain("runtime") for a in s.all("ARG") if "=" in a)
    assert (args["VLLM"], args["VLLM_ROUTER"]) == ("vllm==0.32.0", "vllm-router==0.1.17")
    assert '"${VLLM}"' in run_text(chain("runtime"))


def test_operator_image_has_no_torch() -> None:
    text = run_text(chain("operator"))
    assert "torch" not in text and "[runner]" not in text
    assert re.search(r"pip install /wheels/exegpt-\*\.whl", text)


def test_runtime_image_pins_the_runner_extras_torch() -> None:
    args = dict(a.partition("=")[::2] for s in chain("runtime") for a in s.all("ARG") if "=" in a)
    (pin,) = [r for r in PYPROJECT["project"]["optional-dependencies"]["runner"] if "torch" in r]
    assert pin == f"torch=={args['TORCH_VERSION']}", "Dockerfile and pyproject.toml disagree"
    text = run_text(chain("runtime"))
    assert '"torch==${TORCH_VERSION}"' in text and "[runner]" in text


# -- the build context ---------------------------------------------------------------------


def ignore_patterns() -> list[tuple[bool, str]]:
    """(exclude?, pattern) of .dockerignore, in order; the last match decides."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            out.append((not negated, line.lstrip("!").strip("/")))
    return out


def ignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative, '/'-separated) out of the context: a
    pattern matches the path or a folder above it; ``**`` matches any folders."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for exclude, pattern in ignore_patterns():
        for prefix in prefixes:
            if pattern.startswith("**/"):
                rest = pattern[3:]
                hit = any(fnmatch.fnmatchcase(p, rest) for p in prefix.split("/")[-1:])
            else:
                hit = fnmatch.fnmatchcase(prefix, pattern)
            if hit:
                verdict = exclude
                break
    return verdict


def copied_sources() -> list[str]:
    out = []
    for stage in parse()[1]:
        for copy in stage.all("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if "--from=" not in copy:
                out += [w.rstrip("/") for w in words[:-1]]
    return out


def test_the_build_copies_every_source_folder() -> None:
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    copied = set(copied_sources())
    assert folders <= copied, f"the wheel stage misses {sorted(folders - copied)}"
    assert {"pyproject.toml", "README.md"} <= copied  # the build's metadata and readme


def test_the_context_holds_what_the_build_copies() -> None:
    for source in copied_sources():
        assert (ROOT / source).exists(), source
        assert not ignored(source), f".dockerignore leaves out {source}"
    for module in ("planner/__init__.py", "operator/settings.py", "exegpt/cli.py"):
        assert not ignored(module), module


def test_the_context_leaves_out_the_rest() -> None:
    for path in (".venv", ".git", "tests", "charts", "build", "exegpt.egg-info"):
        assert ignored(path), path
    assert ignored("planner/__pycache__") and ignored("operator/__pycache__/x.cpython-311.pyc")
