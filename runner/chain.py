"""Running commands through a chain of pipeline stages over ``torch.distributed``.

The driver (rank 0) sends each step's command to the chain's first stage, or runs the
first stage itself when it leads it; each stage's leader broadcasts the command and
its input to its tensor-parallel ranks, runs the stage, and passes the command and the
hidden states to the next stage's leader; the last stage's leader samples the tokens
and sends them back to the driver. The driver sends without waiting, so the
micro-batches of one step are in different stages at once.

WorkloadAware: after a prefill, every encoder rank sends the keys and values of its
layers and heads to the decoder ranks that hold the same layers and heads
(:func:`kv_routes`); the decoder chain takes them on an ``ADMIT`` command.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .parallel import TensorParallel, head_shards, shard_range
from .sampling import sample_rows
from .stage import StageRunner
from .topology import DECODER, ENCODER, ChainSpec, Topology
from .wire import Command, Link, Op, Tag

DRIVER = 0


@dataclass(frozen=True)
class KVRoute:
    """Encoder rank ``src`` sends decoder rank ``dst`` the caches of decoder ``layers``
    and KV ``heads`` (global indices)."""

    src: int
    dst: int
    layers: range
    heads: range


def _layers(chain: ChainSpec, stage: int, num_layers: int) -> range:
    return range(*shard_range(num_layers, chain.stages, stage))


def _heads(chain: ChainSpec, tp_rank: int, num_heads: int, kv_heads: int) -> range:
    return head_shards(num_heads, kv_heads, TensorParallel(chain.tp, tp_rank, communicate=False))[1]


def kv_routes(topo: Topology, num_layers: int, num_heads: int, kv_heads: int) -> list[KVRoute]:
    """Who sends which caches to whom after an encoding (each (layer, head) a decoder
    rank holds comes from the lowest encoder rank holding it)."""
    enc, dec = topo.chain(ENCODER), topo.chain(DECODER)
    routes: list[KVRoute] = []
    for ds in range(dec.stages):
        d_layers = _layers(dec, ds, num_layers)
        for dt in range(dec.tp):
            d_heads = _heads(dec, dt, num_heads, kv_heads)
            for es in range(enc.stages):
                e_layers = _layers(enc, es, num_layers)
                layers = range(
                    max(d_layers.start, e_layers.start), min(d_layers.stop, e_layers.stop)
                )
                if not layers:
                    continue
                taken = set[int]()
                for et in range(enc.tp):
                    e_heads = _heads(enc, et, num_heads, kv_heads)
                    mine = [h for h in d_heads if h in e_heads and h not in taken]
                    if not mine:
                        continue
                    taken.update(mine)
                    routes.append(
                        KVRoute(
                            enc.rank(es, et), dec.rank(ds, dt), layers, range(mine[0], mine[-1] + 1)
                        )
                    )
    return routes


class Groups:
    """The process group of every stage (created by every rank, in one order), and on
    NCCL a gloo group of the whole world for commands and tokens."""

    def __init__(self, topo: Topology) -> None:
        self._groups: dict[tuple[str, int], dist.ProcessGroup | None] = {}
        self.control: dist.ProcessGroup | None = None
        if dist.is_initialized() and dist.get_backend() == "nccl":
            self.control = dist.new_group(list(range(topo.world)), backend="gloo")
        for chain in topo.chains:
            for s in range(chain.stages):
                ranks = chain.stage_ranks(s)
                group = dist.new_group(ranks) if dist.is_initialized() and len(ranks) > 1 else None
                self._groups[(chain.name, s)] = group

    def stage(self, chain: ChainSpec, stage: int) -> dist.ProcessGroup | None:
        return self._groups[(chain.name, stage)]


@dataclass
class Member:
    """This rank's place: its chain, stage, TP rank, stage runner and stage group.

    With partial tensor parallelism (``scope`` ``"encode"`` or ``"decode"``: the phase
    that uses TP) a rank also holds the whole stage (``full``, TP 1) for the other
    phase, which runs data parallel: each sequence on the TP rank that owns it
    (``Command.owners``). After an encoding the caches move from the encoding layout
    to the decoding one within the stage.
    """

    topo: Topology
    chain: ChainSpec
    stage: int
    tp_rank: int
    runner: StageRunner
    group: dist.ProcessGroup | None
    routes: list[KVRoute]
    control: dist.ProcessGroup | None = None
    full: StageRunner | None = None
    scope: str = "all"
    # KV caches on their way to the decoders (one encoding's worth at a time)
    shipping: Link | None = field(default=None, repr=False)

    @property
    def rank(self) -> int:
        return self.chain.rank(self.stage, self.tp_rank)

    @property
    def leader(self) -> bool:
        return self.tp_rank == 0

    @property
    def last_stage(self) -> bool:
        return self.stage == self.chain.stages - 1

    def layer_offset(self) -> int:
        return self.runner.model.stage.decoder.start

    def head_offset(self) -> int:
        return self.runner.model.kv_heads.start

    def data_parallel(self, op: Op) -> bool:
        """Whether ``op`` runs data parallel on this stage (partial TP)."""
        if self.full is None:
            return False
        return (op == Op.PREFILL and self.scope == "decode") or (
            op == Op.DECODE and self.scope == "encode"
        )

    def runner_for(self, op: Op) -> StageRunner:
        if self.full is not None and self.data_parallel(op):
            return self.full
        return self.runner

    def mine(self, cmd: Command) -> list[int]:
        """The rows of ``cmd`` this rank runs in a data-parallel phase."""
        return [i for i in range(cmd.batch) if cmd.owner(i) == self.tp_rank]


# -- what every rank does with a command -----------------------------------------------------
def _needs_input(cmd: Command) -> bool:
    return cmd.op in (Op.PREFILL, Op.DECODE)


def _input_shape(m: Member, cmd: Command) -> tuple[tuple[int, ...], torch.dtype]:
    if m.stage == 0:
        return (sum(cmd.new),), torch.long
    return m.runner.hidden_shape(cmd.op == Op.PREFILL, cmd.new), m.runner.model.dtype


def _split_tokens(flat: torch.Tensor, new: Sequence[int]) -> list[list[int]]:
    values = flat.tolist()
    out, at = [], 0
    for n in new:
        out.append([int(v) for v in values[at : at + n]])
        at += n
    return out


def _execute(m: Member, cmd: Command, x: torch.Tensor | None) -> torch.Tensor | None:
    """Run this rank's part of ``cmd`` (``cmd`` already narrowed to this rank's rows in
    a data-parallel phase); ``x`` is every row's token ids on the first stage."""
    m.runner.release(cmd.release)
    if m.full is not None:
        m.full.release(cmd.release)
    if not _needs_input(cmd) or not cmd.batch:
        return None
    assert x is not None
    runner = m.runner_for(cmd.op)
    if cmd.op == Op.PREFILL:
        inp = _split_tokens(x, cmd.new) if m.stage == 0 else x
        return runner.prefill(cmd.seq_ids, inp, cmd.new)
    return runner.decode(cmd.seq_ids, x.tolist() if m.stage == 0 else x)


