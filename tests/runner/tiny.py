"""Tiny models of each family, built from configurations with random weights (nothing is
downloaded), in Hugging Face ``transformers`` and in the runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from exegpt.planner.architecture import Architecture
from exegpt.runner.config import ModelConfig

FAMILIES = ["opt", "llama", "t5", "t5-gated"]


def hf_model(family: str, seed: int = 0) -> Any:
    """A tiny Hugging Face model of ``family`` with random weights: every weight drawn
    from N(0, 0.3) (biases too, so that none is trivially zero), norms from U(0.5, 1.5)."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "opt":
        model = tf.OPTForCausalLM(
            tf.OPTConfig(
                vocab_size=128, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
            )
        )  # fmt: skip
    elif family == "llama":
        model = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                vocab_size=128, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                rms_norm_eps=1e-5,
            )
        )  # fmt: skip
    elif family in ("t5", "t5-gated"):
        gated = family == "t5-gated"
        model = tf.T5ForConditionalGeneration(
            tf.T5Config(
                vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                num_decoder_layers=3 if gated else 2, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16,
                feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings=not gated,
            )
        )  # fmt: skip
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    return model.eval()


def save_hf(family: str, directory: Path, seed: int = 0) -> Any:
    model = hf_model(family, seed)
    model.save_pretrained(directory)
    return model


def hf_greedy(model: Any, prompt: list[int], n: int, *, t5: bool = False) -> list[int]:
    """``n`` greedy tokens from ``model``, recomputing the whole sequence at each step
    (no cache, no padding: the reference)."""
    seq, dec, out = list(prompt), [_start(model)], []
    with torch.no_grad():
        for _ in range(n):
            if t5:
                logits = model(
                    input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([dec])
                ).logits
            else:
                logits = model(input_ids=torch.tensor([seq])).logits
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            seq.append(tok)
            dec.append(tok)
    return out


def hf_logits(model: Any, prompt: list[int], continuation: list[int], *, t5: bool) -> torch.Tensor:
    """Logits ``[len(continuation), vocab]`` that predict each continuation token, with
    the whole sequence given (teacher forcing)."""
    with torch.no_grad():
        if t5:
            dec = [_start(model), *continuation[:-1]]
            logits = model(
                input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([dec])
            ).logits[0]
            return logits
        seq = [*prompt, *continuation[:-1]]
        logits = model(input_ids=torch.tensor([seq])).logits[0]
        return logits[len(prompt) - 1 :]


def tiny_architecture(family: str, **changes: Any) -> Architecture:
    """A tiny planner architecture of each family (for random-weight runner tests)."""
    base: dict[str, dict[str, Any]] = {
        "opt": dict(
            name="opt-tiny", num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
            vocab_size=128, max_positions=64,
        ),
        "gpt3": dict(
            name="gpt3-tiny", num_layers=2, hidden_size=32, num_heads=4, ffn_size=64,
            vocab_size=128, max_positions=64,
        ),
        "llama": dict(
            name="llama-tiny", num_layers=2, hidden_size=32, num_heads=4, num_kv_heads=2,
            ffn_size=64, gated_mlp=True, vocab_size=128, norm="rmsnorm", position="rope",
            max_positions=64,
        ),
        "t5": dict(
            name="t5-tiny", family="encoder-decoder", num_layers=2, num_encoder_layers=2,
            hidden_size=32, num_heads=4, head_dim=8, ffn_size=64, vocab_size=128,
            norm="rmsnorm", position="relative", max_positions=64,
        ),
    }  # fmt: skip
    return Architecture.model_validate({**base[family], **changes})


def tiny_config(family: str, **changes: Any) -> ModelConfig:
    return ModelConfig.from_architecture(tiny_architecture(family, **changes))


def _start(model: Any) -> int:
    """T5 starts decoding from its pad token."""
    return int(getattr(model.config, "decoder_start_token_id", None) or 0)


# -- tensor parallelism ----------------------------------------------------------------------
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22, 23]]

# (label, HF directory or None for seeded random weights, family, architecture changes)
Case = tuple[str, str | None, str, dict[str, Any]]


def build(case: Case, tp: Any = None) -> Any:
    """The runner model of ``case`` on tensor-parallel group ``tp`` (None: one process)."""
    from exegpt.runner.model import Transformer
    from exegpt.runner.parallel import SINGLE
    from exegpt.runner.weights import load_directory, random_weights

    _, directory, family, changes = case
    group = tp or SINGLE
    if directory is not None:
        model = Transformer(ModelConfig.from_directory(directory), tp=group)
        return load_directory(model, directory)
    return random_weights(Transformer(tiny_config(family, **changes), tp=group), seed=1, std=0.2)


def run_case(case: Case, tp: Any = None) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy tokens for ``PROMPTS`` and the logits of the first generated token."""
    from exegpt.runner.generate import generate

    model = build(case, tp)
    tokens = generate(model, PROMPTS, 6)
    with torch.inference_mode():
        if model.config.encoder_decoder:
            ids = list(range(len(PROMPTS)))
            cross = model.new_cross_cache(len(ids), 16)
            model.project_cross(ids, model.encode(ids, PROMPTS), [len(p) for p in PROMPTS], cross)
            cache = model.new_cache(len(ids), 4)
            for s in ids:
                cache.add(s)
            logits = model.decode(ids, [0] * len(ids), cache, cross)
        else:
            logits = model.prefill(list(range(len(PROMPTS))), PROMPTS, model.new_cache(3, 16))
    return tokens, logits.tolist()


def tp_worker(rank: int, world: int, cases: list[Case]) -> dict[str, Any]:
    """One rank of a tensor-parallel run of every case (``exegpt.runner.distributed``)."""
    from exegpt.runner.parallel import TensorParallel

    tp = TensorParallel.from_group()
    assert (tp.rank, tp.size) == (rank, world)
    return {case[0]: run_case(case, tp) for case in cases}
