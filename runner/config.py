"""What the runner needs to execute a model beyond the planner's ``Architecture``.

The planner's :class:`~exegpt.planner.architecture.Architecture` describes a model's shape
(enough to count FLOPs and bytes). Executing it also needs the details that do not
change its cost: the activation function, whether linear layers have biases, norm
epsilon, RoPE base, OPT's position offset, T5's relative-position buckets, whether the
LM head shares the token embedding. :class:`ModelConfig` holds both, with defaults per
family taken from the published models, and reads Hugging Face ``config.json`` files
(OPT, Llama, T5) for weights loaded from a directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from exegpt.planner.architecture import Architecture

Activation = Literal["relu", "gelu", "gelu_tanh", "silu"]

# Hugging Face activation names -> ours.
_HF_ACTIVATIONS: dict[str, Activation] = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
    "swish": "silu",
}


class UnsupportedModel(ValueError):
    """A model (or a ``config.json``) the runner cannot execute."""


@dataclass(frozen=True)
class ModelConfig:
    """An architecture plus its execution details.

    ``position_offset``: learned position ``p`` reads row ``p + offset`` of the position
    table (2 for OPT). ``scale_decoder_output``: multiply the last hidden state by
    ``hidden_size ** -0.5`` before the LM head (T5 with a tied head).
    """

    architecture: Architecture
    activation: Activation = "relu"
    bias: bool = False
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    position_offset: int = 0
    rope_theta: float = 10000.0
    relative_buckets: int = 32
    relative_max_distance: int = 128
    scale_decoder_output: bool = False
    decoder_start_token: int = 0
    eos_token: int | None = None

    # -- shape shortcuts ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.architecture.name

    @property
    def encoder_decoder(self) -> bool:
        return self.architecture.encoder_decoder

    @property
    def hidden_size(self) -> int:
        return self.architecture.hidden_size

    @property
    def num_heads(self) -> int:
        return self.architecture.num_heads

    @property
    def kv_heads(self) -> int:
        return self.architecture.kv_heads

    @property
    def head_dim(self) -> int:
        return self.architecture.dim_head

    @property
    def ffn_size(self) -> int:
        return self.architecture.ffn_size

    @property
    def vocab_size(self) -> int:
        return self.architecture.vocab_size

    @property
    def num_layers(self) -> int:
        """Decoder layers."""
        return self.architecture.num_layers

    @property
    def num_encoder_layers(self) -> int:
        return self.architecture.num_encoder_layers

    @property
    def position_rows(self) -> int:
        """Rows of the learned position table."""
        return self.architecture.max_positions + self.position_offset

    def with_layers(self, decoder: int, encoder: int | None = None) -> ModelConfig:
        """The same model with another number of layers (the profiler times a few)."""
        enc = (encoder if encoder is not None else decoder) if self.encoder_decoder else 0
        arch = self.architecture.model_copy(
            update={"num_layers": decoder, "num_encoder_layers": enc}
        )
        return replace(self, architecture=arch)

    # -- construction ------------------------------------------------------------------
    @classmethod
    def from_architecture(cls, architecture: Architecture, **overrides: Any) -> ModelConfig:
        """Execution details of the family ``architecture`` belongs to:

        - encoder-decoder (T5): ReLU (gated-GELU when ``gated_mlp``, as T5 v1.1), no
          biases, RMSNorm eps 1e-6, relative positions with 32 buckets up to 128; the head
          is tied to the embedding (and the output scaled) unless the MLP is gated;
        - RoPE (Llama 2/3): SiLU, no biases, eps 1e-5, base 10000 (500000 for Llama 3);
        - learned positions (OPT, GPT-3): biases, eps 1e-5, tied head; ReLU and a
          position offset of 2 for OPT (names ``opt*``), tanh-GELU and no offset otherwise.
        """
        a = architecture
        name = a.name.lower()
        kw: dict[str, Any]
        if a.encoder_decoder:
            tied = not a.gated_mlp
            kw = {
                "activation": "gelu_tanh" if a.gated_mlp else "relu",
                "bias": False,
                "norm_eps": 1e-6,
                "tie_embeddings": tied,
                "scale_decoder_output": tied,
                "decoder_start_token": 0,
                "eos_token": 1,
            }
        elif a.position == "rope":
            kw = {
                "activation": "silu",
                "bias": False,
                "norm_eps": 1e-5,
                "rope_theta": 500000.0 if name.startswith("llama-3") else 10000.0,
            }
        else:
            opt = name.startswith("opt")
            kw = {
                "activation": "relu" if opt else "gelu_tanh",
                "bias": True,
                "norm_eps": 1e-5,
                "tie_embeddings": True,
                "position_offset": 2 if opt else 0,
                "eos_token": 2 if opt else None,
            }
        kw.update(overrides)
        return cls(architecture=a, **kw)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str | None = None) -> ModelConfig:
        """Read a Hugging Face ``config.json`` (as a dict) of an OPT, Llama or T5 model."""
        kind = config.get("model_type")
        label = name or str(config.get("_name_or_path") or kind or "model").split("/")[-1]
        label = label.lower() or "model"
        if kind == "opt":
            return _from_opt(config, label)
        if kind in ("llama", "mistral"):
            return _from_llama(config, label)
        if kind == "t5":
            return _from_t5(config, label)
        raise UnsupportedModel(f"model_type {kind!r} is not supported (supported: opt, llama, t5)")

    @classmethod
    def from_directory(cls, path: str | Path, name: str | None = None) -> ModelConfig:
        """The ``config.json`` of a Hugging Face model directory."""
        file = Path(path) / "config.json"
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UnsupportedModel(f"{file}: cannot read: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise UnsupportedModel(f"{file}: invalid JSON: {exc}") from None
        return cls.from_hf_config(config, name)


def _activation(value: object) -> Activation:
    act = _HF_ACTIVATIONS.get(str(value))
    if act is None:
        raise UnsupportedModel(f"activation {value!r} is not supported")
    return act


def _from_opt(c: dict[str, Any], name: str) -> ModelConfig:
    hidden = int(c["hidden_size"])
    if int(c.get("word_embed_proj_dim", hidden)) != hidden:
        raise UnsupportedModel("OPT with word_embed_proj_dim != hidden_size is not supported")
    if not c.get("do_layer_norm_before", True):
        raise UnsupportedModel("OPT with post-layer-norm (opt-350m) is not supported")
    if not c.get("enable_bias", True):
        raise UnsupportedModel("OPT without biases is not supported")
    arch = Architecture(
        name=name,
        family="decoder",
        num_layers=int(c["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=int(c["num_attention_heads"]),
        ffn_size=int(c["ffn_dim"]),
        vocab_size=int(c["vocab_size"]),
        norm="layernorm",
        position="learned",
        max_positions=int(c.get("max_position_embeddings", 2048)),
    )
    return ModelConfig(
        architecture=arch,
        activation=_activation(c.get("activation_function", "relu")),
        bias=True,
        norm_eps=1e-5,
        tie_embeddings=bool(c.get("tie_word_embeddings", True)),
        position_offset=2,
        eos_token=_int_or_none(c.get("eos_token_id")),
    )


def _rope_theta(c: dict[str, Any]) -> float:
    params = c.get("rope_parameters") or {}
    scaling = c.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise UnsupportedModel(f"RoPE scaling {kind!r} is not supported")
    return float(params.get("rope_theta") or c.get("rope_theta") or 10000.0)


def _from_llama(c: dict[str, Any], name: str) -> ModelConfig:
    if c.get("attention_bias") or c.get("mlp_bias"):
        raise UnsupportedModel("Llama with attention or MLP biases is not supported")
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    head_dim = int(c.get("head_dim") or hidden // heads)
    arch = Architecture(
        name=name,
        family="decoder",
        num_layers=int(c["num_hidden_layers"]),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=0 if head_dim * heads == hidden else head_dim,
        ffn_size=int(c["intermediate_size"]),
        gated_mlp=True,
        vocab_size=int(c["vocab_size"]),
        norm="rmsnorm",
        position="rope",
        max_positions=int(c.get("max_position_embeddings", 4096)),
    )
    return ModelConfig(
        architecture=arch,
        activation=_activation(c.get("hidden_act", "silu")),
        bias=False,
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(c.get("tie_word_embeddings", False)),
        rope_theta=_rope_theta(c),
        eos_token=_int_or_none(c.get("eos_token_id")),
    )


def _from_t5(c: dict[str, Any], name: str) -> ModelConfig:
    proj = str(c.get("feed_forward_proj", "relu"))
    gated = proj.startswith("gated-")
    act = c.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else proj.split("-")[-1])
    tied = bool(c.get("tie_word_embeddings", True))
    heads = int(c["num_heads"])
    d_model = int(c["d_model"])
    d_kv = int(c["d_kv"])
    arch = Architecture(
        name=name,
        family="encoder-decoder",
        num_layers=int(c.get("num_decoder_layers") or c["num_layers"]),
        num_encoder_layers=int(c["num_layers"]),
        hidden_size=d_model,
        num_heads=heads,
        head_dim=d_kv,
        ffn_size=int(c["d_ff"]),
        gated_mlp=gated,
        vocab_size=int(c["vocab_size"]),
        norm="rmsnorm",
        position="relative",
        max_positions=int(c.get("n_positions") or 2048),
    )
    return ModelConfig(
        architecture=arch,
        activation=_activation(act),
        bias=False,
        norm_eps=float(c.get("layer_norm_epsilon", 1e-6)),
        tie_embeddings=tied,
        scale_decoder_output=bool(c.get("scale_decoder_outputs", tied)),
        relative_buckets=int(c.get("relative_attention_num_buckets", 32)),
        relative_max_distance=int(c.get("relative_attention_max_distance", 128)),
        decoder_start_token=int(c.get("decoder_start_token_id") or 0),
        eos_token=_int_or_none(c.get("eos_token_id")),
    )


def _int_or_none(value: object) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else None