def _narrow(m: Member, cmd: Command, x: torch.Tensor | None) -> tuple[Command, torch.Tensor | None]:
    """A data-parallel phase: this rank's rows of ``cmd``, and their token ids on the
    first stage (later stages receive only their rows' hidden states)."""
    rows = m.mine(cmd)
    sub = cmd.subset(rows)
    if m.stage == 0 and x is not None:
        tokens = _split_tokens(x, cmd.new)
        flat = [t for i in rows for t in tokens[i]]
        x = torch.tensor(flat, dtype=torch.long, device=x.device)
    return sub, x


def _redistribute(m: Member, link: Link, cmd: Command) -> None:
    """Partial TP, after an encoding: move the new caches within the stage from the
    encoding layout to the decoding one. ``decode`` scope: each rank encoded its own
    rows with every head and sends each TP rank that rank's heads. ``encode`` scope:
    each rank encoded every row with its heads and sends each owner its rows."""
    assert m.full is not None and m.group is not None
    tp = m.chain.tp
    c = m.runner.config
    layers = range(len(m.runner.model.layers))
    heads_of = [_heads(m.chain, u, c.num_heads, c.kv_heads) for u in range(tp)]
    rows_of = [[i for i in range(cmd.batch) if cmd.owner(i) == u] for u in range(tp)]
    me = m.tp_rank
    works: list[tuple[dist.Work | None, torch.Tensor]] = []
    received: list[tuple[int, torch.Tensor]] = []
    if m.scope == "decode":
        mine = [cmd.seq_ids[i] for i in rows_of[me]]
        for u in range(tp):
            if u == me or not mine:
                continue
            kv, _ = m.full.export_kv(mine, layers, heads_of[u])
            kv = kv.contiguous()
            works.append((dist.isend(kv, m.chain.rank(m.stage, u), tag=int(Tag.KV)), kv))
        for u in range(tp):
            if u == me or not rows_of[u]:
                continue
            lengths = [cmd.new[i] for i in rows_of[u]]
            shape = (len(layers), 2, len(rows_of[u]), len(heads_of[me]), max(lengths), c.head_dim)
            kv = torch.empty(shape, dtype=m.runner.model.dtype, device=link.device)
            dist.recv(kv, m.chain.rank(m.stage, u), tag=int(Tag.KV))
            received.append((u, kv))
        for seq in cmd.seq_ids:  # every TP rank adds them in one order: same slots
            if seq not in m.runner.cache:
                m.runner.cache.add(seq)
        if mine:
            kv, lengths = m.full.export_kv(mine, layers, heads_of[me])
            local = range(0, len(heads_of[me]))
            m.runner.import_kv(mine, lengths, kv, layers, local)
        for u, kv in received:
            seqs = [cmd.seq_ids[i] for i in rows_of[u]]
            lengths = [cmd.new[i] for i in rows_of[u]]
            m.runner.import_kv(seqs, lengths, kv, layers, range(0, len(heads_of[me])))
        m.full.release(mine)
    else:  # "encode": every rank holds its heads of every row
        local_heads = range(0, len(heads_of[me]))
        for u in range(tp):
            seqs = [cmd.seq_ids[i] for i in rows_of[u]]
            if u == me or not seqs:
                continue
            kv, _ = m.runner.export_kv(seqs, layers, local_heads)
            kv = kv.contiguous()
            works.append((dist.isend(kv, m.chain.rank(m.stage, u), tag=int(Tag.KV)), kv))
        mine = [cmd.seq_ids[i] for i in rows_of[me]]
        lengths = [cmd.new[i] for i in rows_of[me]]
        if mine:
            kv, _ = m.runner.export_kv(mine, layers, local_heads)
            m.full.import_kv(mine, lengths, kv, layers, heads_of[me])
            for u in range(tp):
                if u == me:
                    continue
                shape = (len(layers), 2, len(mine), len(heads_of[u]), max(lengths), c.head_dim)
                kv = torch.empty(shape, dtype=m.runner.model.dtype, device=link.device)
                dist.recv(kv, m.chain.rank(m.stage, u), tag=int(Tag.KV))
                m.full.import_kv(mine, lengths, kv, layers, heads_of[u])
        m.runner.release(cmd.seq_ids)
    for work, _ in works:
        if work is not None:
            work.wait()


