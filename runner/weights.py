"""Weights: random (seeded, valid for timing) or read from a local directory of
safetensors files in Hugging Face layout (OPT, Llama, T5). Nothing is ever downloaded.

Every source serves *canonical* tensors, unsharded and unfused, under names of our own
(``layers.3.attn.q.weight``, ``embed.tokens.weight``, ...); :func:`load_weights` slices
each one to the shard a module holds (its heads, its part of the MLP, its part of the
vocabulary) and fuses Q/K/V and gate/up. Random weights come from a generator seeded by
the seed and the tensor's name, so every tensor-parallel rank and pipeline stage draws
the same full model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .config import ModelConfig
from .model import MLP, CrossAttention, Layer, Norm, SelfAttention, Transformer

# (dim, start, stop): the slice of a canonical tensor a shard holds
Slice = tuple[int, int, int] | None


class WeightsError(ValueError):
    """Weights that are missing, or do not fit the model."""


class TensorSource(Protocol):
    def get(self, name: str, shape: tuple[int, ...], part: Slice) -> torch.Tensor:
        """The canonical tensor ``name`` (full shape ``shape``), or the slice ``part``."""
        ...


def _slice(t: torch.Tensor, part: Slice) -> torch.Tensor:
    if part is None:
        return t
    dim, start, stop = part
    return t.narrow(dim, start, stop - start)


# -- canonical tensors --------------------------------------------------------------------
def canonical_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of the whole model and its full shape."""
    a = config.architecture
    h, d = config.hidden_size, config.head_dim
    q, kv = config.num_heads * d, config.kv_heads * d
    out: dict[str, tuple[int, ...]] = {"embed.tokens.weight": (config.vocab_size, h)}
    if a.position == "learned":
        out["embed.positions.weight"] = (config.position_rows, h)
    norm = ["weight", "bias"] if a.norm == "layernorm" else ["weight"]

    def layer(prefix: str, cross: bool) -> None:
        for n in norm:
            out[f"{prefix}.attn_norm.{n}"] = (h,)
            out[f"{prefix}.mlp_norm.{n}"] = (h,)
            if cross:
                out[f"{prefix}.cross_norm.{n}"] = (h,)
        blocks = ["attn", "cross"] if cross else ["attn"]
        for blk in blocks:
            out[f"{prefix}.{blk}.q.weight"] = (q, h)
            out[f"{prefix}.{blk}.k.weight"] = (kv, h)
            out[f"{prefix}.{blk}.v.weight"] = (kv, h)
            out[f"{prefix}.{blk}.o.weight"] = (h, q)
            if config.bias:
                out[f"{prefix}.{blk}.q.bias"] = (q,)
                out[f"{prefix}.{blk}.k.bias"] = (kv,)
                out[f"{prefix}.{blk}.v.bias"] = (kv,)
                out[f"{prefix}.{blk}.o.bias"] = (h,)
        f = config.ffn_size
        if a.gated_mlp:
            out[f"{prefix}.mlp.gate.weight"] = (f, h)
        out[f"{prefix}.mlp.up.weight"] = (f, h)
        out[f"{prefix}.mlp.down.weight"] = (h, f)
        if config.bias:
            if a.gated_mlp:
                out[f"{prefix}.mlp.gate.bias"] = (f,)
            out[f"{prefix}.mlp.up.bias"] = (f,)
            out[f"{prefix}.mlp.down.bias"] = (h,)

    for i in range(config.num_encoder_layers):
        layer(f"encoder.layers.{i}", False)
    for i in range(config.num_layers):
        layer(f"layers.{i}", config.encoder_decoder)
    for n in norm:
        out[f"final_norm.{n}"] = (h,)
    if config.encoder_decoder:
        out["encoder.final_norm.weight"] = (h,)
        out["encoder.relative_bias.weight"] = (config.relative_buckets, config.num_heads)
        out["decoder.relative_bias.weight"] = (config.relative_buckets, config.num_heads)
    if not config.tie_embeddings:
        out["lm_head.weight"] = (config.vocab_size, h)
    return out


def resolve_alias(config: ModelConfig, name: str) -> str:
    """A tied LM head is the token embedding."""
    if name == "lm_head.weight" and config.tie_embeddings:
        return "embed.tokens.weight"
    return name


