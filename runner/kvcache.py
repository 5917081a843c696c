"""Per-sequence key/value caches, and the metadata of one step over a batch of them.

A sequence joins with :meth:`KVCache.add` and leaves with :meth:`KVCache.remove`; a
step runs over any subset of the cached sequences, each with its own number of cached
tokens and of new tokens. The model only uses the :class:`KVCache` protocol:
:meth:`write` stores a step's new keys and values, :meth:`read` returns the keys and
values of the step's sequences padded to the longest, and :meth:`advance` commits the
new tokens once every layer has written them. :class:`SlotKVCache` implements it with
one preallocated slab per layer (a slot per sequence); a paged cache can implement the
same protocol.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple, Protocol

import torch


class CacheFull(RuntimeError):
    """No free slot, or a sequence longer than the cache's capacity."""


@dataclass
class StepMeta:
    """Where a step's tokens go and what each attends to.

    ``past[b]`` tokens of sequence ``b`` are cached, ``new[b]`` arrive in this step
    (right-padded to ``max_new``); after the step it has ``past[b] + new[b]``. ``mask``
    is ``[B, 1, max_new, max_total]`` (True: may attend), or None when no masking is
    needed (every sequence has the same lengths and, if causal, the step is a plain
    causal prefill). ``fresh``: nothing is cached yet, attention reads this step's keys
    and values directly.
    """

    seq_ids: list[Hashable]
    slots: torch.Tensor  # [B] long
    slot_slice: slice | None  # the slots are contiguous and ascending
    past: list[int]
    new: list[int]
    max_new: int
    max_total: int
    positions: torch.Tensor  # [B, max_new] long: past + t (padding: the last valid position)
    mask: torch.Tensor | None
    causal: bool
    fresh: bool
    # packed layout: the step's tokens are one row ``[1, N]`` (N the sum of ``new``),
    # sequence ``b``'s at ``offsets[b]:offsets[b] + new[b]``; attention runs per sequence
    # over its own context, so a step costs what its tokens and contexts cost
    packed: bool
    offsets: list[int]
    slot_list: list[int]
    # the valid (not padding) tokens of the step, flattened
    token_batch: torch.Tensor  # [N] index into the batch
    token_step: torch.Tensor  # [N] index into the step's tokens
    token_slot: torch.Tensor  # [N] cache slot
    token_pos: torch.Tensor  # [N] cache position
    uniform: bool  # every sequence has max_new new tokens (no padding)
    last: torch.Tensor  # [B] index of each sequence's last new token (packed: in the row)

    @property
    def batch(self) -> int:
        return len(self.seq_ids)


class KVCache(Protocol):
    """A cache of keys and values for sequences of different lengths."""

    num_layers: int

    def add(self, seq_id: Hashable) -> None: ...

    def remove(self, seq_id: Hashable) -> None: ...

    def __contains__(self, seq_id: object) -> bool: ...

    def length(self, seq_id: Hashable) -> int: ...

    def slots(self, seq_ids: Sequence[Hashable]) -> list[int]: ...

    def write(self, layer: int, meta: StepMeta, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's keys and values (``[B, kv_heads, max_new, head_dim]``)."""
        ...

    def read(self, layer: int, meta: StepMeta) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, kv_heads, max_total, head_dim]`` of the step's
        sequences, including this step's (padding beyond each one's length)."""
        ...

    def read_slot(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot's first ``length`` keys and values, ``[1, kv_heads, length, head_dim]``."""
        ...

    def advance(self, meta: StepMeta) -> None:
        """Commit the step: each sequence's length grows by its new tokens."""
        ...


