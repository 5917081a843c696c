"""``exegpt operator`` as a user runs it: a separate process that finds the cluster in
the current kubeconfig, plans a deployment, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from builders import deployment
from harness import Cluster, is_condition

pytestmark = pytest.mark.asyncio

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: emulated
  cluster: {{server: "{url}"}}
users:
- name: tester
  user: {{token: not-checked}}
contexts:
- name: emulated
  context: {{cluster: emulated, user: tester, namespace: default}}
current-context: emulated
"""


async def test_the_command_plans_from_the_current_kubeconfig(
    cluster: Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG.format(url=cluster.url))
    env = {
        **os.environ,
        "KUBECONFIG": str(config),
        "EXEGPT_LIVENESS_ENDPOINT": "",
        "EXEGPT_RESYNC_SECONDS": "0.2",
    }
    env.pop("EXEGPT_KUBE_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exegpt", "operator", "--namespace", "default",
        "--log-format", "json",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        await cluster.create(deployment("x"))
        await cluster.wait_for(
            lambda: is_condition(cluster.deployment("x"), "Planned"),
            timeout=60.0,
            what="the exegpt operator process to plan x",
        )
        body = cluster.deployment("x") or {}
        assert body["status"]["plan"]["strategy"] in ("RoundRobin", "WorkloadAware")
        assert cluster.statefulsets()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30.0)
    assert proc.returncode == 0, out.decode()[-2000:]
    # Logs are JSON lines; those about the deployment name it.
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert any(r.get("namespace") == "default" and r.get("name") == "x" for r in lines)
