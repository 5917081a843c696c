"""How the pods of a vLLM server start, from their StatefulSet's container: rank 0's
command line as Kubernetes expands it (``$(VAR)`` from the container's environment), and
the other nodes' command line as their start script (``vllm_nodes.node_script``) runs it
under ``sh``, with a stand-in ``python3`` that records its arguments and answers the
rank-0 health check from a file."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exegpt.operator import vllm_nodes

FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-c" ]; then
  printf '%s\\n' "$3" >> "$FAKE_DIR/probed"
  test -e "$FAKE_DIR/healthy"
  exit $?
fi
printf '%s\\0' "$@" > "$FAKE_DIR/argv"
"""


def expanded(container: dict[str, Any], pod: str) -> list[str]:
    """The container's command and arguments with ``$(VAR)`` expanded as the kubelet
    does for pod ``pod`` (the downward-API ``POD_NAME`` and plain values)."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env["POD_NAME"] = pod

    def expand(arg: str) -> str:
        return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)

    return [expand(a) for a in [*container["command"], *container["args"]]]


@dataclass
class Node:
    """A pod's view: ``POD_NAME``, a ``PATH`` whose ``python3`` is the stand-in, and the
    pod's markers under ``tmp`` instead of its ``/tmp``."""

    tmp: Path

    @classmethod
    def at(cls, tmp: Path) -> Node:
        tmp.mkdir(parents=True, exist_ok=True)
        fake = tmp / "python3"
        fake.write_text(FAKE_PYTHON)
        fake.chmod(0o755)
        return cls(tmp)

    def env(self, pod: str) -> dict[str, str]:
        path = f"{self.tmp}:{os.environ['PATH']}"
        return {"PATH": path, "POD_NAME": pod, "FAKE_DIR": str(self.tmp)}

    def local(self, script: str) -> str:
        """``script`` with the pod's markers moved under ``tmp``."""
        return script.replace(vllm_nodes.JOINED, str(self.tmp / "joined")).replace(
            vllm_nodes.SERVED, str(self.tmp / "served")
        )

    def healthy(self, up: bool) -> None:
        (self.tmp / "healthy").unlink(missing_ok=True)
        if up:
            (self.tmp / "healthy").touch()

    def argv(self) -> list[str]:
        return (self.tmp / "argv").read_text().split("\0")[:-1]

    def probed(self) -> list[str]:
        return (self.tmp / "probed").read_text().split()

    def start(self, container: dict[str, Any], pod: str) -> list[str]:
        """Run the container's start script as pod ``pod`` (rank 0 not serving yet) and
        return what it started: ``python3`` and its arguments."""
        sh, flag, script, *rest = container["command"]
        assert (sh, flag) == ("sh", "-c")
        (self.tmp / "argv").unlink(missing_ok=True)
        command = [sh, flag, self.local(script), *rest, *container["args"]]
        subprocess.run(command, env=self.env(pod), check=True, timeout=30)
        return ["python3", *self.argv()]