# -- sources ----------------------------------------------------------------------------------
class RandomSource:
    """Seeded random weights: norms 1, biases 0, everything else normal(0, ``std``).

    The values are drawn on ``device`` (fast for large models on a GPU), so the same
    seed gives the same weights on every process of one device type, not across CPU
    and GPU."""

    def __init__(
        self,
        config: ModelConfig,
        seed: int = 0,
        std: float = 0.02,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.config, self.seed, self.std = config, seed, std
        self.device, self.dtype = torch.device(device), dtype

    def _generator(self, name: str) -> torch.Generator:
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        g = torch.Generator(device=self.device)
        g.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        return g

    def get(self, name: str, shape: tuple[int, ...], part: Slice) -> torch.Tensor:
        name = resolve_alias(self.config, name)
        if "norm." in name:
            full = torch.ones(shape, dtype=self.dtype, device=self.device)
        elif name.endswith(".bias"):
            full = torch.zeros(shape, dtype=self.dtype, device=self.device)
        else:
            full = torch.empty(shape, dtype=self.dtype, device=self.device)
            full.normal_(0.0, self.std, generator=self._generator(name))
        return _slice(full, part)


class DictSource:
    """Canonical tensors from a mapping (tests, conversions)."""

    def __init__(self, config: ModelConfig, tensors: Mapping[str, torch.Tensor]) -> None:
        self.config, self.tensors = config, tensors

    def get(self, name: str, shape: tuple[int, ...], part: Slice) -> torch.Tensor:
        name = resolve_alias(self.config, name) if name not in self.tensors else name
        try:
            t = self.tensors[name]
        except KeyError:
            raise WeightsError(f"no tensor {name!r}") from None
        if tuple(t.shape) != shape:
            raise WeightsError(f"{name}: shape {tuple(t.shape)}, expected {shape}")
        return _slice(t, part)


# -- Hugging Face name maps ------------------------------------------------------------------
def _opt_names(name: str) -> list[str]:
    fixed = {
        "embed.tokens.weight": "decoder.embed_tokens.weight",
        "embed.positions.weight": "decoder.embed_positions.weight",
        "final_norm.weight": "decoder.final_layer_norm.weight",
        "final_norm.bias": "decoder.final_layer_norm.bias",
    }
    if name == "lm_head.weight":
        return ["lm_head.weight"]
    if name in fixed:
        hf = fixed[name]
    else:
        _, i, rest = name.split(".", 2)
        block, _, leaf = rest.rpartition(".")
        sub = {
            "attn_norm": "self_attn_layer_norm",
            "mlp_norm": "final_layer_norm",
            "attn.q": "self_attn.q_proj",
            "attn.k": "self_attn.k_proj",
            "attn.v": "self_attn.v_proj",
            "attn.o": "self_attn.out_proj",
            "mlp.up": "fc1",
            "mlp.down": "fc2",
        }[block]
        hf = f"decoder.layers.{i}.{sub}.{leaf}"
    return [f"model.{hf}", hf]


def _llama_names(name: str) -> list[str]:
    fixed = {
        "embed.tokens.weight": "model.embed_tokens.weight",
        "final_norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",
    }
    if name in fixed:
        return [fixed[name]]
    _, i, rest = name.split(".", 2)
    block, _, leaf = rest.rpartition(".")
    sub = {
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        "attn.q": "self_attn.q_proj",
        "attn.k": "self_attn.k_proj",
        "attn.v": "self_attn.v_proj",
        "attn.o": "self_attn.o_proj",
        "mlp.gate": "mlp.gate_proj",
        "mlp.up": "mlp.up_proj",
        "mlp.down": "mlp.down_proj",
    }[block]
    return [f"model.layers.{i}.{sub}.{leaf}"]


def _t5_names(gated: bool) -> Callable[[str], list[str]]:
    def names(name: str) -> list[str]:
        fixed = {
            "embed.tokens.weight": [
                "shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
            ],
            "lm_head.weight": ["lm_head.weight"],
            "final_norm.weight": ["decoder.final_layer_norm.weight"],
            "encoder.final_norm.weight": ["encoder.final_layer_norm.weight"],
            "encoder.relative_bias.weight": [
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ],
            "decoder.relative_bias.weight": [
                "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ],
        }  # fmt: skip
        if name in fixed:
            return fixed[name]
        encoder = name.startswith("encoder.")
        stack = "encoder" if encoder else "decoder"
        _, i, rest = name.removeprefix("encoder.").split(".", 2)
        block, _, leaf = rest.rpartition(".")
        mlp = 1 if encoder else 2
        up = "wi_1" if gated else "wi"
        sub = {
            "attn_norm": "layer.0.layer_norm",
            "attn.q": "layer.0.SelfAttention.q",
            "attn.k": "layer.0.SelfAttention.k",
            "attn.v": "layer.0.SelfAttention.v",
            "attn.o": "layer.0.SelfAttention.o",
            "cross_norm": "layer.1.layer_norm",
            "cross.q": "layer.1.EncDecAttention.q",
            "cross.k": "layer.1.EncDecAttention.k",
            "cross.v": "layer.1.EncDecAttention.v",
            "cross.o": "layer.1.EncDecAttention.o",
            "mlp_norm": f"layer.{mlp}.layer_norm",
            "mlp.gate": f"layer.{mlp}.DenseReluDense.wi_0",
            "mlp.up": f"layer.{mlp}.DenseReluDense.{up}",
            "mlp.down": f"layer.{mlp}.DenseReluDense.wo",
        }[block]
        return [f"{stack}.block.{i}.{sub}.{leaf}"]

    return names


def hf_names(config: ModelConfig) -> Callable[[str], list[str]]:
    """Canonical name -> the Hugging Face names it may have (first found wins)."""
    a = config.architecture
    if a.encoder_decoder:
        return _t5_names(a.gated_mlp)
    if a.position == "rope":
        return _llama_names
    return _opt_names


class SafetensorsSource:
    """Tensors of a Hugging Face model directory (``*.safetensors``, sharded or not),
    read slice by slice: a shard reads only its part of each tensor."""

    def __init__(
        self,
        config: ModelConfig,
        directory: str | Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from safetensors import safe_open

        self.config, self.directory = config, Path(directory)
        self.device, self.dtype = torch.device(device), dtype
        self.names = hf_names(config)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise WeightsError(f"{self.directory}: no *.safetensors files")
        self._files = {f: safe_open(str(f), framework="pt", device="cpu") for f in files}
        self._where: dict[str, Path] = {}
        for f, handle in self._files.items():
            for key in handle.keys():  # type: ignore[no-untyped-call]  # noqa: SIM118 (safe_open is not a mapping)
                self._where.setdefault(key, f)

    def _find(self, name: str) -> str:
        tried: list[str] = []
        for canonical in dict.fromkeys([name, resolve_alias(self.config, name)]):
            for hf in self.names(canonical):
                if hf in self._where:
                    return hf
                tried.append(hf)
        raise WeightsError(f"{self.directory}: no tensor for {name} (looked for {tried})")

    def get(self, name: str, shape: tuple[int, ...], part: Slice) -> torch.Tensor:
        hf = self._find(name)
        view = self._files[self._where[hf]].get_slice(hf)  # type: ignore[no-untyped-call]
        got = tuple(view.get_shape())
        if got != shape:
            raise WeightsError(f"{self.directory}: {hf} has shape {got}, expected {shape}")
        if part is None:
            t = view[:]
        else:
            dim, start, stop = part
            t = view[start:stop] if dim == 0 else view[:, start:stop]
        out: torch.Tensor = t.to(device=self.device, dtype=self.dtype)
        return out


# -- filling a model ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Piece:
    name: str
    part: Slice


def _rows(r: range, width: int) -> Slice:
    return (0, r.start * width, r.stop * width)


def _cols(r: range, width: int) -> Slice:
    return (1, r.start * width, r.stop * width)


def _bindings(model: Transformer) -> Iterator[tuple[torch.Tensor, list[_Piece]]]:
    """Each parameter of ``model`` with the canonical pieces it is the concatenation of
    (along dimension 0)."""
    cfg = model.config
    stage = model.stage
    d = cfg.head_dim

    def norm(module: Norm | None, prefix: str) -> Iterator[tuple[torch.Tensor, list[_Piece]]]:
        if module is None:
            return
        yield module.weight, [_Piece(f"{prefix}.weight", None)]
        if module.bias is not None:
            yield module.bias, [_Piece(f"{prefix}.bias", None)]

    def attn(
        module: SelfAttention | CrossAttention, prefix: str
    ) -> Iterator[tuple[torch.Tensor, list[_Piece]]]:
        q, kv = module.q_heads, module.kv_heads
        leaves = ["weight", "bias"] if cfg.bias else ["weight"]
        for leaf in leaves:
            qp = _Piece(f"{prefix}.q.{leaf}", _rows(q, d))
            kp = _Piece(f"{prefix}.k.{leaf}", _rows(kv, d))
            vp = _Piece(f"{prefix}.v.{leaf}", _rows(kv, d))
            if isinstance(module, SelfAttention):
                yield getattr(module.qkv, leaf), [qp, kp, vp]
            else:
                yield getattr(module.q, leaf), [qp]
                yield getattr(module.kv, leaf), [kp, vp]
        yield module.out.weight, [_Piece(f"{prefix}.o.weight", _cols(q, d))]
        if module.out.bias is not None:
            yield module.out.bias, [_Piece(f"{prefix}.o.bias", None)]

    def mlp(module: MLP, prefix: str) -> Iterator[tuple[torch.Tensor, list[_Piece]]]:
        f = module.ffn
        leaves = ["weight", "bias"] if cfg.bias else ["weight"]
        for leaf in leaves:
            pieces = [_Piece(f"{prefix}.up.{leaf}", _rows(f, 1))]
            if module.gated:
                pieces.insert(0, _Piece(f"{prefix}.gate.{leaf}", _rows(f, 1)))
            yield getattr(module.up, leaf), pieces
        yield module.down.weight, [_Piece(f"{prefix}.down.weight", _cols(f, 1))]
        if module.down.bias is not None:
            yield module.down.bias, [_Piece(f"{prefix}.down.bias", None)]

    def layer(module: Layer, prefix: str) -> Iterator[tuple[torch.Tensor, list[_Piece]]]:
        yield from norm(module.attn_norm, f"{prefix}.attn_norm")
        yield from attn(module.attn, f"{prefix}.attn")
        if module.cross is not None:
            yield from norm(module.cross_norm, f"{prefix}.cross_norm")
            yield from attn(module.cross, f"{prefix}.cross")
        yield from norm(module.mlp_norm, f"{prefix}.mlp_norm")
        yield from mlp(module.mlp, f"{prefix}.mlp")

    if model.embed is not None:
        yield model.embed.weight, [_Piece("embed.tokens.weight", None)]
    if model.positions is not None:
        yield model.positions.weight, [_Piece("embed.positions.weight", None)]
    for i, enc in zip(stage.encoder, model.encoder_layers, strict=True):
        assert isinstance(enc, Layer)
        yield from layer(enc, f"encoder.layers.{i}")
    for i, dec in zip(stage.decoder, model.layers, strict=True):
        assert isinstance(dec, Layer)
        yield from layer(dec, f"layers.{i}")
    heads = range(model.q_heads.start, model.q_heads.stop)
    if model.encoder_bias is not None:
        yield model.encoder_bias.weight, [_Piece("encoder.relative_bias.weight", _cols(heads, 1))]
    if model.decoder_bias is not None:
        yield model.decoder_bias.weight, [_Piece("decoder.relative_bias.weight", _cols(heads, 1))]
    yield from norm(model.encoder_norm, "encoder.final_norm")
    yield from norm(model.final_norm, "final_norm")
    if model.lm_head is not None:
        yield model.lm_head.weight, [_Piece("lm_head.weight", _rows(model.vocab, 1))]


def load_weights(model: Transformer, source: TensorSource) -> Transformer:
    """Fill every parameter of ``model`` (its stage and shard) from ``source``."""
    shapes = canonical_shapes(model.config)
    with torch.no_grad():
        for param, pieces in _bindings(model):
            parts = []
            for p in pieces:
                shape = shapes.get(p.name) or shapes[resolve_alias(model.config, p.name)]
                parts.append(source.get(p.name, shape, p.part))
            value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if tuple(value.shape) != tuple(param.shape):
                raise WeightsError(
                    f"{pieces[0].name}: shard shape {tuple(value.shape)}, "
                    f"parameter {tuple(param.shape)}"
                )
            param.copy_(value.to(dtype=param.dtype, device=param.device))
    return model


def random_weights(model: Transformer, seed: int = 0, std: float = 0.02) -> Transformer:
    """Fill ``model`` with seeded random weights (the same full model on every shard)."""
    return load_weights(model, RandomSource(model.config, seed, std, model.device, model.dtype))


def load_directory(model: Transformer, directory: str | Path) -> Transformer:
    """Fill ``model`` from a Hugging Face directory of safetensors files."""
    return load_weights(model, SafetensorsSource(model.config, directory, "cpu", model.dtype))
