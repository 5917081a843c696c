"""Tensor and pipeline parallelism.

Tensor parallelism (Megatron style): the first linear layer of a block is split by its
output features (column parallel: no communication), the second by its input features
(row parallel: each rank holds a partial sum, added up with one all-reduce). Attention
splits by heads, the MLP by its hidden width, the LM head by vocabulary (its logits are
gathered). Communication goes through a ``torch.distributed`` process group (NCCL on
GPUs, gloo on CPUs).

Pipeline parallelism: a stage holds a contiguous range of layers (for an
encoder-decoder model, a range of encoder layers and a range of decoder layers); the
first stage also holds the embeddings, the last the final norm and the LM head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` near-equal sizes, larger ones first."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def shard_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """``[start, stop)`` of part ``index`` of :func:`split_sizes`."""
    sizes = split_sizes(n, parts)
    start = sum(sizes[:index])
    return start, start + sizes[index]


class TensorParallel:
    """A tensor-parallel group as the model sees it: its size, this rank, and the
    collectives. ``communicate=False`` computes one shard without communicating (what
    the profiler times: collectives are measured separately)."""

    def __init__(
        self,
        size: int = 1,
        rank: int = 0,
        group: dist.ProcessGroup | None = None,
        *,
        communicate: bool = True,
    ) -> None:
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"bad tensor-parallel rank {rank} of {size}")
        if size > 1 and communicate and not dist.is_initialized():
            raise ValueError("tensor parallelism needs torch.distributed to be initialised")
        self.size = size
        self.rank = rank
        self.group = group
        self.communicate = communicate and size > 1

    @classmethod
    def from_group(cls, group: dist.ProcessGroup | None = None) -> TensorParallel:
        """This process's place in ``group`` (the default group when None)."""
        return cls(dist.get_world_size(group), dist.get_rank(group), group)

    def __repr__(self) -> str:
        return f"TensorParallel(size={self.size}, rank={self.rank})"

    def shard(self, n: int) -> tuple[int, int]:
        return shard_range(n, self.size, self.rank)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.communicate:
            dist.all_reduce(t, group=self.group)
        return t

    def all_gather(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's ``t`` along the last dimension; ``sizes`` are the
        last-dimension sizes of the ranks' shards."""
        if not self.communicate:
            return t
        t = t.contiguous()
        parts = [t.new_empty((*t.shape[:-1], s)) for s in sizes]
        if len(set(sizes)) == 1:
            dist.all_gather(parts, t, group=self.group)
        else:  # uneven shards: pad to the largest, then trim
            width = max(sizes)
            padded = t.new_zeros((*t.shape[:-1], width))
            padded[..., : t.shape[-1]] = t
            gathered = [t.new_empty((*t.shape[:-1], width)) for _ in sizes]
            dist.all_gather(gathered, padded, group=self.group)
            parts = [g[..., :s] for g, s in zip(gathered, sizes, strict=True)]
        return torch.cat(parts, dim=-1)


SINGLE = TensorParallel()


def head_shards(num_heads: int, kv_heads: int, tp: TensorParallel) -> tuple[range, range]:
    """The query heads and key/value heads one rank holds.

    Query heads split evenly (``num_heads`` must divide by the TP degree). KV heads
    split evenly when they divide by it; when fewer KV heads than ranks, each rank holds
    the one KV head its query heads use (replicated across ranks)."""
    if num_heads % tp.size:
        raise ValueError(f"TP degree {tp.size} does not divide the {num_heads} attention heads")
    per = num_heads // tp.size
    q = range(tp.rank * per, (tp.rank + 1) * per)
    if kv_heads % tp.size == 0:
        kv_per = kv_heads // tp.size
        return q, range(tp.rank * kv_per, (tp.rank + 1) * kv_per)
    if tp.size % kv_heads == 0:
        index = tp.rank // (tp.size // kv_heads)
        return q, range(index, index + 1)
    raise ValueError(f"TP degree {tp.size} and {kv_heads} KV heads: neither divides the other")


class ColumnParallelLinear(nn.Module):
    """``y = x W^T + b`` with ``W``'s output rows sharded: each rank computes its own
    slice of the output features; no communication."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device),
            requires_grad=False,
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), False)
            if bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class RowParallelLinear(ColumnParallelLinear):
    """``y = x W^T + b`` with ``W``'s input columns sharded: each rank multiplies its
    slice of the input features, an all-reduce sums the partial outputs, then the bias
    is added once."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tp: TensorParallel,
        *,
        bias: bool,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, dtype=dtype, device=device)
        self.tp = tp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tp.all_reduce(nn.functional.linear(x, self.weight))
        return y if self.bias is None else y + self.bias


@dataclass(frozen=True)
class StageSpec:
    """The layers one pipeline stage holds, and whether it holds the embeddings (the
    first stage) and the final norm and LM head (the last)."""

    decoder: range
    encoder: range = range(0)
    first: bool = True
    last: bool = True

    @classmethod
    def whole(cls, num_layers: int, num_encoder_layers: int = 0) -> StageSpec:
        return cls(decoder=range(num_layers), encoder=range(num_encoder_layers))

    @classmethod
    def split(
        cls, num_layers: int, stages: int, index: int, num_encoder_layers: int = 0
    ) -> StageSpec:
        """Stage ``index`` of ``stages``: layers split as evenly as possible, earlier
        stages taking the extra ones (the planner's cost model counts the largest)."""
        if not 0 <= index < stages:
            raise ValueError(f"stage {index} of {stages}")
        if stages > num_layers:
            raise ValueError(f"{stages} stages for {num_layers} layers")
        dec = range(*shard_range(num_layers, stages, index))
        enc = (
            range(*shard_range(num_encoder_layers, stages, index))
            if num_encoder_layers
            else range(0)
        )
        return cls(decoder=dec, encoder=enc, first=index == 0, last=index == stages - 1)

    @classmethod
    def layers_only(cls, num_layers: int, num_encoder_layers: int = 0) -> StageSpec:
        """Layers without embeddings or head (what the profiler times)."""
        return cls(
            decoder=range(num_layers), encoder=range(num_encoder_layers), first=False, last=False
        )
