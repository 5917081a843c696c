"""The commands a chain's ranks exchange, and how they travel over ``torch.distributed``.

A command is one int64 tensor: ``[op, n, r]``, then ``n`` sequence ids, ``n`` new-token
counts, ``n`` temperatures (in millionths), ``n`` top-k values, ``n`` seeds, ``n`` token
indices, ``n`` owners (with partial tensor parallelism, the TP rank that runs each
sequence in the data-parallel phase), then ``r`` sequence ids to release before the
step. It is sent as its length
(one int64) and then itself; the step's input (token ids or hidden states, whose shape
the command implies) follows with its own tag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import torch
import torch.distributed as dist

from .sampling import RowSampling


class Op(IntEnum):
    PREFILL = 1  # encode new sequences (their KV caches join this chain's caches)
    DECODE = 2  # one token for each sequence
    ADMIT = 3  # take encoded sequences' KV caches from the encoder chain
    RELEASE = 4  # only release sequences
    STOP = 5


class Tag(IntEnum):
    COMMAND = 11
    INPUT = 12
    TOKENS = 13
    KV = 14


@dataclass
class Command:
    op: Op
    seq_ids: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    rows: list[RowSampling] = field(default_factory=list)
    release: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # empty: every owner is 0

    @property
    def batch(self) -> int:
        return len(self.seq_ids)

    def encode(self) -> torch.Tensor:
        n = len(self.seq_ids)
        if not (len(self.new) == len(self.rows) == n):
            raise ValueError("a command needs new counts and sampling rows for every sequence")
        values = [int(self.op), n, len(self.release)]
        values += self.seq_ids
        values += self.new
        values += [round(r.temperature * 1e6) for r in self.rows]
        values += [r.top_k for r in self.rows]
        values += [r.seed for r in self.rows]
        values += [r.index for r in self.rows]
        values += self.owners or [0] * n
        values += self.release
        return torch.tensor(values, dtype=torch.long)

    @classmethod
    def decode(cls, t: torch.Tensor) -> Command:
        v = t.tolist()
        op, n, r = Op(v[0]), v[1], v[2]
        cols = [v[3 + i * n : 3 + (i + 1) * n] for i in range(7)]
        seq, new, temp, top_k, seed, index, owners = cols
        rows = [RowSampling(temp[i] / 1e6, top_k[i], seed[i], index[i]) for i in range(n)]
        release = v[3 + 7 * n : 3 + 7 * n + r]
        return cls(op, seq, new, rows, release, owners)

    def owner(self, i: int) -> int:
        return self.owners[i] if self.owners else 0

    def subset(self, index: list[int]) -> Command:
        """The command for the sequences at ``index`` (releases kept)."""
        return Command(
            self.op,
            [self.seq_ids[i] for i in index],
            [self.new[i] for i in index],
            [self.rows[i] for i in index],
            self.release,
            [self.owner(i) for i in index],
        )


class Link:
    """Point-to-point messages and stage broadcasts. Hidden states and KV caches go
    through ``device`` on the default group (NCCL on GPUs, gloo on the CPU); commands
    and sampled tokens through ``control`` (a gloo group on the CPU) when given, so that
    every pair of GPU ranks carries one kind of NCCL message, in one order."""

    def __init__(self, device: torch.device, control: dist.ProcessGroup | None = None) -> None:
        self.device = device
        self.control = control
        self.cdev = torch.device("cpu") if control is not None else device
        self._pending: list[tuple[dist.Work, torch.Tensor]] = []

    def _isend(
        self, t: torch.Tensor, dst: int, tag: Tag, group: dist.ProcessGroup | None = None
    ) -> None:
        work = dist.isend(t, dst, group=group, tag=int(tag))
        if work is not None:
            self._pending.append((work, t))

    def flush(self) -> None:
        """Wait until every message sent without waiting has gone."""
        pending, self._pending = self._pending, []
        for work, _ in pending:
            work.wait()

    def send_command(self, cmd: Command, dst: int) -> None:
        """Send ``cmd`` without waiting (:meth:`flush` waits)."""
        t = cmd.encode().to(self.cdev)
        size = torch.tensor([t.numel()], dtype=torch.long, device=self.cdev)
        self._isend(size, dst, Tag.COMMAND, self.control)
        self._isend(t, dst, Tag.COMMAND, self.control)

    def send_input(self, t: torch.Tensor, dst: int) -> None:
        """Send a step's input (token ids or hidden states) without waiting."""
        self._isend(t.contiguous(), dst, Tag.INPUT)

    def recv_input(self, shape: Sequence[int], dtype: torch.dtype, src: int) -> torch.Tensor:
        t = torch.empty(tuple(shape), dtype=dtype, device=self.device)
        dist.recv(t, src, tag=int(Tag.INPUT))
        return t

    def recv_command(self, src: int) -> Command:
        size = torch.empty(1, dtype=torch.long, device=self.cdev)
        dist.recv(size, src, group=self.control, tag=int(Tag.COMMAND))
        t = torch.empty(int(size.item()), dtype=torch.long, device=self.cdev)
        dist.recv(t, src, group=self.control, tag=int(Tag.COMMAND))
        return Command.decode(t.cpu())

    def broadcast_command(self, cmd: Command | None, src: int, group: dist.ProcessGroup) -> Command:
        """Every rank of ``group`` gets ``src``'s command (``cmd`` on ``src`` only)."""
        size = torch.zeros(1, dtype=torch.long, device=self.device)
        t: torch.Tensor | None = None
        if cmd is not None:
            t = cmd.encode().to(self.device)
            size[0] = t.numel()
        dist.broadcast(size, src, group=group)
        if t is None:
            t = torch.empty(int(size.item()), dtype=torch.long, device=self.device)
        dist.broadcast(t, src, group=group)
        return cmd if cmd is not None else Command.decode(t.cpu())

    def send_tokens(self, tokens: Sequence[int], dst: int) -> None:
        """Send sampled tokens back to the driver without waiting."""
        t = torch.tensor(list(tokens), dtype=torch.long, device=self.cdev)
        self._isend(t, dst, Tag.TOKENS, self.control)

    def recv_tokens(self, n: int, src: int) -> list[int]:
        t = torch.empty(n, dtype=torch.long, device=self.cdev)
        dist.recv(t, src, group=self.control, tag=int(Tag.TOKENS))
        return [int(x) for x in t.tolist()]
