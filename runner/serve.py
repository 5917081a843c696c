"""``exegpt serve``: run the processes of one pod of a plan (in a cluster), or every
process of one replica on this machine (``--local``).

A pod runs one process per GPU: this process is the first (TP rank 0 of its stage) and
serves HTTP; it starts the others. All of them join the replica's
``torch.distributed`` world at its driver's pod. The driver's HTTP server takes the
requests (:mod:`exegpt.runner.server`); other pods answer their probes and pass the API
on to the driver (:mod:`exegpt.runner.proxy`).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from exegpt.planner.workerplan import PLAN_HASH_KEY, RENDEZVOUS_PORT_OFFSET, WorkerPlan

from .auth import api_token_from_env
from .engine import Engine
from .errors import RunnerError
from .listen import check_listen_address
from .metrics import ServingMetrics
from .planhash import verify_plan_file
from .replica import ReplicaSpec, device_for, run_rank
from .serving import GenerationRequest, Limits, NotAccepting, Sink
from .tokenizer import load_tokenizer
from .workerplan import placement, pod_ordinal, replica_spec

log = logging.getLogger(__name__)


class LateEngine:
    """The engine as the server sees it while the replica is still starting: not
    ready, refusing requests, until :meth:`attach`."""

    def __init__(self, limits: Limits, metrics: ServingMetrics) -> None:
        self._limits = limits
        self.metrics = metrics
        self.engine: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready

    @property
    def limits(self) -> Limits:
        return self._limits

    def submit(self, request: GenerationRequest, sink: Sink) -> int:
        if self.engine is None:
            raise NotAccepting("the replica is starting (loading the model)")
        return self.engine.submit(request, sink)

    def cancel(self, request_id: int) -> None:
        if self.engine is not None:
            self.engine.cancel(request_id)

    def begin_drain(self) -> None:
        if self.engine is not None:
            self.engine.begin_drain()

    def wait_idle(self, timeout: float) -> bool:
        return self.engine.wait_idle(timeout) if self.engine is not None else True


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _join_world(init_method: str, rank: int, world: int, timeout_s: float) -> None:
    if world > 1:
        dist.init_process_group(
            _backend(),
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout_s),
        )


def _rank_process(
    spec: ReplicaSpec, rank: int, world: int, init_method: str, gpu: int, threads: int,
    timeout_s: float,
) -> None:  # fmt: skip
    """A process of the pod beyond its first: one more TP rank of the stage."""
    logging.basicConfig(level=logging.INFO, format=f"rank {rank}: %(levelname)s %(message)s")
    _exit_with_parent()
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available():
        torch.cuda.set_device(gpu)
    try:
        _join_world(init_method, rank, world, timeout_s)
        run_rank(spec, rank, device_for(gpu), freeze=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _exit_with_parent() -> None:
    """End this process when the one that started it is gone (killed without the
    chance to stop its children): a rank waiting for peers would otherwise linger."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exegpt-parent-watch", daemon=True).start()


