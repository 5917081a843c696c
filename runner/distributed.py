"""Run a function in several processes joined by ``torch.distributed``: one per GPU
(NCCL), or on CPUs (gloo). What the tensor-parallel tests and the profiler's
communication measurements use."""

from __future__ import annotations

import faulthandler
import os
import queue
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class WorkerError(RuntimeError):
    """A worker process failed; the message holds its traceback."""


def _entry(
    rank: int,
    world: int,
    init_method: str,
    backend: str,
    threads: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    results: Any,
    stacks: str = "",
) -> None:
    dump = None
    if stacks and hasattr(signal, "SIGUSR1"):
        # every thread's stack into ``stacks`` on SIGUSR1: what a hung rank was doing
        dump = open(stacks, "w")  # noqa: SIM115 (open while the process lives)
        faulthandler.register(signal.SIGUSR1, file=dump, all_threads=True)
    try:
        if threads:
            torch.set_num_threads(threads)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world)
        value = fn(rank, world, *args)
        results.put((rank, True, value))
    except BaseException:  # report everything, KeyboardInterrupt included
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if dump is not None:
            faulthandler.unregister(signal.SIGUSR1)
            dump.close()


def _stacks(procs: list[Any], tmp: str) -> str:
    """Every live worker's stacks, dumped on SIGUSR1 into its file under ``tmp``."""
    live = [(rank, p) for rank, p in enumerate(procs) if p.is_alive()]
    if not live or not hasattr(signal, "SIGUSR1"):
        return ""
    for _, p in live:
        os.kill(p.pid, signal.SIGUSR1)
    time.sleep(1.0)
    parts = []
    for rank, _ in live:
        path = os.path.join(tmp, f"stack-{rank}")
        text = Path(path).read_text().strip() if os.path.exists(path) else "(not started)"
        parts.append(f"rank {rank} (still running):\n{text}")
    return "\n".join(parts)


def launch(
    fn: Callable[..., Any],
    world: int,
    *args: Any,
    backend: str = "gloo",
    threads: int = 1,
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` fresh processes with the default
    process group initialised; return each rank's result (rank order). ``fn`` and its
    arguments and results must be picklable (``fn`` defined at a module's top level).
    ``threads``: torch threads per process (0 leaves torch's default)."""
    if world < 1:
        raise ValueError("world must be >= 1")
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise ValueError(f"{world} NCCL ranks need {world} GPUs, found {torch.cuda.device_count()}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="exegpt-dist-") as tmp:
        init = "file://" + os.path.join(tmp, "store")
        procs = [
            ctx.Process(
                target=_entry,
                args=(
                    rank,
                    world,
                    init,
                    backend,
                    threads,
                    fn,
                    args,
                    results,
                    os.path.join(tmp, f"stack-{rank}"),
                ),
                daemon=True,
            )
            for rank in range(world)
        ]
        for p in procs:
            p.start()
        got: dict[int, Any] = {}
        errors: list[str] = []
        waited = 0.0
        try:
            while len(got) + len(errors) < world:
                try:
                    rank, ok, value = results.get(timeout=0.5)
                except queue.Empty:
                    waited += 0.5
                    if errors and waited > 5.0:
                        break  # the others wait on the failed rank in a collective
                    dead = [p for p in procs if p.exitcode not in (None, 0)]
                    if dead and len(got) + len(errors) < world and results.empty():
                        codes = ", ".join(f"rank {procs.index(p)}: {p.exitcode}" for p in dead)
                        raise WorkerError(f"worker processes died ({codes})") from None
                    if waited > timeout_s:
                        raise WorkerError(
                            f"workers did not finish in {timeout_s:g} s\n{_stacks(procs, tmp)}"
                        ) from None
                    continue
                if ok:
                    got[rank] = value
                else:
                    errors.append(f"rank {rank}:\n{value}")
                    waited = 0.0
        finally:
            for p in procs:
                p.join(timeout=1 if errors else 10)
                if p.is_alive():
                    p.kill()
                    p.join()
    if errors:
        raise WorkerError("\n".join(errors))
    return [got[r] for r in range(world)]
