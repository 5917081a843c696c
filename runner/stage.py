"""One rank's share of a chain: a model shard (its stage's layers, its TP shard), the KV
caches of the sequences it holds, and the steps it runs on them.

The first stage takes token ids, later stages the previous stage's hidden states; the
last stage returns logits, the others hidden states for the next stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import RunnerError
from .kvcache import SlotKVCache
from .model import Transformer
from .serving import RequestRejected


def check_kv_memory(need: int, free: int, slots: int, max_len: int) -> None:
    """Refuse to start when the KV caches would not fit: a clear error at start, rather
    than running out of memory mid-way."""
    if need > free:
        raise RunnerError(
            f"the KV caches need {need / 2**30:.2f} GiB ({slots} sequences of {max_len} "
            f"tokens), {free / 2**30:.2f} GiB is free on the device: give the deployment "
            "more GPUs or a workload with shorter longest requests"
        )


class StageRunner:
    """Steps over the sequences of one stage: at most ``slots`` sequences of at most
    ``max_len`` tokens (prompt and output) at once.

    Decoder-only models run packed steps: the tokens of a step in one row, attention per
    sequence over its own context, so a step costs what its tokens cost whatever the
    spread of lengths (decode steps on a GPU pad attention instead: ``Transformer``).
    ``pad_prefill`` pads an encoding to its longest prompt instead, as FasterTransformer
    does (the Static baseline)."""

    def __init__(
        self, model: Transformer, *, slots: int, max_len: int, pad_prefill: bool = False
    ) -> None:
        self.model = model
        self.pad_prefill = pad_prefill
        self.config = model.config
        self.first, self.last = model.stage.first, model.stage.last
        self.slots, self.max_len = slots, max_len
        caches = 2 if self.config.encoder_decoder else 1
        need = caches * SlotKVCache.bytes_needed(
            len(model.layers), len(model.kv_heads), self.config.head_dim, slots, max_len,
            model.dtype.itemsize,
        )  # fmt: skip
        if model.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(model.device)
            check_kv_memory(need, free, slots, max_len)
        self.cache: SlotKVCache = model.new_cache(slots, max_len)
        self.cross: SlotKVCache | None = (
            model.new_cross_cache(slots, max_len) if self.config.encoder_decoder else None
        )

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def packed_prefill(self) -> bool:
        return self.model.packed_prefill and not self.pad_prefill

    def hidden_shape(self, prefill: bool, new: Sequence[int]) -> tuple[int, int, int]:
        """The shape of the hidden states this stage takes from the previous one."""
        if not prefill:
            return (len(new), 1, self.hidden_size)
        if self.packed_prefill:
            return (1, sum(new), self.hidden_size)
        return (len(new), max(new), self.hidden_size)

    def release(self, seq_ids: Sequence[int]) -> None:
        for s in seq_ids:
            if s in self.cache:
                self.cache.remove(s)
            if self.cross is not None and s in self.cross:
                self.cross.remove(s)

    def prefill(
        self, seq_ids: Sequence[int], x: torch.Tensor | Sequence[Sequence[int]], new: Sequence[int]
    ) -> torch.Tensor:
        """Add the sequences and run their prompts: logits ``[B, vocab]`` of each one's
        next token on the last stage, else hidden states (:meth:`hidden_shape`)."""
        if max(new) > self.max_len:
            raise RequestRejected("prompt", f"longer than the {self.max_len} tokens a slot holds")
        with torch.inference_mode():
            if self.cross is not None:
                return self._encode_decode(seq_ids, x, new)
            for s in seq_ids:
                self.cache.add(s)
            return self.model.forward_step(
                seq_ids, x, self.cache, new=list(new), packed=self.packed_prefill
            )

    def _encode_decode(
        self, seq_ids: Sequence[int], x: torch.Tensor | Sequence[Sequence[int]], new: Sequence[int]
    ) -> torch.Tensor:
        """Encoder-decoder models (one stage): encode, project the encoder output into
        the cross cache, then the decoder's first step from its start token."""
        assert self.cross is not None
        encoded = self.model.encode(seq_ids, x, list(new))
        self.model.project_cross(seq_ids, encoded, list(new), self.cross)
        for s in seq_ids:
            self.cache.add(s)
        start = [self.config.decoder_start_token] * len(seq_ids)
        return self.model.decode(seq_ids, start, self.cache, self.cross)

    def decode(self, seq_ids: Sequence[int], x: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """One new token per sequence: ``x`` is the tokens (first stage) or hidden states
        ``[B, 1, H]``. The step runs in cache-slot order (so that the caches are read
        in place rather than gathered, unless it is packed); the output rows follow
        ``seq_ids``."""
        if self.model.packed_decode:
            return self._decode(seq_ids, x)
        slots = self.cache.slots(seq_ids)
        order = sorted(range(len(seq_ids)), key=slots.__getitem__)
        if order == list(range(len(seq_ids))):
            return self._decode(seq_ids, x)
        ids = [seq_ids[i] for i in order]
        if isinstance(x, torch.Tensor):
            xs: torch.Tensor | list[int] = x[torch.tensor(order, device=x.device)]
        else:
            xs = [x[i] for i in order]
        out = self._decode(ids, xs)
        inverse = torch.empty(len(order), dtype=torch.long, device=out.device)
        inverse[torch.tensor(order, device=out.device)] = torch.arange(
            len(order), device=out.device
        )
        return out[inverse]

    def _decode(self, seq_ids: Sequence[int], x: torch.Tensor | Sequence[int]) -> torch.Tensor:
        with torch.inference_mode():
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return self.model.forward_step(
                    seq_ids, x, self.cache, new=[1] * len(seq_ids), cross_cache=self.cross
                )
            return self.model.decode(seq_ids, x, self.cache, self.cross)

    # -- KV caches moving between chains (WorkloadAware) -----------------------------------
    def export_kv(
        self, seq_ids: Sequence[int], layers: range, heads: range
    ) -> tuple[torch.Tensor, list[int]]:
        """The keys and values of ``seq_ids`` for local ``layers`` and local KV
        ``heads``: ``[layers, 2, B, heads, T, head_dim]`` (``T`` the longest, padded),
        and each sequence's length."""
        lengths = [self.cache.length(s) for s in seq_ids]
        slots = torch.tensor(self.cache.slots(seq_ids), dtype=torch.long, device=self.cache.device)
        t = max(lengths)
        h = slice(heads.start, heads.stop)
        parts = [
            torch.stack((self.cache.k[i][slots, h, :t], self.cache.v[i][slots, h, :t]))
            for i in layers
        ]
        return torch.stack(parts), lengths

    def import_kv(
        self,
        seq_ids: Sequence[int],
        lengths: Sequence[int],
        kv: torch.Tensor,
        layers: range,
        heads: range,
    ) -> None:
        """Write ``kv`` (as :meth:`export_kv` gives it) into the cache, adding the
        sequences first if they are new."""
        for s, n in zip(seq_ids, lengths, strict=True):
            if s not in self.cache:
                self.cache.add(s)
            self.cache.set_length(s, n)
        slots = torch.tensor(self.cache.slots(seq_ids), dtype=torch.long, device=self.cache.device)
        t = kv.shape[4]
        h = slice(heads.start, heads.stop)
        for j, i in enumerate(layers):
            self.cache.k[i][slots, h, :t] = kv[j, 0].to(self.cache.dtype)
            self.cache.v[i][slots, h, :t] = kv[j, 1].to(self.cache.dtype)
