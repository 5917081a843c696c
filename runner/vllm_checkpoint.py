"""A checkpoint vLLM's OpenAI server loads as it loads a real one: the architecture's
Hugging Face configuration (``vllm_model``), random weights saved with
``save_pretrained`` and a word-level tokenizer of the model's vocabulary trained with
``tokenizers`` on the spot (nothing read or downloaded).

The server is started from the arguments the operator renders for a plan, which name a
weights directory and no load format, so a bench serves such a directory rather than
vLLM's ``dummy`` weights; the tokenizer is what the server detokenises its outputs
with.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from .config import ModelConfig
from .vllm_model import hf_config_fields

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def write_tokenizer(directory: Path, vocab_size: int) -> None:
    """A word-level tokenizer of exactly ``vocab_size`` tokens (three special tokens and
    words ``w0``, ``w1``, ...), saved in ``directory``."""
    tf = importlib.import_module("transformers")
    tk = importlib.import_module("tokenizers")
    words = [f"w{i}" for i in range(vocab_size - len(SPECIAL_TOKENS))]
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *words])}
    tokenizer = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = tk.decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(str(directory))


def write_checkpoint(config: ModelConfig, directory: Path, dtype: str, seed: int) -> Path:
    """Write ``config``'s model with random weights (normal, std 0.02; norms 1) drawn
    from ``seed``, and a tokenizer of its vocabulary, into ``directory``."""
    class_name, fields = hf_config_fields(config)
    tf = importlib.import_module("transformers")
    model_class = class_name.removesuffix("Config") + "ForCausalLM"
    hf_config = getattr(tf, class_name)(
        architectures=[model_class], torch_dtype=dtype, bos_token_id=1, eos_token_id=2, **fields
    )
    generator = torch.Generator().manual_seed(seed)
    model = getattr(tf, model_class)(hf_config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.to(getattr(torch, dtype)).save_pretrained(str(directory))
    write_tokenizer(directory, config.architecture.vocab_size)
    return directory


def cached_checkpoint(config: ModelConfig, root: Path, dtype: str, seed: int) -> Path:
    """:func:`write_checkpoint`'s directory under ``root``, written once: a server
    started again on the same directory finds vLLM's compiled model in its cache
    (about half of a server's start on the CPU)."""
    directory = root / f"{config.architecture.name}-{dtype}-seed{seed}"
    done = directory / ".complete"
    if not done.exists():
        write_checkpoint(config, directory, dtype, seed)
        done.touch()
    return directory
