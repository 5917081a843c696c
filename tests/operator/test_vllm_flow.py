"""An ExeGPTDeployment with ``engine: vLLM`` through the operator on the emulated API:
the plan names vLLM, the worker StatefulSet runs vLLM's OpenAI server with the plan's
arguments, and a server started on this machine from exactly those arguments (the
weights directory replaced by a tiny model's) serves completions and chat, and exports
the request-length histograms drift reads."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from builders import deployment
from harness import Cluster, Operator, is_condition

from exegpt.operator import names
from exegpt.operator.metrics import parse_length_histograms
from exegpt.operator.podspec import restricted_violations
from exegpt.operator.vllm_workers import vllm_args
from exegpt.planner.vllm_args import HEADLESS_MODULE, SERVER_MODULE
from exegpt.planner.vllm_schedule import SCHEDULER_CLS
from exegpt.planner.workerplan import WorkerPlan

pytestmark = pytest.mark.asyncio

TINY_LLAMA = {
    "model": {
        "architecture": {
            "name": "tiny-llama", "family": "decoder", "numLayers": 2, "hiddenSize": 64,
            "numHeads": 2, "numKvHeads": 1, "ffnSize": 128, "gatedMlp": True,
            "vocabSize": 256, "norm": "rmsnorm", "position": "rope", "maxPositions": 512,
        },
        "dtype": "float32",
        "weights": {"pvc": "models", "path": "/tiny-llama"},
    },
    "hardware": {"gpus": 1, "gpuType": "nvidia-l4", "gpusPerNode": 1},
    "workload": {"input": {"mean": 16, "std": 8, "max": 64},
                 "output": {"mean": 8, "std": 4, "max": 32}},
    "slo": {"latency": "2s"},
    "strategy": "RoundRobin",
    "engine": "vLLM",
}  # fmt: skip


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


async def _flow(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The deployment through the operator to its worker StatefulSet, Available."""
    body = deployment("x", **TINY_LLAMA)
    await cluster.create(body)
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    [sts] = await cluster.wait_for(cluster.statefulsets)
    for s in cluster.statefulsets():
        await cluster.set_statefulset_ready("default", s["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    return status, sts


async def test_a_vllm_deployment_runs_vllm_servers_with_the_plan_as_arguments(
    cluster: Cluster, operator: Operator
) -> None:
    status, sts = await _flow(cluster)
    plan = status["plan"]
    assert plan["engine"] == "vLLM" and plan["strategy"] == "RoundRobin"
    assert sts["metadata"]["name"] == names.statefulset("x", names.WORKER)
    assert sts["spec"]["replicas"] == plan["replicas"]
    pod = sts["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["command"] == ["python3", "-m", SERVER_MODULE]
    # the arguments are the plan document's, as the plan ConfigMap holds it
    cm = cluster.stored("v1", "configmaps", "default", names.plan_configmap("x"))
    assert cm is not None
    doc = WorkerPlan.from_json(cm["data"]["plan.json"])
    assert c["args"] == vllm_args(doc, 1)
    # the decoding server allocates the KV blocks the planner priced
    assert _value(c["args"], "--num-gpu-blocks-override") == str(doc.capacity.blocks)
    assert _value(c["args"], "--block-size") == str(doc.capacity.block_size)

    args = c["args"]
    assert _value(args, "--model") == "/weights/tiny-llama"
    assert _value(args, "--served-model-name") == "tiny-llama"
    assert _value(args, "--tensor-parallel-size") == str(plan["tensorParallel"])
    assert _value(args, "--pipeline-parallel-size") == str(plan["pipelineStages"])
    # the most queries RoundRobin can have running: B_E per prefill step, each query
    # living through ceil(32 / N_D) prefill steps (32: the workload's longest output)
    cap = plan["encodeBatch"] * -(-32 // plan["decodeStepsPerEncode"])
    assert _value(args, "--max-num-seqs") == str(cap)
    assert _value(args, "--max-model-len") == "96"
    assert _value(args, "--scheduler-cls") == SCHEDULER_CLS
    schedule = json.loads(_value(args, "--additional-config"))["exegpt"]
    assert schedule == {
        "mode": "RoundRobin",
        "encode_batch": plan["encodeBatch"],
        "decode_steps_per_encode": plan["decodeStepsPerEncode"],
        "decode_batch": cap,
    }
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"]["claimName"] == "models"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    assert restricted_violations(pod) == []
    api = cluster.stored("v1", "services", "default", "x")
    assert api is not None and api["spec"]["selector"][names.LABEL_COMPONENT] == names.WORKER
    assert status["pods"] == {"desired": plan["replicas"], "ready": plan["replicas"]}


async def test_workload_aware_on_vllm_runs_prefill_decode_and_the_router(
    cluster: Cluster, operator: Operator
) -> None:
    overrides = {**TINY_LLAMA, "strategy": "WorkloadAware"}
    overrides["hardware"] = {"gpus": 2, "gpuType": "nvidia-l4", "gpusPerNode": 2}
    await cluster.create(deployment("x", **overrides))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    await cluster.wait_for(lambda: len(cluster.statefulsets()) == 3)
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    plan = status["plan"]
    assert (plan["engine"], plan["strategy"]) == ("vLLM", "WorkloadAware")
    by_name = {s["metadata"]["name"]: s for s in cluster.statefulsets()}
    assert sorted(by_name) == ["x-decoder", "x-encoder", "x-router"]
    [router] = by_name["x-router"]["spec"]["template"]["spec"]["containers"]
    assert router["args"][router["args"].index("--prefill") + 1] == (
        "http://x-encoder-0.x-stages:8000"
    )
    api = cluster.stored("v1", "services", "default", "x")
    assert api is not None and api["spec"]["selector"][names.LABEL_COMPONENT] == names.ROUTER
    for s in cluster.statefulsets():
        await cluster.set_statefulset_ready("default", s["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    pods = 2 * plan["replicas"] + 1
    assert cluster.deployment("x")["status"]["pods"] == {"desired": pods, "ready": pods}  # type: ignore[index]


# -- a server started from the StatefulSet's arguments -------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tiny_llama(tmp_path: Path) -> Path:
    pytest.importorskip("vllm")
    from vllm_tiny import save_tiny_llama

    return save_tiny_llama(tmp_path / "tiny-llama")


@pytest.fixture
def server_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "server.log"
    yield path


@pytest.mark.slow
async def test_a_server_started_from_those_arguments_serves_completions_and_chat(
    cluster: Cluster, operator: Operator, tiny_llama: Path, server_log: Path
) -> None:
    from vllm_tiny import stop_servers

    _, sts = await _flow(cluster)
    [c] = sts["spec"]["template"]["spec"]["containers"]
    args = list(c["args"])
    args[args.index("--model") + 1] = str(tiny_llama)
    port = _free_port()
    args[args.index("--port") + 1] = str(port)
    args[args.index("--host") + 1] = "127.0.0.1"
    command = [sys.executable, *c["command"][1:], *args]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with server_log.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await _wait_healthy(http, base, [proc], [server_log])
            sampling = {"max_tokens": 5, "temperature": 0, "ignore_eos": True}
            async with http.post(
                f"{base}/v1/completions",
                json={"model": "tiny-llama", "prompt": "hello world w1 w2 w3", **sampling},
            ) as r:
                assert r.status == 200, await r.text()
                completion = await r.json()
            assert completion["usage"]["completion_tokens"] == 5
            assert completion["usage"]["prompt_tokens"] == 5
            async with http.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": "tiny-llama",
                    "messages": [{"role": "user", "content": "hello world"}],
                    **sampling,
                },
            ) as r:
                assert r.status == 200, await r.text()
                chat = await r.json()
            assert chat["choices"][0]["message"]["role"] == "assistant"
            assert chat["usage"]["completion_tokens"] == 5
            async with http.get(f"{base}/metrics") as r:
                metrics = await r.text()
        lengths = parse_length_histograms(metrics)
        assert sum(lengths.input) == 2 and sum(lengths.output) == 2
    finally:
        stop_servers([proc])


async def _wait_healthy(
    http: aiohttp.ClientSession,
    base: str,
    procs: list[subprocess.Popen[bytes]],
    logs: list[Path],
) -> None:
    """Until ``base`` answers /health; fails when any of ``procs`` exits."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            async with http.get(f"{base}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(1)
    tails = "\n".join(log.read_text()[-3000:] for log in logs)
    pytest.fail(f"the vLLM server did not become healthy:\n{tails}")


# -- a server over two nodes ----------------------------------------------------------------
# An architecture with TINY_LLAMA's two layers, too large for one L4 in float32: the plan is
# one replica of two pipeline stages over two one-GPU nodes. The real run below serves the
# tiny Llama's weights (same layer count) with exactly those arguments.
TWO_NODES: dict[str, Any] = {
    **TINY_LLAMA,
    "model": {
        **TINY_LLAMA["model"],
        "architecture": {
            **TINY_LLAMA["model"]["architecture"], "name": "llama-2x16k",
            "hiddenSize": 16384, "numHeads": 128, "numKvHeads": 8, "ffnSize": 57344,
        },
    },
    "hardware": {"gpus": 2, "gpuType": "nvidia-l4", "gpusPerNode": 1},
    "slo": {"latency": "20s"},
}  # fmt: skip
HEADLESS_SHIM = (
    "import sys; from vllm.entrypoints.cli.serve import ServeSubcommand; "
    "from vllm.entrypoints.launchers.cli_args import make_arg_parser; "
    "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
    "args = make_arg_parser(FlexibleArgumentParser()).parse_args(sys.argv[1:]); "
    "serve = ServeSubcommand(); serve.validate(args); serve.cmd(args)"
)
"""``python3 -m vllm.entrypoints.cli.main serve ARGS`` without the CLI's version lookup of
the ``vllm`` distribution, which ``vllm-cpu`` does not provide."""


async def _two_nodes(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The deployment through the operator to its two StatefulSets, Available: status,
    rank 0's container and the other node's."""
    await cluster.create(deployment("x", **TWO_NODES))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    await cluster.wait_for(lambda: len(cluster.statefulsets()) == 2)
    for s in cluster.statefulsets():
        await cluster.set_statefulset_ready("default", s["metadata"]["name"])
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Available"))
    status = cluster.deployment("x")["status"]  # type: ignore[index]
    by_name = {s["metadata"]["name"]: s for s in cluster.statefulsets()}
    assert sorted(by_name) == ["x-worker", "x-worker-n"]
    [rank0] = by_name["x-worker"]["spec"]["template"]["spec"]["containers"]
    [other] = by_name["x-worker-n"]["spec"]["template"]["spec"]["containers"]
    return status, rank0, other


def _vllm_parse(argv: list[str]) -> tuple[Any, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    namespace = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return namespace, AsyncEngineArgs.from_cli_args(namespace)


async def test_a_server_over_two_nodes_starts_rank_0_and_a_headless_node(
    cluster: Cluster, operator: Operator, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    from vllm_pods import Node, expanded

    status, rank0, other = await _two_nodes(cluster)
    plan = status["plan"]
    assert (plan["replicas"], plan["tensorParallel"], plan["pipelineStages"]) == (1, 1, 2)
    assert status["pods"] == {"desired": 2, "ready": 2}
    argv = expanded(rank0, "x-worker-0")
    assert argv[:3] == ["python3", "-m", SERVER_MODULE]
    namespace, engine = _vllm_parse(argv[3:])
    assert not namespace.headless
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size) == (1, 2)
    assert (engine.nnodes, engine.node_rank, engine.master_addr, engine.master_port) == (
        2, 0, "x-worker-0.x-stages", 29500)  # fmt: skip
    argv = Node.at(tmp_path / "node").start(other, "x-worker-n-0")
    assert argv[:5] == ["python3", "-m", HEADLESS_MODULE, "serve", "--headless"]
    namespace, engine = _vllm_parse(argv[4:])
    assert namespace.headless
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size) == (1, 2)
    assert (engine.nnodes, engine.node_rank, engine.master_addr, engine.master_port) == (
        2, 1, "x-worker-0.x-stages", 29500)  # fmt: skip
    for c in (rank0, other):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    api = cluster.stored("v1", "services", "default", "x")
    assert api is not None and api["spec"]["selector"][names.LABEL_COMPONENT] == names.WORKER


def _local(argv: list[str], model: Path, port: int, master_port: int) -> list[str]:
    """``argv`` on this machine: the tiny model, loopback addresses, free ports."""
    out = list(argv)
    for flag, value in (
        ("--model", str(model)), ("--host", "127.0.0.1"), ("--port", str(port)),
        ("--master-addr", "127.0.0.1"), ("--master-port", str(master_port)),
    ):  # fmt: skip
        if flag in out:
            out[out.index(flag) + 1] = value
    return out


@pytest.mark.slow
async def test_a_server_over_two_nodes_serves_completions(
    cluster: Cluster, operator: Operator, tiny_llama: Path, tmp_path: Path
) -> None:
    """Rank 0 and the other node, two processes on this machine started from the pods'
    command lines (torch.distributed over gloo between them), serve a completion. Only
    the compilation backend is added (``eager``: torch.compile traces the model, which a
    pipeline stage after the first needs on vLLM's CPU backend, without Inductor's code
    generation, which takes about a minute per process on two cores)."""
    from vllm_pods import Node, expanded
    from vllm_tiny import stop_servers

    _, rank0, other = await _two_nodes(cluster)
    port, master_port = _free_port(), _free_port()
    first = _local(expanded(rank0, "x-worker-0")[3:], tiny_llama, port, master_port)
    second = _local(Node.at(tmp_path / "node").start(other, "x-worker-n-0")[4:], tiny_llama,
                    port, master_port)  # fmt: skip
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    logs = [tmp_path / "rank0.log", tmp_path / "rank1.log"]
    quick = ["--compilation-config", '{"backend": "eager"}']
    commands = [
        [sys.executable, "-m", SERVER_MODULE, *first, *quick],
        [sys.executable, "-c", HEADLESS_SHIM, *second, *quick],
    ]
    procs = []
    for command, path in zip(commands, logs, strict=True):
        with path.open("w") as log:
            procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await _wait_healthy(http, base, procs, logs)
            sampling = {"max_tokens": 5, "temperature": 0, "ignore_eos": True}
            async with http.post(
                f"{base}/v1/completions",
                json={"model": "llama-2x16k", "prompt": "hello world w1 w2 w3", **sampling},
            ) as r:
                assert r.status == 200, await r.text()
                completion = await r.json()
        assert completion["usage"]["completion_tokens"] == 5
        assert completion["usage"]["prompt_tokens"] == 5
        assert procs[1].poll() is None
        assert "PP rank 1" in logs[1].read_text()  # the second stage ran on the other node
    finally:
        stop_servers(procs)