@dataclass
class Processes:
    """This pod's processes: the others (TP ranks 1..) and this one's rank, run on a
    thread (the driver's engine, or a stage's loop) so the HTTP server can answer
    probes while the world forms and the model loads."""

    spec: ReplicaSpec
    ranks: tuple[int, ...]
    world: int
    init_method: str
    threads: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        self.children: list[Any] = []
        self.thread: threading.Thread | None = None
        # what the HTTP server drives: refusing requests until the driver's engine is up
        self.front = LateEngine(self.spec.limits(), ServingMetrics())
        self.error: str | None = None
        self.joined = threading.Event()
        self.done = threading.Event()

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        for gpu, rank in enumerate(self.ranks[1:], start=1):
            p = ctx.Process(
                target=_rank_process,
                args=(self.spec, rank, self.world, self.init_method, gpu, self.threads,
                      self.timeout_s),
                daemon=True,
            )  # fmt: skip
            p.start()
            self.children.append(p)
        self.thread = threading.Thread(target=self._run, name="exegpt-rank", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rank = self.ranks[0]
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            _join_world(self.init_method, rank, self.world, self.timeout_s)
            self.joined.set()
            engine = run_rank(
                self.spec, rank, device_for(0), metrics=self.front.metrics, freeze=True
            )
            if engine is not None:
                self.front.attach(engine)
        except Exception as exc:
            log.exception("rank %d failed", rank)
            self.error = f"rank {rank} failed: {exc}"
        finally:
            if self.engine is None:
                self.done.set()

    @property
    def engine(self) -> Engine | None:
        """The driver's engine, once it runs."""
        return self.front.engine

    @property
    def driver(self) -> bool:
        return 0 in self.ranks

    def serve_api(
        self, model_name: str, host: str, port: int, grace_seconds: float,
        api_token: str | None = None,
    ) -> None:  # fmt: skip
        """The driver's HTTP server over the engine, until SIGTERM or SIGINT."""
        from .server import run_server

        asyncio.run(
            run_server(
                self.front, host=host, port=port, model_name=model_name,
                tokenizer=load_tokenizer(self.spec.weights), grace_seconds=grace_seconds,
                ready=self.ready, healthy=self.healthy, api_token=api_token,
            )
        )  # fmt: skip

    def healthy(self) -> bool:
        if self.error is not None:
            return False
        if any(p.exitcode not in (None, 0) for p in self.children):
            return False
        engine = self.engine
        return engine is None or engine.healthy

    def ready(self) -> bool:
        if not self.healthy():
            return False
        if self.driver:
            return self.engine is not None and self.engine.ready
        return self.joined.is_set() and not self.done.is_set()

    def stop(self, timeout: float) -> None:
        """The driver stops its engine (and with it every rank of the replica); another
        pod waits for that, up to ``timeout`` seconds."""
        if self.engine is not None:
            self.engine.stop(timeout)
        else:
            self.done.wait(timeout)
        for p in self.children:
            p.join(timeout=max(1.0, timeout / 4))
            if p.is_alive():
                p.kill()
        if dist.is_initialized():
            dist.destroy_process_group()


def serve_pod(
    plan_file: str, role: str, port: int, *, pod_name: str, namespace: str | None,
    host: str = "0.0.0.0", grace_seconds: float = 60.0, timeout_s: float = 300.0,
) -> int:  # fmt: skip
    """One pod of a plan, until SIGTERM (the operator's worker containers)."""
    from .proxy import build_proxy_app

    check_listen_address(host, port)
    wait_for_own_plan(plan_file, os.environ.get("EXEGPT_PLAN_HASH"))
    plan = verify_plan_file(plan_file, os.environ.get("EXEGPT_PLAN_HASH"))
    api_token = api_token_from_env(os.environ)
    place = placement(plan, role, pod_ordinal(pod_name), namespace)
    spec = replica_spec(plan)
    driver_host, driver_port = place.driver_host, port
    override = os.environ.get("EXEGPT_DRIVER_ADDRESS")  # outside Kubernetes: host:port
    if override:
        host_part, _, port_part = override.rpartition(":")
        if not host_part or not port_part.isdigit():
            raise RunnerError(f"EXEGPT_DRIVER_ADDRESS {override!r}: expected host:port")
        driver_host, driver_port = host_part, int(port_part)
    init = f"tcp://{driver_host}:{driver_port + RENDEZVOUS_PORT_OFFSET}"
    log.info(
        "%s: replica %d, stage %d, ranks %s of %d; driver at %s",
        pod_name, place.replica, place.stage, list(place.ranks), place.world, driver_host,
    )  # fmt: skip
    procs = Processes(spec, place.ranks, place.world, init, timeout_s=timeout_s)
    procs.start()
    _stop_when_done(procs)
    if place.driver_pod:
        procs.serve_api(plan.model.name, host, port, grace_seconds, api_token)
    else:
        target = f"http://{driver_host}:{driver_port}"
        app = build_proxy_app(target, ready=procs.ready, healthy=procs.healthy)
        asyncio.run(_serve_app(app, host, port))
    procs.stop(grace_seconds)
    if procs.error is not None or not procs.healthy():
        log.error("exiting: %s", procs.error or "a process of this pod failed")
        return 1
    return 0


def _stop_when_done(
    procs: Processes, poll_s: float = 1.0, until: threading.Event | None = None
) -> None:
    """Shut this pod down (as SIGTERM would) when its part of the replica has ended: a
    process failed, or (a stage pod) the driver stopped the replica. The container
    then restarts and its processes meet their replica's again. Watching ends when
    ``until`` is set (the server has stopped)."""

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if until is not None and until.is_set():
                return
            ended = procs.done.is_set() and not procs.driver
            if ended or not procs.healthy():
                log.warning("this pod's part of the replica has ended: shutting down")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="exegpt-watch", daemon=True).start()