class SlotKVCache:
    """One ``[max_seqs, kv_heads, max_len, head_dim]`` slab of keys and one of values
    per layer; a sequence owns one slot (a row of every slab) while it is cached.

    Reading a batch whose slots are contiguous and ascending is a view; otherwise the
    batch's rows are gathered (a copy of their keys and values at every layer). A new
    sequence takes the lowest free slot, and a sequence leaving hands its slot to the
    one in the highest slot (``compact``), so the cached sequences always hold the
    lowest slots: a step over all of them, in slot order, reads without copying.
    """

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        max_seqs: int,
        max_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        compact: bool = True,
    ) -> None:
        if min(num_layers, kv_heads, head_dim, max_seqs, max_len) < 1:
            raise ValueError("cache dimensions must be positive")
        self.num_layers = num_layers
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.max_seqs, self.max_len = max_seqs, max_len
        self.dtype, self.device = dtype, torch.device(device)
        shape = (max_seqs, kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.compact = compact
        self._slot: dict[Hashable, int] = {}
        self._seq: dict[int, Hashable] = {}  # slot -> sequence
        self._len = [0] * max_seqs
        self._free = list(range(max_seqs - 1, -1, -1))  # pop() takes the lowest

    @staticmethod
    def bytes_needed(
        num_layers: int, kv_heads: int, head_dim: int, max_seqs: int, max_len: int, elem: int
    ) -> int:
        return 2 * num_layers * max_seqs * kv_heads * max_len * head_dim * elem

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._slot

    def add(self, seq_id: Hashable) -> None:
        if seq_id in self._slot:
            raise ValueError(f"sequence {seq_id!r} is already cached")
        if not self._free:
            raise CacheFull(f"all {self.max_seqs} cache slots are in use")
        self._free.sort(reverse=True)
        slot = self._free.pop()
        self._slot[seq_id] = slot
        self._seq[slot] = seq_id
        self._len[slot] = 0

    def remove(self, seq_id: Hashable) -> None:
        slot = self._slot.pop(seq_id)
        del self._seq[slot]
        self._len[slot] = 0
        last = max(self._seq, default=-1)
        if self.compact and last > slot:  # the highest sequence moves down into the hole
            moved = self._seq.pop(last)
            n = self._len[last]
            for k, v in zip(self.k, self.v, strict=True):
                k[slot, :, :n] = k[last, :, :n]
                v[slot, :, :n] = v[last, :, :n]
            self._slot[moved], self._seq[slot] = slot, moved
            self._len[slot], self._len[last] = n, 0
            slot = last
        self._free.append(slot)

    def length(self, seq_id: Hashable) -> int:
        return self._len[self._slot[seq_id]]

    def set_length(self, seq_id: Hashable, length: int) -> None:
        """Truncate (or extend over whatever the slot holds) a sequence's cached tokens."""
        if not 0 <= length <= self.max_len:
            raise CacheFull(f"length {length} outside the cache's 0..{self.max_len}")
        self._len[self._slot[seq_id]] = length

    def slots(self, seq_ids: Sequence[Hashable]) -> list[int]:
        try:
            return [self._slot[s] for s in seq_ids]
        except KeyError as exc:
            raise KeyError(f"sequence {exc.args[0]!r} is not cached") from None

    def write(self, layer: int, meta: StepMeta, k: torch.Tensor, v: torch.Tensor) -> None:
        kc, vc = self.k[layer], self.v[layer]
        if meta.packed:
            # [1, H, N, D] -> [N, H, D]
            kc[meta.token_slot, :, meta.token_pos] = k[0].transpose(0, 1)
            vc[meta.token_slot, :, meta.token_pos] = v[0].transpose(0, 1)
            return
        if meta.uniform and meta.max_new == 1:
            # one token per sequence (decoding): [B, H, 1, D] -> [B, H, D]
            kc[meta.slots, :, meta.token_pos] = k[:, :, 0]
            vc[meta.slots, :, meta.token_pos] = v[:, :, 0]
            return
        if meta.slot_slice is not None and meta.fresh and meta.uniform:
            kc[meta.slot_slice, :, : meta.max_new] = k
            vc[meta.slot_slice, :, : meta.max_new] = v
            return
        b, t = meta.token_batch, meta.token_step
        kc[meta.token_slot, :, meta.token_pos] = k[b, :, t]
        vc[meta.token_slot, :, meta.token_pos] = v[b, :, t]

    def read(self, layer: int, meta: StepMeta) -> tuple[torch.Tensor, torch.Tensor]:
        n = meta.max_total
        if meta.slot_slice is not None:
            return self.k[layer][meta.slot_slice, :, :n], self.v[layer][meta.slot_slice, :, :n]
        return self.k[layer][meta.slots, :, :n], self.v[layer][meta.slots, :, :n]

    def read_slot(self, layer: int, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``length`` keys and values of one slot, ``[1, heads, length, D]``
        (views)."""
        return (
            self.k[layer][slot : slot + 1, :, :length],
            self.v[layer][slot : slot + 1, :, :length],
        )

    def advance(self, meta: StepMeta) -> None:
        for seq_id, n in zip(meta.seq_ids, meta.new, strict=True):
            self._len[self._slot[seq_id]] += n

    # -- step metadata -----------------------------------------------------------------
    def step(
        self, seq_ids: Sequence[Hashable], new: Sequence[int], *, causal: bool, packed: bool = False
    ) -> StepMeta:
        """The metadata of a step adding ``new[b]`` tokens to sequence ``seq_ids[b]``."""
        return make_step(
            list(seq_ids),
            self.slots(seq_ids),
            [self.length(s) for s in seq_ids],
            list(new),
            causal=causal,
            capacity=self.max_len,
            device=self.device,
            packed=packed,
        )


def make_step(
    seq_ids: Sequence[Hashable],
    slots: list[int],
    past: list[int],
    new: list[int],
    *,
    causal: bool,
    capacity: int | None = None,
    device: torch.device | str = "cpu",
    packed: bool = False,
) -> StepMeta:
    """Build a :class:`StepMeta` (also for caches other than :class:`SlotKVCache`);
    ``packed``: the tokens in one row (see :class:`StepMeta`)."""
    if not seq_ids:
        raise ValueError("a step needs at least one sequence")
    if min(new) < 0 or (causal and min(new) < 1):
        raise ValueError("every sequence of a step needs new tokens")
    totals = [p + n for p, n in zip(past, new, strict=True)]
    max_new, max_total = max(new), max(totals)
    if capacity is not None and max_total > capacity:
        raise CacheFull(f"a sequence would reach {max_total} tokens; the cache holds {capacity}")
    dev = torch.device(device)
    b = len(seq_ids)
    slots_t = torch.tensor(slots, dtype=torch.long, device=dev)
    contiguous = slots == list(range(slots[0], slots[0] + b))
    slot_slice = slice(slots[0], slots[0] + b) if contiguous else None
    uniform = min(new) == max_new
    same_past = min(past) == max(past)
    fresh = max(past) == 0
    past_t = torch.tensor(past, dtype=torch.long, device=dev)
    new_t = torch.tensor(new, dtype=torch.long, device=dev)
    if packed:
        layout = _packed_layout(past_t, new_t, new, dev)
    else:
        plain = uniform and same_past and (fresh or not causal or max_new == 1)
        layout = _padded_layout(past_t, new_t, max_new, max_total, causal, uniform, plain, dev)
    return StepMeta(
        seq_ids=list(seq_ids),
        slots=slots_t,
        slot_slice=slot_slice,
        past=past,
        new=new,
        max_new=max_new,
        max_total=max_total,
        positions=layout.positions,
        mask=layout.mask,
        causal=causal,
        fresh=fresh,
        packed=packed,
        offsets=layout.offsets,
        slot_list=slots,
        token_batch=layout.token_batch,
        token_step=layout.token_step,
        token_slot=slots_t[layout.token_batch],
        token_pos=layout.token_pos,
        uniform=uniform,
        last=layout.last,
    )


class _Layout(NamedTuple):
    """Where a step's tokens sit in its input: what differs between the padded and the
    packed layout."""

    positions: torch.Tensor
    mask: torch.Tensor | None
    offsets: list[int]
    token_batch: torch.Tensor
    token_step: torch.Tensor
    token_pos: torch.Tensor
    last: torch.Tensor


def _padded_layout(
    past_t: torch.Tensor,
    new_t: torch.Tensor,
    max_new: int,
    max_total: int,
    causal: bool,
    uniform: bool,
    plain: bool,
    dev: torch.device,
) -> _Layout:
    """Rows ``[B, max_new]``, right-padded; a mask unless the step is ``plain``."""
    b = new_t.shape[0]
    steps = torch.arange(max_new, device=dev)
    valid = steps[None, :] < new_t[:, None]  # [B, T]
    positions = past_t[:, None] + torch.minimum(steps[None, :], (new_t - 1).clamp(min=0)[:, None])
    if uniform:
        token_batch = torch.arange(b, device=dev).repeat_interleave(max_new)
        token_step = steps.repeat(b)
    else:
        token_batch, token_step = valid.nonzero(as_tuple=True)
    mask: torch.Tensor | None = None
    if not plain:
        keys = torch.arange(max_total, device=dev)
        total_t = past_t + new_t
        mask = keys[None, None, :] < total_t[:, None, None]  # [B, 1, L] -> broadcast
        mask = mask.expand(b, max_new, max_total)
        if causal:
            query_pos = past_t[:, None] + steps[None, :]  # padding rows see all valid keys
            mask = mask & (keys[None, None, :] <= query_pos[:, :, None]) | (
                ~valid[:, :, None] & (keys[None, None, :] < total_t[:, None, None])
            )
        mask = mask[:, None]
    token_pos = past_t[token_batch] + token_step
    last = (new_t - 1).clamp(min=0)
    return _Layout(positions, mask, [], token_batch, token_step, token_pos, last)


def _packed_layout(
    past_t: torch.Tensor, new_t: torch.Tensor, new: list[int], dev: torch.device
) -> _Layout:
    """One row ``[1, N]``: sequence ``b``'s tokens from ``offsets[b]``; no mask."""
    offsets = [0, *accumulate(new[:-1])]
    token_batch = torch.arange(len(new), device=dev).repeat_interleave(new_t)
    first = torch.tensor(offsets, dtype=torch.long, device=dev)
    token_step = torch.arange(sum(new), device=dev)
    token_pos = past_t[token_batch] + token_step - first[token_batch]
    return _Layout(
        token_pos[None, :], None, offsets, token_batch, token_step, token_pos, first + new_t - 1
    )