def _ship_kv(m: Member, cmd: Command) -> None:
    """Encoder ranks: send this prefill's caches to the decoders, then drop them. The
    previous encoding's caches must have arrived first: at most one batch travels."""
    if m.shipping is None:
        m.shipping = Link(m.runner.model.device)
    link = m.shipping
    link.flush()
    for r in m.routes:
        if r.src != m.rank:
            continue
        layers = range(r.layers.start - m.layer_offset(), r.layers.stop - m.layer_offset())
        heads = range(r.heads.start - m.head_offset(), r.heads.stop - m.head_offset())
        kv, _ = m.runner.export_kv(cmd.seq_ids, layers, heads)
        link._isend(kv.contiguous(), r.dst, Tag.KV)
    m.runner.release(cmd.seq_ids)


def _drain_shipping(m: Member) -> None:
    """Wait until the last shipped caches have been taken. A send that is dropped
    (its rank's member freed at stop) before the decoder posts its receive is lost,
    and that decoder waits for it forever."""
    if m.shipping is not None:
        m.shipping.flush()


def _admit_kv(m: Member, link: Link, cmd: Command) -> None:
    """Decoder ranks: receive the caches of newly encoded sequences."""
    m.runner.release(cmd.release)
    if not cmd.seq_ids:
        return
    lengths = list(cmd.new)
    for r in m.routes:
        if r.dst != m.rank:
            continue
        shape = (len(r.layers), 2, cmd.batch, len(r.heads), max(lengths), m.runner.config.head_dim)
        kv = torch.empty(shape, dtype=m.runner.model.dtype, device=link.device)
        dist.recv(kv, r.src, tag=int(Tag.KV))
        layers = range(r.layers.start - m.layer_offset(), r.layers.stop - m.layer_offset())
        heads = range(r.heads.start - m.head_offset(), r.heads.stop - m.head_offset())
        m.runner.import_kv(cmd.seq_ids, lengths, kv, layers, heads)


