"""Generation over encode and decode steps: greedy or sampled, each sequence leaving the
batch when it has its tokens (or emits the end-of-sequence token)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .model import Transformer


@dataclass(frozen=True)
class Sampling:
    """``greedy``: the most likely token. Otherwise a draw from the softmax of
    ``logits / temperature``, restricted to the ``top_k`` most likely when > 0."""

    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0


GREEDY = Sampling()


def select_tokens(
    logits: torch.Tensor, sampling: Sampling = GREEDY, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The next token of each row of ``logits`` ``[B, vocab]``."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    scores = logits.float() / max(sampling.temperature, 1e-6)
    if sampling.top_k > 0:
        k = min(sampling.top_k, scores.shape[-1])
        kth = scores.topk(k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    *,
    sampling: Sampling = GREEDY,
    eos_token: int | None = None,
    seed: int = 0,
) -> list[list[int]]:
    """Generate for a batch of prompts of any lengths with a whole model (one stage):
    one encode step (the prompts' prefill, or T5's encoder), then decode steps over
    the sequences still running. Returns the new tokens of each prompt."""
    stage = model.stage
    if not (stage.first and stage.last):
        raise ValueError("generate() needs the whole model on one stage")
    n = len(prompts)
    limits = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != n:
        raise ValueError("one max_new_tokens per prompt")
    out: list[list[int]] = [[] for _ in range(n)]
    if n == 0 or max(limits) <= 0:
        return out
    generator = None
    if not sampling.greedy:
        generator = torch.Generator(device=model.device)
        generator.manual_seed(seed)
    ids = list(range(n))
    lengths = [len(p) for p in prompts]
    cross = None
    with torch.inference_mode():
        if model.config.encoder_decoder:
            cross = model.new_cross_cache(n, max(lengths))
            encoded = model.encode(ids, prompts)
            model.project_cross(ids, encoded, lengths, cross)
            cache = model.new_cache(n, max(limits))
            for s in ids:
                cache.add(s)
            start = [model.config.decoder_start_token] * n
            logits = model.decode(ids, start, cache, cross)
        else:
            cache = model.new_cache(n, max(lengths) + max(limits))
            logits = model.prefill(ids, prompts, cache)
        active = ids
        while True:
            tokens = select_tokens(logits, sampling, generator).tolist()
            still: list[int] = []
            feed: list[int] = []
            for s, tok in zip(active, tokens, strict=True):
                out[s].append(int(tok))
                if len(out[s]) >= limits[s] or (eos_token is not None and tok == eos_token):
                    cache.remove(s)
                    if cross is not None:
                        cross.remove(s)
                else:
                    still.append(s)
                    feed.append(int(tok))
            if not still:
                return out
            active = still
            logits = model.decode(active, feed, cache, cross)
