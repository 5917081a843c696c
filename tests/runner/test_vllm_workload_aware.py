"""WorkloadAware on vLLM over the CPU connector: a prefill server and a decode server
started from ``exegpt.planner.vllm_args`` (``ExampleConnector`` over a shared directory)
behind ``vllm-router --vllm-pd-disaggregation`` give the greedy tokens of the model run
alone, and the decode server's own counters show it loaded the prompt's KV instead of
computing it again."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import torch

pytest.importorskip("vllm")

from planner_builders import config
from vllm_tiny import save_tiny_llama, stop_servers

from exegpt.planner.plan import Plan, Prediction, SearchStats
from exegpt.planner.vllm_args import SERVER_MODULE, KvTransfer, server_args

pytestmark = pytest.mark.slow

# longer than a KV block (128 tokens on the CPU): ExampleConnector hands over whole blocks
PROMPT = [int(t) for t in torch.randint(3, 250, (300,), generator=torch.Generator().manual_seed(3))]
NEW_TOKENS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plan() -> Plan:
    c = config("WorkloadAware", encode_batch=2, decode_batch=4)
    p = Prediction(
        throughput_qps=1, throughput_tps=1, latency_s=1, e2e_p99_s=1,
        memory_per_gpu_bytes=1, decode_batch=4, feasible=True,
    )  # fmt: skip
    return Plan(
        strategy="WorkloadAware", engine="vLLM", config=c, predicted=p,
        search=SearchStats(seconds=0, evaluated=0, space=0),
    )  # fmt: skip


def _wait(url: str, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(f"{log.name} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer:\n" + "\n".join(p.read_text()[-2000:] for p in logs))


@pytest.fixture(scope="module")
def disaggregated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Prefill and decode servers and the router in front of them."""
    root = tmp_path_factory.mktemp("waa")
    model = save_tiny_llama(root / "tiny-llama")
    storage = root / "kv"
    storage.mkdir()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    urls: dict[str, str] = {}
    try:
        for role in ("prefill", "decode"):
            port = _free_port()
            args = server_args(
                _plan(), model_dir=str(model), served_model_name="tiny", dtype="float32",
                max_input_tokens=320, max_output_tokens=32, port=port, gpus_per_node=1,
                role=role, kv_transfer=KvTransfer("ExampleConnector", str(storage)),
            )  # fmt: skip
            args[args.index("--host") + 1] = "127.0.0.1"
            logs.append(root / f"{role}.log")
            with logs[-1].open("w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", SERVER_MODULE, *args],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                    )
                )
            urls[role] = f"http://127.0.0.1:{port}"
        for role in ("prefill", "decode"):
            _wait(f"{urls[role]}/health", procs, logs)
        router = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
        assert router is not None, "vllm-router is installed beside vLLM (docs/vllm.md)"
        port = _free_port()
        logs.append(root / "router.log")
        with logs[-1].open("w") as log:
            procs.append(
                subprocess.Popen(
                    [
                        router,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--vllm-pd-disaggregation",
                        "--prefill",
                        urls["prefill"],
                        "--decode",
                        urls["decode"],
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        urls["router"] = f"http://127.0.0.1:{port}"
        _wait(f"{urls['router']}/health", procs, logs)
        yield {"model": model, "urls": urls, "logs": logs}
    finally:
        stop_servers(reversed(procs))


def _hf_greedy(model: Path) -> list[int]:
    import transformers as tf

    hf = tf.LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()
    seq = list(PROMPT)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            seq.append(int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(PROMPT) :]


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prefill_decode_and_router_give_the_models_greedy_tokens_from_loaded_kv(
    disaggregated: dict[str, Any],
) -> None:
    urls = disaggregated["urls"]
    decode_metrics = requests.get(f"{urls['decode']}/metrics", timeout=10).text
    before = _counter(
        decode_metrics, "vllm:prompt_tokens_by_source_total", source="external_kv_transfer"
    )
    body = {
        "model": "tiny", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True,
    }  # fmt: skip
    r = requests.post(f"{urls['router']}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["token_ids"] == _hf_greedy(disaggregated["model"])

    decode_metrics = requests.get(f"{urls['decode']}/metrics", timeout=10).text
    loaded = (
        _counter(decode_metrics, "vllm:prompt_tokens_by_source_total",
                 source="external_kv_transfer") - before
    )  # fmt: skip
    computed = _counter(
        decode_metrics, "vllm:prompt_tokens_by_source_total", source="local_compute"
    )
    # the decode server took the prompt's KV (its whole blocks) from the prefill server
    # and computed only the rest itself
    assert loaded >= 256, decode_metrics
    assert computed == len(PROMPT) - loaded, decode_metrics
    prefill_metrics = requests.get(f"{urls['prefill']}/metrics", timeout=10).text
    assert _counter(prefill_metrics, "vllm:prompt_tokens_by_source_total",
                    source="local_compute") >= len(PROMPT)  # fmt: skip
    assert re.search(r"External Cache Hit", disaggregated["logs"][1].read_text())
