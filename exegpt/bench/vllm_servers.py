"""vLLM's OpenAI servers for ``exegpt bench vllm``, started from exactly the arguments
the operator renders for a plan (``planner/vllm_args.server_args``; only the weights
directory and the address differ), and for a WorkloadAware plan a prefill server and a
decode server sharing ``ExampleConnector``'s directory behind ``vllm-router``; and the
engine's own counters read from their ``/metrics``.

Each server runs in the environment the profile was measured in: one torch thread,
not bound to a core (``OMP_NUM_THREADS=1``, ``VLLM_CPU_OMP_THREADS_BIND=nobind``), a
small KV cache (``VLLM_CPU_KVCACHE_SPACE``), nothing downloaded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from exegpt.planner.plan import Plan
from exegpt.planner.vllm_args import SERVER_MODULE, KvTransfer, Role, server_args

SERVED_NAME = "bench"
START_TIMEOUT_S = 900.0


def server_environment(base: Mapping[str, str], kv_cache_gib: int = 1) -> dict[str, str]:
    """``base`` (the environment before vLLM ran in this process: it sets variables of
    its own) with the profile's threads, the KV cache and no downloads."""
    return {
        **base,
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "HF_HUB_OFFLINE": "1",
        "VLLM_LOGGING_STREAM": "ext://sys.stdout",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    """A started process, its log and the URL it answers on."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class ServerFailed(RuntimeError):
    """A server exited or did not become healthy."""


def _wait_healthy(target: Process, watched: Sequence[Process], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in watched:
            if p.proc.poll() is not None:
                raise ServerFailed(f"{p.name} exited {p.proc.returncode}:\n{p.tail()}")
        try:
            if requests.get(f"{target.url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServerFailed(f"{target.name} not healthy in {timeout_s:g} s:\n{target.tail()}")


@contextmanager
def _process(
    name: str, argv: list[str], log: Path, url: str, env: dict[str, str]
) -> Iterator[Process]:
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield Process(name, proc, log, url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass(frozen=True)
class Served:
    """What a configuration's load is sent to: the URL, and the servers whose engine
    counters are read (the decode server's, for WorkloadAware)."""

    url: str
    engines: tuple[str, ...]
    argv: dict[str, list[str]]  # each server's arguments, by role


def render(
    plan: Plan,
    role: Role,
    model_dir: Path,
    max_input: int,
    max_output: int,
    port: int,
    kv_transfer: KvTransfer | None = None,
) -> list[str]:
    """The operator's arguments for the ``role`` server of ``plan``, on this host."""
    args = server_args(
        plan,
        model_dir=str(model_dir),
        served_model_name=SERVED_NAME,
        dtype="float32",
        max_input_tokens=max_input,
        max_output_tokens=max_output,
        port=port,
        gpus_per_node=plan.config.gpus_per_replica,
        role=role,
        kv_transfer=kv_transfer,
    )
    args[args.index("--host") + 1] = "127.0.0.1"
    return args


@contextmanager
def serve(
    plan: Plan,
    model_dir: Path,
    max_input: int,
    max_output: int,
    workdir: Path,
    environment: Mapping[str, str],
) -> Iterator[Served]:
    """The servers of ``plan`` (a plan for vLLM), healthy; stopped on exit."""
    env = server_environment(environment)
    with ExitStack() as stack:
        if plan.config.strategy != "WorkloadAware":
            port = free_port()
            args = render(plan, "server", model_dir, max_input, max_output, port)
            p = stack.enter_context(
                _process(
                    "server",
                    [sys.executable, "-m", SERVER_MODULE, *args],
                    workdir / "server.log",
                    f"http://127.0.0.1:{port}",
                    env,
                )
            )
            _wait_healthy(p, [p], START_TIMEOUT_S)
            yield Served(p.url, (p.url,), {"server": args})
            return
        storage = workdir / "kv"
        storage.mkdir(exist_ok=True)
        transfer = KvTransfer("ExampleConnector", str(storage))
        started: list[Process] = []
        argv: dict[str, list[str]] = {}
        for role in ("prefill", "decode"):
            port = free_port()
            args = render(plan, role, model_dir, max_input, max_output, port, transfer)
            argv[role] = args
            started.append(
                stack.enter_context(
                    _process(
                        role,
                        [sys.executable, "-m", SERVER_MODULE, *args],
                        workdir / f"{role}.log",
                        f"http://127.0.0.1:{port}",
                        env,
                    )
                )
            )
        for p in started:
            _wait_healthy(p, started, START_TIMEOUT_S)
        router = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
        if router is None:
            raise ServerFailed("vllm-router is not installed beside vLLM (docs/vllm.md)")
        port = free_port()
        argv["router"] = [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--vllm-pd-disaggregation",
            "--prefill",
            started[0].url,
            "--decode",
            started[1].url,
        ]
        r = stack.enter_context(
            _process(
                "router",
                [router, *argv["router"]],
                workdir / "router.log",
                f"http://127.0.0.1:{port}",
                env,
            )
        )
        _wait_healthy(r, [*started, r], 120.0)
        yield Served(r.url, (started[1].url,), argv)


# -- the engine's counters ---------------------------------------------------------------------

COUNTERS = {
    # engine steps (one observation per step) and the tokens they ran
    "steps": "vllm:iteration_tokens_total_count",
    "step_tokens": "vllm:iteration_tokens_total_sum",
    # from a request's first scheduling to its first token, and the time it queued
    "prefill_s": "vllm:request_prefill_time_seconds_sum",
    "prefills": "vllm:request_prefill_time_seconds_count",
    "queue_s": "vllm:request_queue_time_seconds_sum",
    "preemptions": "vllm:num_preemptions_total",
}


def parse_counters(text: str) -> dict[str, float]:
    """The :data:`COUNTERS` in a ``/metrics`` page, each summed over its series."""
    out = dict.fromkeys(COUNTERS, 0.0)
    names = {v: k for k, v in COUNTERS.items()}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = names.get(name)
        if key is not None:
            out[key] += float(line.rsplit(" ", 1)[1])
    return out


def read_counters(urls: Sequence[str]) -> dict[str, float]:
    total = dict.fromkeys(COUNTERS, 0.0)
    for url in urls:
        got = parse_counters(requests.get(f"{url}/metrics", timeout=30).text)
        for k, v in got.items():
            total[k] += v
    return total


def counters_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the engines did between two readings: steps, their mean tokens, the mean
    prefill and queue times of the requests prefilled, preemptions."""
    d = {k: after[k] - before[k] for k in COUNTERS}
    prefills = d["prefills"]
    return {
        "steps": d["steps"],
        "mean_step_tokens": d["step_tokens"] / d["steps"] if d["steps"] else float("nan"),
        "prefills": prefills,
        "mean_prefill_s": d["prefill_s"] / prefills if prefills else float("nan"),
        "mean_queue_s": d["queue_s"] / prefills if prefills else float("nan"),
        "preemptions": d["preemptions"],
    }