def _share(
    m: Member, link: Link, cmd: Command | None, x: torch.Tensor | None
) -> tuple[Command, torch.Tensor | None]:
    """The stage leader's command, on every TP rank of the stage, with the step's
    input: broadcast from the leader, or (a data-parallel phase after the first stage)
    each rank's own rows from the same TP rank of the previous stage."""
    if m.group is None:
        assert cmd is not None
        return cmd, x
    src = m.chain.leader(m.stage)
    cmd = link.broadcast_command(cmd, src, m.group)
    if not _needs_input(cmd):
        return cmd, x
    if m.stage > 0 and m.data_parallel(cmd.op):
        sub = cmd.subset(m.mine(cmd))
        if not sub.batch:
            return cmd, None
        shape, dtype = _input_shape(m, sub)
        return cmd, link.recv_input(shape, dtype, m.chain.rank(m.stage - 1, m.tp_rank))
    shape, dtype = _input_shape(m, cmd)
    if x is None:
        x = torch.empty(shape, dtype=dtype, device=link.device)
    dist.broadcast(x, src, group=m.group)
    return cmd, x


def _gather_tokens(m: Member, link: Link, cmd: Command, mine: list[int] | None) -> list[int] | None:
    """A data-parallel last stage: the leader collects every rank's tokens in row
    order; the others send theirs."""
    if not m.leader:
        if mine:
            link.send_tokens(mine, m.chain.leader(m.stage))
        return None
    out = [0] * cmd.batch
    for u in range(m.chain.tp):
        rows = [i for i in range(cmd.batch) if cmd.owner(i) == u]
        if not rows:
            continue
        got = mine if u == 0 else link.recv_tokens(len(rows), m.chain.rank(m.stage, u))
        assert got is not None
        for i, t in zip(rows, got, strict=True):
            out[i] = t
    return out


def _forward(
    m: Member, link: Link, cmd: Command, out: torch.Tensor | None, sub: Command | None = None
) -> list[int] | None:
    """Pass the command on (the leader) with the step's output, or (last stage) sample
    the tokens. ``sub``: this rank's rows in a data-parallel phase."""
    if sub is not None:
        if not m.last_stage:
            if m.leader:
                link.send_command(cmd, m.chain.leader(m.stage + 1))
            if out is not None:
                link.send_input(out, m.chain.rank(m.stage + 1, m.tp_rank))
            return None
        mine = sample_rows(out, sub.rows) if out is not None else None
        return _gather_tokens(m, link, cmd, mine)
    if not m.leader:
        return None
    if not m.last_stage:
        link.send_command(cmd, m.chain.leader(m.stage + 1))
        if out is not None:
            link.send_input(out, m.chain.leader(m.stage + 1))
        return None
    if _needs_input(cmd) and out is not None:
        return sample_rows(out, cmd.rows)
    return None


