"""Communication times measured with ``torch.distributed``: all-reduce within a
tensor-parallel group, and point-to-point send/receive between two devices (a pipeline
boundary), by message bytes. One process per GPU over NCCL, or CPU processes over gloo.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from .distributed import launch
from .model import DTYPES


@dataclass(frozen=True)
class CommTimes:
    """Median seconds by message bytes: ``all_reduce[tp]`` and ``send_recv``."""

    bytes: list[int]
    all_reduce: dict[int, list[float]]
    send_recv: list[float]
    backend: str


def byte_sizes(lo: int, hi: int, factor: int = 4) -> list[int]:
    """``lo``, ``lo * factor``, ... up to ``hi`` (included)."""
    out, x = [], lo
    while x < hi:
        out.append(x)
        x *= factor
    out.append(hi)
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _comm_worker(
    rank: int,
    world: int,
    degrees: list[int],
    sizes: list[int],
    dtype: str,
    cuda: bool,
    warmup: int,
    repeats: int,
) -> tuple[dict[int, list[float]], list[float]]:
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")

    def median_seconds(op: Callable[[], object], group: dist.ProcessGroup) -> float:
        """The median time of ``op`` over ``repeats`` runs after ``warmup``, the
        group's ranks starting together."""
        samples = []
        for i in range(warmup + repeats):
            dist.barrier(group=group)
            _sync(device)
            t0 = time.perf_counter()
            op()
            _sync(device)
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    dt = DTYPES[dtype]
    elem = torch.empty((), dtype=dt).element_size()
    all_reduce: dict[int, list[float]] = {}
    for tp in degrees:
        group = dist.new_group(list(range(tp)))  # every rank takes part in creating it
        if rank >= tp:
            continue
        times = []
        for nbytes in sizes:
            t = torch.ones(max(nbytes // elem, 1), dtype=dt, device=device)
            times.append(median_seconds(partial(dist.all_reduce, t, group=group), group))
        all_reduce[tp] = times
    dist.barrier()
    send_recv: list[float] = []
    if rank < 2:
        peer = 1 - rank
        pair = dist.new_group([0, 1])

        def ping_pong(t: torch.Tensor) -> None:  # half the round trip is one transfer
            if rank == 0:
                dist.send(t, peer)
                dist.recv(t, peer)
            else:
                dist.recv(t, peer)
                dist.send(t, peer)

        for nbytes in sizes:
            t = torch.ones(max(nbytes // elem, 1), dtype=dt, device=device)
            send_recv.append(median_seconds(partial(ping_pong, t), pair) / 2)
    else:
        dist.new_group([0, 1])
    return all_reduce, send_recv


def measure_comm(
    degrees: Sequence[int],
    sizes: Sequence[int],
    *,
    dtype: str = "float16",
    cuda: bool,
    warmup: int = 2,
    repeats: int = 5,
    timeout_s: float = 600.0,
) -> CommTimes:
    """All-reduce times for each TP degree in ``degrees`` (> 1) and send/receive times
    between two devices, over ``max(degrees, 2)`` processes."""
    tps = sorted({d for d in degrees if d > 1})
    world = max([2, *tps])
    backend = "nccl" if cuda else "gloo"
    results = launch(
        _comm_worker, world, tps, list(sizes), dtype, cuda, warmup, repeats,
        backend=backend, threads=1, timeout_s=timeout_s,
    )  # fmt: skip
    all_reduce, send_recv = results[0]
    return CommTimes(list(sizes), all_reduce, send_recv, backend)
