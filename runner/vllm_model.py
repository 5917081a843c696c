"""The model vLLM loads for a profile: a Hugging Face ``config.json`` written for an
architecture (random weights: vLLM's ``dummy`` load format, nothing is read or
downloaded), or a local weights directory.

vLLM is told the model by a Hugging Face configuration. Two of the runner's families
map onto vLLM's model classes: RoPE + RMSNorm + gated MLP (Llama, ``LlamaForCausalLM``)
and learned positions + LayerNorm (OPT and the GPT-3 shapes, ``OPTForCausalLM``).
Encoder-decoder models (T5) are not served by vLLM; they keep the own engine's profile.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .config import ModelConfig, UnsupportedModel

# the runner's activation names -> Hugging Face's
_HF_ACT = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}


def hf_config_fields(config: ModelConfig) -> tuple[str, dict[str, Any]]:
    """The ``transformers`` configuration class name and its fields for ``config``.
    Raises :class:`UnsupportedModel` (naming what differs) for a model vLLM cannot
    load as one of its Llama or OPT classes."""
    a = config.architecture
    if a.encoder_decoder:
        raise UnsupportedModel(
            f"{a.name} is an encoder-decoder model, which vLLM does not serve: profile it "
            "with the own engine (exegpt profile without --engine vllm)"
        )
    if a.position == "rope" and a.norm == "rmsnorm" and a.gated_mlp and config.activation == "silu":
        return "LlamaConfig", {
            "vocab_size": a.vocab_size,
            "hidden_size": a.hidden_size,
            "intermediate_size": a.ffn_size,
            "num_hidden_layers": a.num_layers,
            "num_attention_heads": a.num_heads,
            "num_key_value_heads": a.kv_heads,
            "head_dim": a.dim_head,
            "max_position_embeddings": a.max_positions,
            "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta,
            "tie_word_embeddings": config.tie_embeddings,
            "attention_bias": config.bias,
            "mlp_bias": config.bias,
        }
    if a.position == "learned" and a.norm == "layernorm" and not a.gated_mlp:
        if a.kv_heads != a.num_heads or a.dim_head * a.num_heads != a.hidden_size:
            raise UnsupportedModel(
                f"{a.name}: vLLM's OPT class needs kv heads = heads and head width x heads "
                "= hidden size; set numKvHeads and headDim accordingly"
            )
        return "OPTConfig", {
            "vocab_size": a.vocab_size,
            "hidden_size": a.hidden_size,
            "word_embed_proj_dim": a.hidden_size,
            "ffn_dim": a.ffn_size,
            "num_hidden_layers": a.num_layers,
            "num_attention_heads": a.num_heads,
            "max_position_embeddings": a.max_positions,
            "activation_function": _HF_ACT[config.activation],
            "do_layer_norm_before": True,
            "enable_bias": config.bias,
            "tie_word_embeddings": config.tie_embeddings,
        }
    raise UnsupportedModel(
        f"{a.name}: vLLM profiles Llama-shaped (rope, rmsnorm, gated SiLU MLP) or OPT-shaped "
        f"(learned positions, layernorm) models; this one has position={a.position}, "
        f"norm={a.norm}, gatedMlp={a.gated_mlp}, activation={config.activation}"
    )


def write_model_dir(config: ModelConfig, directory: Path, dtype: str) -> Path:
    """Write the ``config.json`` vLLM loads ``config`` from into ``directory``."""
    class_name, fields = hf_config_fields(config)
    transformers = importlib.import_module("transformers")
    model_class = class_name.removesuffix("Config") + "ForCausalLM"  # what vLLM looks up
    hf = getattr(transformers, class_name)(architectures=[model_class], torch_dtype=dtype, **fields)
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(directory))
    return directory
