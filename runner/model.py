"""A transformer built from a :class:`~exegpt.runner.config.ModelConfig`, for every family
of the planner's presets:

- decoder-only with learned positions, LayerNorm and biases (OPT, GPT-3);
- decoder-only with RoPE, RMSNorm, a gated MLP and grouped-query attention (Llama 2/3);
- encoder-decoder with relative position buckets and RMSNorm (T5).

Every layer is pre-norm: ``x + attn(norm(x))``, (T5 decoder: ``+ cross(norm(x))``),
``+ mlp(norm(x))``. Decoding runs over an explicit per-sequence KV cache
(:mod:`exegpt.runner.kvcache`): a step takes any set of cached sequences, each with its
own cached length and number of new tokens, so sequences join and leave a batch freely.

A :class:`Transformer` is one pipeline stage (``StageSpec``: a range of layers, plus the
embeddings on the first stage and the LM head on the last) and one tensor-parallel
shard (``TensorParallel``). Its weights are empty until :mod:`exegpt.runner.weights`
fills them (random, or from a Hugging Face directory).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .config import ModelConfig
from .kvcache import KVCache, SlotKVCache, StepMeta, make_step
from .parallel import (
    SINGLE,
    ColumnParallelLinear,
    RowParallelLinear,
    StageSpec,
    TensorParallel,
    head_shards,
)

DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
}


def _activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "relu":
        return F.relu
    if name == "silu":
        return F.silu
    if name == "gelu":
        return F.gelu
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown activation {name!r}")


class Norm(nn.Module):
    """LayerNorm (weight and bias) or RMSNorm (weight; statistics in float32)."""

    def __init__(
        self, size: int, kind: str, eps: float, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.kind, self.eps, self.size = kind, eps, size
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype, device=device), False)
        self.bias = (
            nn.Parameter(torch.empty(size, dtype=dtype, device=device), False)
            if kind == "layernorm"
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, (self.size,), self.weight, self.bias, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Rotary:
    """Rotary position embedding (the rotate-half layout of Hugging Face checkpoints)."""

    def __init__(self, head_dim: int, theta: float, device: torch.device) -> None:
        exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float()
        self.inv_freq = 1.0 / (theta ** (exponents / head_dim))

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, 1, T, head_dim]`` cosines and sines of ``positions`` ``[B, T]``."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


def relative_buckets(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucket of each relative position (key position - query position)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    small = relative < max_exact
    large = (
        max_exact
        + (
            torch.log(relative.float() / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(small, relative, large)


class RelativeBias(nn.Module):
    """T5's learned relative position bias, for this rank's heads."""

    def __init__(
        self,
        config: ModelConfig,
        heads: int,
        bidirectional: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.buckets = config.relative_buckets
        self.max_distance = config.relative_max_distance
        self.bidirectional = bidirectional
        self.weight = nn.Parameter(
            torch.empty(self.buckets, heads, dtype=dtype, device=device), False
        )

    def forward(self, query_positions: torch.Tensor, keys: int) -> torch.Tensor:
        """``[B, heads, T, keys]`` bias for queries at ``query_positions`` ``[B, T]``."""
        key_pos = torch.arange(keys, device=query_positions.device)
        rel = key_pos[None, None, :] - query_positions[:, :, None]
        bucket = relative_buckets(rel, self.bidirectional, self.buckets, self.max_distance)
        return F.embedding(bucket, self.weight).permute(0, 3, 1, 2)


@dataclass
class LayerContext:
    """What every layer of one step shares: the step's metadata, the caches, masks and
    position encodings (built once per step by :meth:`Transformer.context`)."""

    meta: StepMeta
    cache: KVCache | None
    mask: torch.Tensor | None  # bool [B, 1, T, L], or float bias [B, H, T, L]
    is_causal: bool
    cos: torch.Tensor | None = None
    sin: torch.Tensor | None = None
    cross_meta: StepMeta | None = None
    cross_cache: KVCache | None = None
    cross_mask: torch.Tensor | None = None


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> torch.Tensor:
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=is_causal and mask is None, scale=scale, enable_gqa=gqa
    )


def _attend_packed(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: LayerContext,
    layer: int,
    scale: float,
) -> torch.Tensor:
    """Attention of a packed step (``[1, heads, N, head_dim]``), one sequence at a time
    over its own context: the keys and values cached so far, or this step's when
    nothing is cached. Nothing is padded, so the work is each sequence's own."""
    meta, cache = ctx.meta, ctx.cache
    if cache is not None:
        cache.write(layer, meta, k, v)
    gqa = q.shape[1] != k.shape[1]
    outs = []
    for off, n, past, slot in zip(meta.offsets, meta.new, meta.past, meta.slot_list, strict=True):
        qi = q[:, :, off : off + n]
        if cache is None or not past:
            ki, vi = k[:, :, off : off + n], v[:, :, off : off + n]
        else:
            ki, vi = cache.read_slot(layer, slot, past + n)
        mask = None
        if meta.causal and n > 1 and past:
            mask = torch.ones(n, past + n, dtype=torch.bool, device=q.device).tril(past)
        causal = bool(meta.causal and n > 1 and not past)
        outs.append(
            F.scaled_dot_product_attention(
                qi, ki, vi, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
            )
        )
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention over this rank's heads, reading and
    writing the KV cache."""

    def __init__(
        self,
        config: ModelConfig,
        tp: TensorParallel,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.q_heads, self.kv_heads = head_shards(config.num_heads, config.kv_heads, tp)
        d = self.head_dim = config.head_dim
        self.nq, self.nkv = len(self.q_heads), len(self.kv_heads)
        self.qkv = ColumnParallelLinear(
            config.hidden_size, (self.nq + 2 * self.nkv) * d, bias=config.bias, dtype=dtype,
            device=device,
        )  # fmt: skip
        self.out = RowParallelLinear(
            self.nq * d, config.hidden_size, tp, bias=config.bias, dtype=dtype, device=device
        )
        # T5 folds the 1/sqrt(d) into its weights
        self.scale = 1.0 if config.architecture.position == "relative" else d**-0.5

    def forward(self, x: torch.Tensor, ctx: LayerContext, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        d = self.head_dim
        q, k, v = self.qkv(x).split([self.nq * d, self.nkv * d, self.nkv * d], dim=-1)
        q = q.view(b, t, self.nq, d).transpose(1, 2)
        k = k.view(b, t, self.nkv, d).transpose(1, 2)
        v = v.view(b, t, self.nkv, d).transpose(1, 2)
        if ctx.cos is not None and ctx.sin is not None:
            q = apply_rotary(q, ctx.cos, ctx.sin)
            k = apply_rotary(k, ctx.cos, ctx.sin)
        if ctx.meta.packed:
            o = _attend_packed(q, k, v, ctx, layer, self.scale)
        else:
            if ctx.cache is not None:
                ctx.cache.write(layer, ctx.meta, k, v)
                if not ctx.meta.fresh:
                    k, v = ctx.cache.read(layer, ctx.meta)
            o = _attend(q, k, v, ctx.mask, ctx.is_causal, self.scale)
        out: torch.Tensor = self.out(o.transpose(1, 2).reshape(b, t, self.nq * d))
        return out


class CrossAttention(nn.Module):
    """A T5 decoder layer's attention over the encoder output, whose keys and values
    are projected once per sequence (:meth:`project`) into the cross cache."""

    def __init__(
        self, config: ModelConfig, tp: TensorParallel, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        self.q_heads, self.kv_heads = head_shards(config.num_heads, config.kv_heads, tp)
        d = self.head_dim = config.head_dim
        self.nq, self.nkv = len(self.q_heads), len(self.kv_heads)
        h = config.hidden_size
        self.q = ColumnParallelLinear(h, self.nq * d, bias=config.bias, dtype=dtype, device=device)
        self.kv = ColumnParallelLinear(
            h, 2 * self.nkv * d, bias=config.bias, dtype=dtype, device=device
        )
        self.out = RowParallelLinear(
            self.nq * d, h, tp, bias=config.bias, dtype=dtype, device=device
        )

    def project(self, encoded: torch.Tensor, meta: StepMeta, cache: KVCache, layer: int) -> None:
        b, t, _ = encoded.shape
        d = self.head_dim
        k, v = self.kv(encoded).split([self.nkv * d, self.nkv * d], dim=-1)
        cache.write(
            layer,
            meta,
            k.view(b, t, self.nkv, d).transpose(1, 2),
            v.view(b, t, self.nkv, d).transpose(1, 2),
        )

    def forward(self, x: torch.Tensor, ctx: LayerContext, layer: int) -> torch.Tensor:
        assert ctx.cross_cache is not None and ctx.cross_meta is not None
        b, t, _ = x.shape
        d = self.head_dim
        q = self.q(x).view(b, t, self.nq, d).transpose(1, 2)
        k, v = ctx.cross_cache.read(layer, ctx.cross_meta)
        o = _attend(q, k, v, ctx.cross_mask, False, 1.0)
        out: torch.Tensor = self.out(o.transpose(1, 2).reshape(b, t, self.nq * d))
        return out


class MLP(nn.Module):
    """``down(act(up x))``, or gated ``down(act(gate x) * up x)`` with gate and up fused
    into one column-parallel projection."""

    def __init__(
        self, config: ModelConfig, tp: TensorParallel, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        start, stop = tp.shard(config.ffn_size)
        self.ffn = range(start, stop)
        self.gated = config.architecture.gated_mlp
        width = stop - start
        h = config.hidden_size
        self.up = ColumnParallelLinear(
            h, (2 if self.gated else 1) * width, bias=config.bias, dtype=dtype, device=device
        )
        self.down = RowParallelLinear(width, h, tp, bias=config.bias, dtype=dtype, device=device)
        self.act = _activation(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        out: torch.Tensor = self.down(h)
        return out


class Layer(nn.Module):
    """One pre-norm transformer layer: an encoder layer (bidirectional, no cache), a
    decoder layer, or a T5 decoder layer (with cross-attention)."""

    def __init__(
        self,
        config: ModelConfig,
        tp: TensorParallel,
        *,
        cross: bool,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        a = config.architecture
        h = config.hidden_size

        def norm() -> Norm:
            return Norm(h, a.norm, config.norm_eps, dtype, device)

        self.attn_norm = norm()
        self.attn = SelfAttention(config, tp, dtype, device)
        self.cross_norm = norm() if cross else None
        self.cross = CrossAttention(config, tp, dtype, device) if cross else None
        self.mlp_norm = norm()
        self.mlp = MLP(config, tp, dtype, device)

    def forward(self, x: torch.Tensor, ctx: LayerContext, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx, layer)
        if self.cross is not None and self.cross_norm is not None:
            x = x + self.cross(self.cross_norm(x), ctx, layer)
        out: torch.Tensor = x + self.mlp(self.mlp_norm(x))
        return out


def _float_mask(
    bias: torch.Tensor, mask: torch.Tensor | None, causal: bool, dtype: torch.dtype
) -> torch.Tensor:
    """An additive mask: ``bias`` where attending is allowed, the dtype's minimum
    elsewhere."""
    bias = bias.to(dtype)
    if mask is None and causal:
        t, n = bias.shape[-2], bias.shape[-1]
        mask = torch.ones(t, n, dtype=torch.bool, device=bias.device).tril(n - t)
    if mask is None:
        return bias
    return bias.masked_fill(~mask, torch.finfo(dtype).min)


def key_mask(lengths: Sequence[int], keys: int, device: torch.device) -> torch.Tensor | None:
    """``[B, 1, 1, keys]``: True for each sequence's first ``lengths[b]`` keys; None when
    every sequence has all ``keys``."""
    if min(lengths) == keys:
        return None
    n = torch.tensor(list(lengths), device=device)
    return (torch.arange(keys, device=device)[None, :] < n[:, None])[:, None, None, :]


class Transformer(nn.Module):
    """One pipeline stage, one tensor-parallel shard of a model."""

    def __init__(
        self,
        config: ModelConfig,
        *,
        tp: TensorParallel = SINGLE,
        stage: StageSpec | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        dev = torch.device(device)
        stage = stage or StageSpec.whole(config.num_layers, config.num_encoder_layers)
        a = config.architecture
        if stage.decoder.stop > config.num_layers or stage.encoder.stop > max(
            config.num_encoder_layers, 0
        ):
            raise ValueError(f"stage {stage} exceeds the model's layers")
        if stage.encoder and not config.encoder_decoder:
            raise ValueError("a decoder-only model has no encoder layers")
        self.config, self.tp, self.stage = config, tp, stage
        self.dtype, self.device = dtype, dev
        h = config.hidden_size
        self.q_heads, self.kv_heads = head_shards(config.num_heads, config.kv_heads, tp)

        self.embed: nn.Embedding | None = None
        self.positions: nn.Embedding | None = None
        if stage.first:
            self.embed = nn.Embedding(config.vocab_size, h, dtype=dtype, device=dev)
            self.embed.weight.requires_grad_(False)
            if a.position == "learned":
                self.positions = nn.Embedding(config.position_rows, h, dtype=dtype, device=dev)
                self.positions.weight.requires_grad_(False)

        def layer(cross: bool) -> Layer:
            return Layer(config, tp, cross=cross, dtype=dtype, device=dev)

        self.encoder_layers = nn.ModuleList(layer(False) for _ in stage.encoder)
        self.layers = nn.ModuleList(layer(config.encoder_decoder) for _ in stage.decoder)
        relative = a.position == "relative"
        nq = len(self.q_heads)
        self.encoder_bias = (
            RelativeBias(config, nq, True, dtype, dev) if relative and stage.encoder else None
        )
        self.decoder_bias = (
            RelativeBias(config, nq, False, dtype, dev) if relative and stage.decoder else None
        )
        last_encoder = bool(stage.encoder) and stage.encoder.stop == config.num_encoder_layers
        self.encoder_norm = Norm(h, a.norm, config.norm_eps, dtype, dev) if last_encoder else None
        self.final_norm: Norm | None = None
        self.lm_head: ColumnParallelLinear | None = None
        self.vocab = range(*tp.shard(config.vocab_size))
        self.vocab_sizes = [
            len(range(*TensorParallel(tp.size, r, communicate=False).shard(config.vocab_size)))
            for r in range(tp.size)
        ]
        if stage.last:
            self.final_norm = Norm(h, a.norm, config.norm_eps, dtype, dev)
            self.lm_head = ColumnParallelLinear(
                h, len(self.vocab), bias=False, dtype=dtype, device=dev
            )
        self.rotary = (
            Rotary(config.head_dim, config.rope_theta, dev) if a.position == "rope" else None
        )
        # Decoder-only models encode packed (:class:`StepMeta`), and decode packed on the
        # CPU. On a GPU a decode step pads attention to the batch's longest context: one
        # kernel for the batch, where per-sequence kernels would cost more launches than
        # the padding costs reads at GPU batch sizes. T5's relative bias and
        # cross-attention take the padded layout.
        self.packed_prefill = not config.encoder_decoder
        self.packed_decode = self.packed_prefill and dev.type == "cpu"

    # -- caches ----------------------------------------------------------------------------
    def new_cache(self, max_seqs: int, max_len: int) -> SlotKVCache:
        """A KV cache for this stage's decoder layers (packed decode steps read any slot
        in place, so their caches are not compacted; padded ones read the batch as one
        view when its slots are the lowest, which compaction keeps)."""
        return SlotKVCache(
            len(self.layers), len(self.kv_heads), self.config.head_dim, max_seqs, max_len,
            dtype=self.dtype, device=self.device, compact=not self.packed_decode,
        )  # fmt: skip

    def new_cross_cache(self, max_seqs: int, max_len: int) -> SlotKVCache:
        """The cache of the encoder output's keys and values (encoder-decoder models)."""
        if not self.config.encoder_decoder:
            raise ValueError("only encoder-decoder models have cross-attention")
        return self.new_cache(max_seqs, max_len)

    # -- pieces of a step -----------------------------------------------------------------
    def embed_tokens(self, tokens: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        if self.embed is None:
            raise ValueError("only the first pipeline stage embeds tokens")
        x = self.embed(tokens)
        if self.positions is not None and positions is not None:
            x = x + self.positions(positions + self.config.position_offset)
        out: torch.Tensor = x
        return out

    def context(
        self,
        meta: StepMeta,
        cache: KVCache | None,
        *,
        cross_cache: KVCache | None = None,
        encoder: bool = False,
    ) -> LayerContext:
        """Masks and position encodings of a step, shared by its layers."""
        mask, is_causal = meta.mask, False
        if mask is None and meta.causal and meta.fresh and meta.max_new > 1:
            is_causal = True
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(meta.positions, self.dtype)
        bias_module = self.encoder_bias if encoder else self.decoder_bias
        if bias_module is not None:
            bias = bias_module(meta.positions, meta.max_total)
            mask = _float_mask(bias, mask, is_causal, self.dtype)
            is_causal = False
        ctx = LayerContext(meta, cache, mask, is_causal, cos, sin)
        if cross_cache is not None:
            lengths = [cross_cache.length(s) for s in meta.seq_ids]
            ctx.cross_cache = cross_cache
            ctx.cross_meta = make_step(
                meta.seq_ids, cross_cache.slots(meta.seq_ids), lengths, [0] * meta.batch,
                causal=False, device=self.device,
            )  # fmt: skip
            ctx.cross_mask = key_mask(lengths, max(lengths), self.device)
        return ctx

    def run_layers(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, ctx, i)
        return x

    def run_encoder_layers(self, x: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        for i, layer in enumerate(self.encoder_layers):
            x = layer(x, ctx, i)
        if self.encoder_norm is not None:
            x = self.encoder_norm(x)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the whole vocabulary for hidden states ``[..., H]``."""
        if self.final_norm is None or self.lm_head is None:
            raise ValueError("only the last pipeline stage computes logits")
        h = self.final_norm(hidden)
        if self.config.scale_decoder_output:
            h = h * self.config.hidden_size**-0.5
        return self.tp.all_gather(self.lm_head(h), self.vocab_sizes).float()

    # -- steps ------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor | Sequence[Sequence[int]], meta: StepMeta) -> torch.Tensor:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            # hidden states from the previous stage
            return x.reshape(1, -1, x.shape[-1]) if meta.packed else x
        if meta.packed:
            tokens = pack_tokens(x, meta.new, device=self.device)
        else:
            tokens = x if isinstance(x, torch.Tensor) else pad_tokens(x, device=self.device)
        return self.embed_tokens(tokens.to(self.device), meta.positions)

    def forward_step(
        self,
        seq_ids: Sequence[Hashable],
        x: torch.Tensor | Sequence[Sequence[int]],
        cache: SlotKVCache,
        *,
        new: Sequence[int] | None = None,
        cross_cache: KVCache | None = None,
        packed: bool | None = None,
    ) -> torch.Tensor:
        """One decoder step over cached sequences: ``x`` is the new tokens (lists, or a
        right-padded ``[B, T]`` tensor with ``new`` giving each one's count) on the
        first stage, or the previous stage's hidden states.

        Returns the logits ``[B, vocab]`` of each sequence's last new token on the last
        stage, else the hidden states for the next stage: ``[B, T, H]``, or packed
        (``packed``; by default ``packed_prefill``, or ``packed_decode`` when every
        sequence has one new token) ``[1, N, H]`` with ``N`` the new tokens, ``[B, 1, H]``
        when each sequence has one.
        """
        if new is None:
            new = [x.shape[1]] * x.shape[0] if isinstance(x, torch.Tensor) else [len(s) for s in x]
        if packed is None:
            packed = self.packed_decode if max(new) == 1 else self.packed_prefill
        meta = cache.step(seq_ids, new, causal=True, packed=packed)
        h = self._input(x, meta)
        ctx = self.context(meta, cache, cross_cache=cross_cache)
        h = self.run_layers(h, ctx)
        cache.advance(meta)
        if self.lm_head is None:
            return h.view(meta.batch, 1, h.shape[-1]) if packed and meta.max_new == 1 else h
        if packed:
            return self.logits(h[0, meta.last])
        last = h[torch.arange(meta.batch, device=h.device), meta.last]
        return self.logits(last)

    def prefill(
        self, seq_ids: Sequence[Hashable], tokens: Sequence[Sequence[int]], cache: SlotKVCache
    ) -> torch.Tensor:
        """Add new sequences to ``cache`` and encode their prompts (decoder-only models):
        the logits of each prompt's last token."""
        for s in seq_ids:
            cache.add(s)
        return self.forward_step(seq_ids, tokens, cache)

    def decode(
        self,
        seq_ids: Sequence[Hashable],
        tokens: torch.Tensor | Sequence[int],
        cache: SlotKVCache,
        cross_cache: KVCache | None = None,
    ) -> torch.Tensor:
        """One token for each of ``seq_ids``: the logits of the next."""
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        return self.forward_step(seq_ids, t, cache, cross_cache=cross_cache)

    def encode(
        self,
        seq_ids: Sequence[Hashable],
        x: torch.Tensor | Sequence[Sequence[int]],
        lengths: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Run this stage's encoder layers (encoder-decoder models) over the inputs
        (token lists or a padded tensor on the first stage, hidden states after it)."""
        if lengths is None:
            if isinstance(x, torch.Tensor):
                lengths = [x.shape[1]] * x.shape[0]
            else:
                lengths = [len(s) for s in x]
        meta = make_step(
            list(seq_ids), list(range(len(seq_ids))), [0] * len(seq_ids), list(lengths),
            causal=False, device=self.device,
        )  # fmt: skip
        h = self._input(x, meta)
        ctx = self.context(meta, None, encoder=True)
        return self.run_encoder_layers(h, ctx)

    def project_cross(
        self,
        seq_ids: Sequence[Hashable],
        encoded: torch.Tensor,
        lengths: Sequence[int],
        cross_cache: SlotKVCache,
    ) -> None:
        """Add new sequences to ``cross_cache`` with the keys and values every decoder
        layer of this stage attends to, from the encoder output ``[B, T, H]``."""
        for s in seq_ids:
            cross_cache.add(s)
        meta = cross_cache.step(seq_ids, lengths, causal=False)
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, Layer) and layer.cross is not None
            layer.cross.project(encoded, meta, cross_cache, i)
        cross_cache.advance(meta)


def pack_tokens(
    x: torch.Tensor | Sequence[Sequence[int]],
    new: Sequence[int],
    *,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Token lists, or a right-padded ``[B, T]`` tensor with ``new[b]`` tokens in row
    ``b``, as one row ``[1, N]``."""
    if isinstance(x, torch.Tensor):
        if x.shape[1] == 1 or min(new) == x.shape[1]:
            return x.reshape(1, -1)
        return torch.cat([x[i, :n] for i, n in enumerate(new)])[None]
    flat = [t for seq in x for t in seq]
    return torch.tensor(flat, dtype=torch.long, device=device)[None]


def pad_tokens(
    sequences: Sequence[Sequence[int]], *, pad: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Right-pad token lists into a ``[B, max length]`` tensor."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), pad, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out.to(device)