def wait_for_own_plan(
    plan_file: str, expected: str | None, timeout_s: float = 600.0, poll_s: float = 5.0
) -> None:
    """Wait until the mounted plan is the one this pod was made for: its ``plan-hash``
    (beside ``plan.json``) equals ``$EXEGPT_PLAN_HASH``. A new plan updates the mounted
    file before the StatefulSet replaces the pods, and a pod must not join a world with
    a plan its peers do not run."""
    if not expected:
        return
    path = os.path.join(os.path.dirname(plan_file), PLAN_HASH_KEY)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with open(path, encoding="utf-8") as f:
                mounted = f.read().strip()
        except OSError:
            mounted = ""
        if mounted == expected:
            return
        if time.monotonic() > deadline:
            raise RunnerError(
                f"the mounted plan ({mounted or 'no plan-hash'}) is not the plan this pod was "
                f"made for ({expected}); the StatefulSet replaces pods of an old plan"
            )
        log.warning("waiting for the plan this pod was made for (%s, mounted: %s)",
                    expected, mounted or "none")  # fmt: skip
        time.sleep(poll_s)


async def _serve_app(app: Any, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT."""
    from aiohttp import web

    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def local_spec(plan: WorkerPlan, max_slots: int | None = None) -> ReplicaSpec:
    """The replica of ``plan`` as this machine runs it: float32 on the CPU, and at most
    ``max_slots`` sequences per cache (a plan for GPUs may batch more than a laptop
    holds)."""
    spec = replace(replica_spec(plan), max_slots=max_slots)
    if not torch.cuda.is_available():
        spec = replace(spec, dtype="float32")
    return spec


def serve_local(
    plan: WorkerPlan, *, host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
    grace_seconds: float = 10.0, max_slots: int | None = 64,
) -> int:  # fmt: skip
    """One replica of ``plan``, every process on this machine (gloo on the CPU), its
    API on ``host``:``port``, until SIGTERM or Ctrl-C, or until a process of the
    replica fails (then 1)."""
    if max_slots is not None and max_slots < 1:
        raise RunnerError(
            f"--max-slots {max_slots}: give at least 1 sequence per KV cache, "
            "or leave the option out for the default 64"
        )
    check_listen_address(host, port)
    spec = local_spec(plan, max_slots)
    world = spec.topology().world
    if torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise RunnerError(f"the replica needs {world} GPUs, this machine has fewer")
    with tempfile.TemporaryDirectory(prefix="exegpt-local-") as tmp:
        init = "file://" + os.path.join(tmp, "rendezvous")
        procs = Processes(spec, tuple(range(world)), world, init, threads=threads)
        procs.start()
        served = threading.Event()
        _stop_when_done(procs, until=served)  # a failed process ends the server
        procs.serve_api(plan.model.name, host, port, grace_seconds)
        served.set()
        failed = procs.error or (None if procs.healthy() else "a process of the replica failed")
        procs.stop(grace_seconds)
    if failed is not None:
        log.error("exiting: %s", failed)
        return 1
    return 0
