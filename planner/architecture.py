"""Model architectures: presets and parameter / KV-cache byte counts per layer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Family = Literal["decoder", "encoder-decoder"]
Dtype = Literal["float16", "bfloat16", "float32"]

DTYPE_BYTES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4}


class Architecture(BaseModel):
    """The shape of a transformer, enough to count FLOPs, bytes and memory.

    For decoder-only models ``num_layers`` is the number of decoder layers and
    ``num_encoder_layers`` is 0. For encoder-decoder models (T5) both are set;
    the decoder layers carry cross-attention over the encoder's output.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1)
    family: Family = "decoder"
    num_layers: int = Field(gt=0, alias="numLayers")
    num_encoder_layers: int = Field(default=0, ge=0, alias="numEncoderLayers")
    hidden_size: int = Field(gt=0, alias="hiddenSize")
    num_heads: int = Field(gt=0, alias="numHeads")
    num_kv_heads: int = Field(default=0, ge=0, alias="numKvHeads")
    head_dim: int = Field(default=0, ge=0, alias="headDim")
    ffn_size: int = Field(gt=0, alias="ffnSize")
    gated_mlp: bool = Field(default=False, alias="gatedMlp")
    vocab_size: int = Field(gt=0, alias="vocabSize")
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["learned", "rope", "relative"] = "learned"
    max_positions: int = Field(default=2048, gt=0, alias="maxPositions")

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        if self.family == "encoder-decoder" and self.num_encoder_layers == 0:
            raise ValueError("numEncoderLayers must be > 0 for an encoder-decoder model")
        if self.family == "decoder" and self.num_encoder_layers != 0:
            raise ValueError("numEncoderLayers must be 0 for a decoder-only model")
        kv = self.kv_heads
        if self.num_heads % kv != 0:
            raise ValueError(f"numHeads ({self.num_heads}) must be a multiple of numKvHeads ({kv})")
        if self.head_dim == 0 and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hiddenSize ({self.hidden_size}) must be a multiple of numHeads "
                f"({self.num_heads}) unless headDim is given"
            )
        return self

    # -- derived shape ---------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def q_width(self) -> int:
        """Width of the query / attention output projection."""
        return self.num_heads * self.dim_head

    @property
    def kv_width(self) -> int:
        """Width of one of the key or value projections."""
        return self.kv_heads * self.dim_head

    @property
    def encoder_decoder(self) -> bool:
        return self.family == "encoder-decoder"

    @property
    def encode_layers(self) -> int:
        """Layers that run over the input in the encoding phase."""
        return self.num_encoder_layers if self.encoder_decoder else self.num_layers

    @property
    def decode_layers(self) -> int:
        return self.num_layers

    def tensor_parallel_degrees(self, limit: int = 8) -> list[int]:
        """TP degrees (powers of two up to ``limit``) that split the heads evenly."""
        out, tp = [], 1
        while tp <= limit and self.num_heads % tp == 0:
            out.append(tp)
            tp *= 2
        return out

    # -- parameters ----------------------------------------------------------------------
    def attention_params(self) -> int:
        h = self.hidden_size
        return h * self.q_width * 2 + h * self.kv_width * 2

    def mlp_params(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.ffn_size

    def encode_layer_params(self) -> int:
        """Parameters of one layer of the encoding phase (an encoder layer for T5)."""
        return self.attention_params() + self.mlp_params() + 4 * self.hidden_size

    def decode_layer_params(self) -> int:
        """Parameters of one decoder layer (with cross-attention for T5)."""
        cross = self.attention_params() if self.encoder_decoder else 0
        return self.attention_params() + cross + self.mlp_params() + 6 * self.hidden_size

    def embedding_params(self) -> int:
        pos = self.max_positions * self.hidden_size if self.position == "learned" else 0
        return self.vocab_size * self.hidden_size + pos

    def head_params(self) -> int:
        """The output projection to the vocabulary (counted separately from the embedding)."""
        return self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        enc = self.num_encoder_layers * self.encode_layer_params()
        return (
            enc
            + self.num_layers * self.decode_layer_params()
            + self.embedding_params()
            + self.head_params()
        )

    # -- bytes -------------------------------------------------------------------------
    def encode_layer_bytes(self, dtype: Dtype = "float16") -> int:
        return self.encode_layer_params() * DTYPE_BYTES[dtype]

    def decode_layer_bytes(self, dtype: Dtype = "float16") -> int:
        return self.decode_layer_params() * DTYPE_BYTES[dtype]

    def kv_bytes_per_token(self, dtype: Dtype = "float16") -> int:
        """KV-cache bytes one token occupies in one layer (keys and values)."""
        return 2 * self.kv_width * DTYPE_BYTES[dtype]

    def weight_bytes(self, dtype: Dtype = "float16") -> int:
        return self.total_params() * DTYPE_BYTES[dtype]


def _arch(**kw: object) -> Architecture:
    return Architecture.model_validate(kw)


PRESETS: dict[str, Architecture] = {
    a.name: a
    for a in [
        # T5-11B (Raffel et al.): d_model 1024, d_ff 65536, 128 heads of 128, 24+24 layers.
        _arch(
            name="t5-11b",
            family="encoder-decoder",
            num_layers=24,
            num_encoder_layers=24,
            hidden_size=1024,
            num_heads=128,
            head_dim=128,
            ffn_size=65536,
            vocab_size=32128,
            norm="rmsnorm",
            position="relative",
            max_positions=2048,
        ),
        _arch(
            name="opt-13b",
            num_layers=40,
            hidden_size=5120,
            num_heads=40,
            ffn_size=20480,
            vocab_size=50272,
            max_positions=2048,
        ),
        # GPT-3 family sizes used by the paper; 12·L·h² gives the parameter count.
        _arch(
            name="gpt3-39b",
            num_layers=48,
            hidden_size=8192,
            num_heads=64,
            ffn_size=32768,
            vocab_size=51200,
            max_positions=2048,
        ),
        _arch(
            name="gpt3-101b",
            num_layers=80,
            hidden_size=10240,
            num_heads=80,
            ffn_size=40960,
            vocab_size=51200,
            max_positions=2048,
        ),
        _arch(
            name="gpt3-175b",
            num_layers=96,
            hidden_size=12288,
            num_heads=96,
            ffn_size=49152,
            vocab_size=51200,
            max_positions=2048,
        ),
        _arch(
            name="gpt3-341b",
            num_layers=106,
            hidden_size=16384,
            num_heads=128,
            ffn_size=65536,
            vocab_size=51200,
            max_positions=2048,
        ),
        _arch(
            name="llama-2-7b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=32,
            ffn_size=11008,
            gated_mlp=True,
            vocab_size=32000,
            norm="rmsnorm",
            position="rope",
            max_positions=4096,
        ),
        _arch(
            name="llama-2-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            ffn_size=28672,
            gated_mlp=True,
            vocab_size=32000,
            norm="rmsnorm",
            position="rope",
            max_positions=4096,
        ),
        _arch(
            name="llama-3-8b",
            num_layers=32,
            hidden_size=4096,
            num_heads=32,
            num_kv_heads=8,
            ffn_size=14336,
            gated_mlp=True,
            vocab_size=128256,
            norm="rmsnorm",
            position="rope",
            max_positions=8192,
        ),
        _arch(
            name="llama-3-70b",
            num_layers=80,
            hidden_size=8192,
            num_heads=64,
            num_kv_heads=8,
            ffn_size=28672,
            gated_mlp=True,
            vocab_size=128256,
            norm="rmsnorm",
            position="rope",
            max_positions=8192,
        ),
    ]
}


def get_architecture(name: str) -> Architecture:
    """Look up a preset by name; the error lists the known names."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise KeyError(f"unknown model {name!r}; known presets: {known}") from None
