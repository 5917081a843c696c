"""vLLM's OpenAI servers for ``exegpt bench vllm``, started from exactly the arguments
the operator renders for a plan (``planner/vllm_args.server_args``; only the weights
directory and the address differ), and for a WorkloadAware plan a prefill server and a
decode server sharing a directory (``KvTransfer.shared_directory``, the CPU's KV
connector) behind ``vllm-router``; and the engine's own counters read from their
``/metrics``.

Each server runs in the environment the profile was measured in: one torch thread,
not bound to a core (``OMP_NUM_THREADS=1``, ``VLLM_CPU_OMP_THREADS_BIND=nobind``), a
small KV cache (``VLLM_CPU_KVCACHE_SPACE``), nothing downloaded, and vLLM's compile
cache rather than its ahead-of-time one (``VLLM_USE_AOT_COMPILE=0``).
"""

from __future__ import annotations

import shutil
import signal
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
        # vLLM 0.32's CPU build fails to load its own ahead-of-time compiled model
        # ("'function' object has no attribute 'finalize_loading'") and compiles it again
        # at every start (about 8 s); its older compile cache loads. The compiled model
        # is the same.
        "VLLM_USE_AOT_COMPILE": "0",
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


def stop_on_sigterm() -> None:
    """End this process on SIGTERM (``kill``, a job's timeout) as on an exception, so
    that the servers and routers it started, which a signal to this process alone
    leaves running, are stopped on the way out (``_process``)."""
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


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


@dataclass
class _Started:
    """One plan's servers, started, not yet known healthy."""

    plan: Plan
    servers: list[Process]
    argv: dict[str, list[str]]


def _start(
    stack: ExitStack,
    plan: Plan,
    model_dir: Path,
    max_input: int,
    max_output: int,
    workdir: Path,
    env: dict[str, str],
) -> _Started:
    workdir.mkdir(parents=True, exist_ok=True)
    if plan.config.strategy == "WorkloadAware":
        storage = workdir / "kv"
        storage.mkdir(exist_ok=True)
        transfer: KvTransfer | None = KvTransfer.shared_directory(str(storage))
        roles: tuple[Role, ...] = ("prefill", "decode")
    else:
        transfer, roles = None, ("server",)
    servers: list[Process] = []
    argv: dict[str, list[str]] = {}
    for role in roles:
        port = free_port()
        args = render(plan, role, model_dir, max_input, max_output, port, transfer)
        argv[role] = args
        command = [sys.executable, "-m", SERVER_MODULE, *args]
        url = f"http://127.0.0.1:{port}"
        servers.append(
            stack.enter_context(_process(role, command, workdir / f"{role}.log", url, env))
        )
    return _Started(plan, servers, argv)


def _ready(stack: ExitStack, started: _Started, workdir: Path, env: dict[str, str]) -> Served:
    """Wait for ``started``'s servers; in front of WorkloadAware's, start the router."""
    for p in started.servers:
        _wait_healthy(p, started.servers, START_TIMEOUT_S)
    if len(started.servers) == 1:
        (p,) = started.servers
        return Served(p.url, (p.url,), started.argv)
    prefill, decode = started.servers
    router = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
    if router is None:
        raise ServerFailed("vllm-router is not installed beside vLLM (docs/vllm.md)")
    port = free_port()
    # its metrics on a port of its own too: on its default (29000) any other router on
    # the machine stops it from starting ("Address already in use")
    args = [
        "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
        "--vllm-pd-disaggregation", "--prefill", prefill.url, "--decode", decode.url,
    ]  # fmt: skip
    r = stack.enter_context(
        _process("router", [router, *args], workdir / "router.log", f"http://127.0.0.1:{port}", env)
    )
    _wait_healthy(r, [*started.servers, r], 120.0)
    return Served(r.url, (decode.url,), {**started.argv, "router": args})


@contextmanager
def serve_all(
    plans: Sequence[Plan],
    model_dir: Path,
    max_input: int,
    max_output: int,
    workdir: Path,
    environment: Mapping[str, str],
) -> Iterator[list[Served]]:
    """The servers of every plan of ``plans`` (plans for vLLM), started at once and
    healthy, in the order of ``plans``; all stopped on exit."""
    env = server_environment(environment)
    with ExitStack() as stack:
        dirs = [workdir / str(i) for i in range(len(plans))]
        started = [
            _start(stack, plan, model_dir, max_input, max_output, d, env)
            for plan, d in zip(plans, dirs, strict=True)
        ]
        yield [_ready(stack, s, d, env) for s, d in zip(started, dirs, strict=True)]


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
    with serve_all([plan], model_dir, max_input, max_output, workdir, environment) as (s,):
        yield s


# -- the engine's counters ---------------------------------------------------------------------

COUNTERS: dict[str, tuple[str, str]] = {
    # engine steps (one observation per step) and the tokens they ran
    "steps": ("vllm:iteration_tokens_total_count", ""),
    "step_tokens": ("vllm:iteration_tokens_total_sum", ""),
    # from a request's first scheduling to its first token, and the time it queued
    "prefill_s": ("vllm:request_prefill_time_seconds_sum", ""),
    "prefills": ("vllm:request_prefill_time_seconds_count", ""),
    "queue_s": ("vllm:request_queue_time_seconds_sum", ""),
    "preemptions": ("vllm:num_preemptions_total", ""),
    # prompt tokens computed here, and loaded through the KV connector (WorkloadAware)
    "prompt_local": ("vllm:prompt_tokens_by_source_total", 'source="local_compute"'),
    "prompt_loaded": ("vllm:prompt_tokens_by_source_total", 'source="external_kv_transfer"'),
}


def parse_counters(text: str) -> dict[str, float]:
    """The :data:`COUNTERS` in a ``/metrics`` page, each summed over its series (those
    with its label, where it names one)."""
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for key, (metric, label) in COUNTERS.items():
            if name == metric and label in line:
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
        "prompt_tokens_computed": d["prompt_local"],
        "prompt_tokens_loaded": d["prompt_loaded"],
    }
