"""Which process does what in one model replica of a plan.

A replica is one ``torch.distributed`` world. Its processes form *chains*: a chain is
a pipeline of stages, a stage is a tensor-parallel group of ranks holding one range of
layers. RoundRobin, Static and Continuous run one chain (``main``) that encodes and
decodes; WorkloadAware runs an ``encoder`` chain and a ``decoder`` chain, the encoder
ranks first. Rank 0 (stage 0, TP rank 0 of the first chain) is the replica's *driver*:
it takes the requests, decides every step and streams the tokens; every other rank
executes the commands its chain sends it.

Pure: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from exegpt.planner.architecture import Architecture
from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.runnable import worker_limitation

MAIN, ENCODER, DECODER = "main", "encoder", "decoder"


class UnsupportedPlan(ValueError):
    """A plan the workers cannot run (the message says what to change)."""


@dataclass(frozen=True)
class ChainSpec:
    """``stages`` stages of ``tp`` ranks each, from rank ``first_rank`` on: stage
    ``s``, TP rank ``t`` is rank ``first_rank + s * tp + t``."""

    name: str
    stages: int
    tp: int
    first_rank: int = 0

    @property
    def size(self) -> int:
        return self.stages * self.tp

    def rank(self, stage: int, tp_rank: int = 0) -> int:
        if not (0 <= stage < self.stages and 0 <= tp_rank < self.tp):
            raise ValueError(f"stage {stage}, TP rank {tp_rank} outside {self}")
        return self.first_rank + stage * self.tp + tp_rank

    def leader(self, stage: int) -> int:
        """The rank that talks to the neighbouring stages (TP rank 0)."""
        return self.rank(stage, 0)

    def stage_ranks(self, stage: int) -> list[int]:
        return [self.rank(stage, t) for t in range(self.tp)]

    def contains(self, rank: int) -> bool:
        return self.first_rank <= rank < self.first_rank + self.size

    def place(self, rank: int) -> tuple[int, int]:
        """``(stage, TP rank)`` of ``rank``."""
        if not self.contains(rank):
            raise ValueError(f"rank {rank} is not in chain {self.name}")
        return divmod(rank - self.first_rank, self.tp)


@dataclass(frozen=True)
class Topology:
    """The chains of one replica; ``chains[0]`` holds the driver (rank 0)."""

    chains: tuple[ChainSpec, ...]

    @property
    def world(self) -> int:
        return sum(c.size for c in self.chains)

    def chain(self, name: str) -> ChainSpec:
        for c in self.chains:
            if c.name == name:
                return c
        raise KeyError(name)

    def chain_of(self, rank: int) -> ChainSpec:
        for c in self.chains:
            if c.contains(rank):
                return c
        raise ValueError(f"rank {rank} outside a world of {self.world}")


def topology(
    config: ExecutionConfig, *, num_layers: int, architecture: Architecture | None = None
) -> Topology:
    """The processes of one replica of ``config``; raises :class:`UnsupportedPlan` for
    what the workers do not run (:func:`exegpt.planner.runnable.worker_limitation`)."""
    if architecture is not None:
        reason = worker_limitation(config, architecture)
        if reason:
            raise UnsupportedPlan(reason)
    if config.strategy == "WorkloadAware":
        enc = ChainSpec(ENCODER, config.encode_stages, config.encode_tp, 0)
        dec = ChainSpec(DECODER, config.pipeline_stages, config.tensor_parallel, enc.size)
        chains: tuple[ChainSpec, ...] = (enc, dec)
    else:
        chains = (ChainSpec(MAIN, config.pipeline_stages, config.tensor_parallel, 0),)
    for c in chains:
        if c.stages > num_layers:
            raise UnsupportedPlan(f"{c.stages} pipeline stages for a {num_layers}-layer model")
    return Topology(chains)