def step(m: Member, link: Link, cmd: Command, x: torch.Tensor | None) -> list[int] | None:
    """Run one command on this rank (after :func:`_share`); the tokens, on the last
    stage's leader."""
    if cmd.op == Op.ADMIT:
        _admit_kv(m, link, cmd)
        return _forward(m, link, cmd, None)
    if _needs_input(cmd) and m.data_parallel(cmd.op):
        sub, x = _narrow(m, cmd, x)
        out = _execute(m, sub, x)
        if cmd.op == Op.PREFILL:
            _redistribute(m, link, cmd)
        return _forward(m, link, cmd, out, sub)
    out = _execute(m, cmd, x)
    if cmd.op == Op.PREFILL and m.full is not None:
        _redistribute(m, link, cmd)
    if m.chain.name == ENCODER and cmd.op == Op.PREFILL:
        _ship_kv(m, cmd)
    return _forward(m, link, cmd, out)


def serve_stage(m: Member, device: torch.device) -> None:
    """The loop of every rank but the driver: take commands until ``STOP``."""
    link = Link(device, m.control)
    upstream = DRIVER if m.stage == 0 else m.chain.leader(m.stage - 1)
    while True:
        cmd: Command | None = None
        x: torch.Tensor | None = None
        if m.leader:
            cmd = link.recv_command(upstream)
            own_rows = m.stage > 0 and m.data_parallel(cmd.op)
            if _needs_input(cmd) and not own_rows:  # own rows: received in _share
                shape, dtype = _input_shape(m, cmd)
                x = link.recv_input(shape, dtype, upstream)
        cmd, x = _share(m, link, cmd, x)
        if cmd.op == Op.STOP:
            _forward(m, link, cmd, None)
            link.flush()
            _drain_shipping(m)
            return
        tokens = step(m, link, cmd, x)
        if tokens is not None:
            link.send_tokens(tokens, DRIVER)
        link.flush()


# -- the driver's side ---------------------------------------------------------------------------
class ChainClient:
    """The driver's handle on one chain: runs commands through it and returns the
    sampled tokens. ``local`` is the driver's own membership when it leads the chain's
    first stage (otherwise the first stage is remote)."""

    def __init__(
        self,
        chain: ChainSpec,
        device: torch.device,
        local: Member | None = None,
        control: dist.ProcessGroup | None = None,
    ) -> None:
        self.chain = chain
        self.local = local
        self.link = Link(device, control)
        self.device = device

    def run(
        self, items: Sequence[tuple[Command, Sequence[Sequence[int]] | Sequence[int] | None]]
    ) -> list[list[int]]:
        """Run the commands in order (micro-batches of one step), each with the token
        ids it feeds the first stage; returns each PREFILL/DECODE command's tokens."""
        results: list[list[int] | None] = []
        remote = self.local is None or self.chain.stages > 1
        for cmd, tokens in items:
            x = self._tokens(cmd, tokens)
            if self.local is None:
                self.link.send_command(cmd, self.chain.leader(0))
                if x is not None:
                    self.link.send_input(x, self.chain.leader(0))
                results.append(None)
                continue
            cmd, x = _share(self.local, self.link, cmd, x)
            results.append(step(self.local, self.link, cmd, x))
        out: list[list[int]] = []
        last = self.chain.leader(self.chain.stages - 1)
        for (cmd, _), got in zip(items, results, strict=True):
            if cmd.op not in (Op.PREFILL, Op.DECODE):
                continue
            if got is None:
                assert remote
                got = self.link.recv_tokens(cmd.batch, last)
            out.append(got)
        self.link.flush()
        return out

    def _tokens(
        self, cmd: Command, tokens: Sequence[Sequence[int]] | Sequence[int] | None
    ) -> torch.Tensor | None:
        if cmd.op not in (Op.PREFILL, Op.DECODE):
            return None
        assert tokens is not None
        flat: list[int] = []
        for t in tokens:
            flat.extend(t if isinstance(t, Sequence) else [t])
        return torch.tensor(flat, dtype=torch.long, device=self.device)

    def stop(self) -> None:
        if self.local is None or self.local.group is not None or self.chain.stages > 1:
            self.run([(Command(Op.STOP), None)])
        if self.local is not None:
            _drain_shipping(self.local)
