"""The cluster the end-to-end tests run against, through the ``kubectl`` and ``helm``
binaries."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kubeconfig() -> Path | None:
    paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    paths = paths or [str(Path.home() / ".kube" / "config")]
    return next((Path(p) for p in paths if Path(p).is_file()), None)


@dataclass(frozen=True)
class Cluster:
    """The cluster of the current kubeconfig, through the ``kubectl`` and ``helm``
    binaries."""

    helm_args: Sequence[str] = field(default_factory=tuple)
    timeout: float = 300.0

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            pytest.fail(f"{shlex.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check)
