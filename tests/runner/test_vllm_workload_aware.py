"""WorkloadAware on vLLM over the CPU connector: a prefill server and a decode server
started from ``exegpt.planner.vllm_args`` (``SharedDirectoryConnector`` over a shared
directory) behind ``vllm-router --vllm-pd-disaggregation`` give the greedy tokens of the
model run alone for prompts of 1 to 300 tokens (across vLLM's 128-token KV blocks on the
CPU), and the decode server's own counters show it loaded every prompt token's KV but the
last one's and computed only that one."""

from __future__ import annotations

import os
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

# one-token prompts after a short one (which made ExampleConnector report -128 tokens to
# load and fail the engine core), and lengths around vLLM's KV block (128 tokens on the
# CPU) and the planner's (32)
LENGTHS = (2, 1, 1, 31, 32, 33, 100, 128, 129, 300)
_G = torch.Generator().manual_seed(3)
PROMPTS = [[int(t) for t in torch.randint(3, 250, (n,), generator=_G)] for n in LENGTHS]
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
                role=role, kv_transfer=KvTransfer.shared_directory(str(storage)),
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
                        "--prometheus-port",
                        str(_free_port()),
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


def _hf_greedy(model: Path, prompts: list[list[int]]) -> list[list[int]]:
    import transformers as tf

    hf = tf.LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            seq = list(prompt)
            for _ in range(NEW_TOKENS):
                seq.append(int(hf(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
            out.append(seq[len(prompt) :])
    return out


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _prompt_tokens(url: str) -> tuple[float, float]:
    """A server's prompt tokens so far: (loaded through the KV connector, computed)."""
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    name = "vllm:prompt_tokens_by_source_total"
    return (
        _counter(metrics, name, source="external_kv_transfer"),
        _counter(metrics, name, source="local_compute"),
    )


def _since(url: str, before: tuple[float, float]) -> tuple[float, float]:
    now = _prompt_tokens(url)
    return now[0] - before[0], now[1] - before[1]


def test_prefill_decode_and_router_give_the_models_greedy_tokens_from_loaded_kv(
    disaggregated: dict[str, Any],
) -> None:
    urls = disaggregated["urls"]
    expected = _hf_greedy(disaggregated["model"], PROMPTS)
    for prompt, tokens in zip(PROMPTS, expected, strict=True):
        decode_before = _prompt_tokens(urls["decode"])
        prefill_before = _prompt_tokens(urls["prefill"])
        body = {
            "model": "tiny", "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0,
            "ignore_eos": True, "return_token_ids": True,
        }  # fmt: skip
        r = requests.post(f"{urls['router']}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, (len(prompt), r.text)
        assert r.json()["choices"][0]["token_ids"] == tokens, len(prompt)

        # the prefill server computed the prompt; the decode server took the KV of every
        # prompt token but the last from it and computed the last one itself (a
        # one-token prompt has nothing to hand over)
        assert _since(urls["prefill"], prefill_before) == (0, len(prompt)), len(prompt)
        assert _since(urls["decode"], decode_before) == (len(prompt) - 1, 1), len(prompt)
