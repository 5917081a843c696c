"""The start script and probes of the pods of node rank 1 and above of a vLLM server
spanning nodes (``exegpt.operator.vllm_nodes``), run under ``sh`` with a stand-in
``python3`` that records how vLLM would be started and answers the rank-0 health check
from a file."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from vllm_pods import Node

from exegpt.operator.vllm_nodes import node_probes, node_script
from exegpt.planner.vllm_args import HEADLESS_MODULE


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node.at(tmp_path)


SERVER_ARGS = ["--model", "/weights/m", "--nnodes", "3", "--master-port", "29500"]


@pytest.mark.parametrize(
    ("pod", "rank", "rank0"),
    [
        ("x-worker-n-0", 1, "x-worker-0.x-stages"),
        ("x-worker-n-1", 2, "x-worker-0.x-stages"),
        ("x-worker-n-2", 1, "x-worker-1.x-stages"),
        ("x-worker-n-5", 2, "x-worker-2.x-stages"),
    ],
)
def test_a_node_finds_its_rank_and_rank_0_from_its_ordinal(
    node: Node, pod: str, rank: int, rank0: str
) -> None:
    """Three nodes per server: pod ordinal o is node rank o % 2 + 1 of replica o // 2."""
    script = node.local(node_script("x", "worker", 3, 8000))
    subprocess.run(
        ["sh", "-c", script, "vllm", *SERVER_ARGS], env=node.env(pod), check=True, timeout=10
    )
    assert node.argv() == [
        "-m", HEADLESS_MODULE, "serve", "--headless", *SERVER_ARGS,
        "--node-rank", str(rank), "--master-addr", rank0,
    ]  # fmt: skip
    assert node.probed() == [f"http://{rank0}:8000/health"]
    assert (node.tmp / "joined").exists()


def test_a_node_does_not_join_a_rank_0_that_serves_without_it(node: Node) -> None:
    """A rank 0 already answering /health lost this node: the node waits for it to restart
    (and is not ready meanwhile)."""
    node.healthy(True)
    script = node.local(node_script("x", "decoder", 2, 8000))
    proc = subprocess.Popen(["sh", "-c", script, "vllm"], env=node.env("x-decoder-n-0"))
    try:
        time.sleep(1.5)
        assert proc.poll() is None
        assert not (node.tmp / "argv").exists() and not (node.tmp / "joined").exists()
        assert node.probed()[0] == "http://x-decoder-0.x-stages:8000/health"
    finally:
        proc.kill()
        proc.wait()


def test_a_node_restarts_once_the_rank_0_it_served_with_goes_away(node: Node) -> None:
    probes = node_probes("x", "worker", 2, 8000)
    liveness = node.local(probes["livenessProbe"]["exec"]["command"][2])
    readiness = node.local(probes["readinessProbe"]["exec"]["command"][2])
    env = node.env("x-worker-n-0")

    def run(script: str) -> int:
        return subprocess.run(["sh", "-c", script], env=env, timeout=10).returncode

    assert run(readiness) != 0  # vLLM not started yet
    (node.tmp / "joined").touch()
    assert run(readiness) == 0
    node.healthy(False)
    assert run(liveness) == 0  # rank 0 still loading the model: not a failure
    node.healthy(True)
    assert run(liveness) == 0  # rank 0 serves
    assert run(liveness) == 0
    node.healthy(False)
    assert run(liveness) != 0  # the rank 0 it served with is gone: restart and rejoin
    assert set(node.probed()) == {"http://x-worker-0.x-stages:8000/health"}
