"""One model replica of a plan, built on each of its processes: the model shard of every
rank, and on the driver (rank 0) the engine that takes the requests.

Every rank calls :func:`run_rank` with the same :class:`ReplicaSpec` after
``torch.distributed`` is initialised (or without it for a one-process replica): the
driver gets its :class:`Engine` back, every other rank serves its chain until the
driver stops it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from exegpt.planner.kvcapacity import KvCapacity, steady_sequences
from exegpt.planner.plan import ExecutionConfig

from .batching import max_encode_batch
from .chain import DRIVER, ChainClient, Groups, KVRoute, Member, kv_routes, serve_stage
from .config import ModelConfig
from .engine import Engine
from .heap import freeze_heap
from .metrics import ServingMetrics
from .model import DTYPES, Transformer
from .parallel import StageSpec, TensorParallel
from .serving import Limits
from .stage import StageRunner
from .topology import DECODER, ENCODER, MAIN, ChainSpec, Topology, topology
from .weights import load_directory, random_weights


@dataclass(frozen=True)
class ReplicaSpec:
    """What every process of a replica needs to know.

    ``capacity`` is the plan's KV capacity (the worker plan document's): the decoding
    caches hold ``capacity.sequences`` slots of ``capacity.block_size`` tokens, the
    longest input plus the longest output. Without it (a plan made here) the same rule
    sizes them from ``steady_decode_batch``.
    """

    model: ModelConfig
    config: ExecutionConfig
    max_input_tokens: int
    max_output_tokens: int
    steady_decode_batch: float = 0.0
    dtype: str = "float32"
    weights: str | None = None  # a Hugging Face directory; None: random weights
    seed: int = 0
    max_slots: int | None = None  # a cap on every cache's sequences (local runs)
    capacity: KvCapacity | None = None

    def __post_init__(self) -> None:
        kv = self.capacity
        if kv is None:
            return
        if kv.engine != "ExeGPT":
            raise ValueError(f"the plan's KV capacity is for {kv.engine}, not this engine")
        if kv.block_size != self.max_total_tokens:
            raise ValueError(
                f"the plan's KV slots hold {kv.block_size} tokens, but its limits allow "
                f"{self.max_total_tokens} (max input + max output): plan again"
            )

    @property
    def max_total_tokens(self) -> int:
        return self.max_input_tokens + self.max_output_tokens

    def topology(self) -> Topology:
        return topology(
            self.config,
            num_layers=self.model.num_layers,
            architecture=self.model.architecture,
        )

    def limits(self) -> Limits:
        return Limits(self.max_input_tokens, self.max_total_tokens, self.model.vocab_size)

    def slots(self, chain: str) -> int:
        """KV slots of ``chain``'s caches (at most ``max_slots``)."""
        if chain == ENCODER:
            n = self.config.encode_batch
        elif chain == DECODER:
            n = self.config.decode_batch
        elif self.capacity is not None:
            n = self.capacity.sequences
        else:
            n = steady_sequences(self.config, self.steady_decode_batch)
        return min(n, self.max_slots) if self.max_slots else n


def device_for(rank_on_node: int) -> torch.device:
    """The process's GPU (one per process), or the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", rank_on_node % torch.cuda.device_count())
    return torch.device("cpu")


def build_member(
    spec: ReplicaSpec, topo: Topology, groups: Groups, rank: int, device: torch.device
) -> Member:
    chain: ChainSpec = topo.chain_of(rank)
    stage, tp_rank = chain.place(rank)
    group = groups.stage(chain, stage)
    tp = TensorParallel(chain.tp, tp_rank, group) if chain.tp > 1 else TensorParallel()
    layers = StageSpec.split(
        spec.model.num_layers, chain.stages, stage, max(spec.model.num_encoder_layers, 0)
    )

    def load(tp: TensorParallel) -> Transformer:
        model = Transformer(
            spec.model, tp=tp, stage=layers, dtype=DTYPES[spec.dtype], device=device
        ).eval()
        if spec.weights:
            return load_directory(model, spec.weights)
        return random_weights(model, spec.seed)

    slots = spec.slots(chain.name)
    encode_slots = min(max_encode_batch(spec.config), slots)
    scope = spec.config.tp_scope if chain.name == MAIN and chain.tp > 1 else "all"
    pad = spec.config.strategy == "Static"  # the static baseline pads, as FasterTransformer
    full: StageRunner | None = None
    if scope == "decode":  # encode data parallel: whole-stage copies, caches for one encoding
        tp_slots = slots
        full = StageRunner(
            load(TensorParallel()), slots=encode_slots, max_len=spec.max_total_tokens,
            pad_prefill=pad,
        )  # fmt: skip
    elif scope == "encode":  # decode data parallel: each rank decodes the rows it owns
        tp_slots = encode_slots
        owned = -(-slots // chain.tp)
        full = StageRunner(
            load(TensorParallel()), slots=owned, max_len=spec.max_total_tokens,
            pad_prefill=pad,
        )  # fmt: skip
    else:
        tp_slots = slots
    runner = StageRunner(load(tp), slots=tp_slots, max_len=spec.max_total_tokens, pad_prefill=pad)
    routes: list[KVRoute] = []
    if len(topo.chains) == 2:
        c = spec.model
        routes = kv_routes(topo, c.num_layers, c.num_heads, c.kv_heads)
    return Member(topo, chain, stage, tp_rank, runner, group, routes, groups.control, full, scope)


def run_rank(
    spec: ReplicaSpec,
    rank: int,
    device: torch.device,
    *,
    metrics: ServingMetrics | None = None,
    keep_finished: bool = False,
    start: bool = True,
    freeze: bool = False,
) -> Engine | None:
    """Build this rank's part; the driver returns its engine (started unless ``start``
    is false: requests submitted before :meth:`Engine.start` wait for it), the other
    ranks serve until stopped and return None. ``freeze``: once the part is built,
    freeze the process's heap for the rest of its life (:func:`~.heap.freeze_heap`;
    a serving process)."""
    topo = spec.topology()
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world != topo.world:
        raise ValueError(f"the plan's replica needs {topo.world} processes, the world has {world}")
    groups = Groups(topo)
    member = build_member(spec, topo, groups, rank, device)
    if freeze:
        freeze_heap()
    if rank != DRIVER:
        serve_stage(member, device)
        return None
    chains: dict[str, ChainClient] = {}
    first = topo.chains[0]
    chains[first.name] = ChainClient(first, device, member, groups.control)
    if len(topo.chains) == 2:
        chains[DECODER] = ChainClient(topo.chain(DECODER), device, None, groups.control)
    engine = Engine(
        spec.config,
        chains,
        limits=spec.limits(),
        slots=spec.slots(DECODER if len(topo.chains) == 2 else MAIN),
        metrics=metrics,
        keep_finished=keep_finished,
    )
    if start:
        engine.start()
    return engine
