"""The KV cache a replica's decoding engine allocates for a configuration: what the
simulator prices as memory and what the engine reserves at start, from one function.

The own engine (``ExeGPT``) gives every sequence a slot of the longest input plus the
longest output (a block is one slot). It holds at most:

- RoundRobin: the steady decode batch ``B_D`` (the plan's prediction) with three
  standard deviations of room for its variation, plus one encoding of ``B_E``;
- WorkloadAware (the decoders): ``decode_batch``;
- Static: one batch of ``encode_batch``;
- Continuous: ``decode_batch``.

vLLM pages the cache in blocks of ``VLLM_BLOCK_SIZE`` tokens: it is given the tokens the
planner reserves for the steady batch (its mean context plus three standard deviations
of the sum, and the encoding in flight), in blocks, plus one block per sequence for
the partly filled last block of each. A Static batch on vLLM holds at most the whole
input and output of each of its sequences (vLLM frees each as it finishes, so the batch
never holds more): their expected sum plus three standard deviations of it, never more
than the longest input and output of every sequence.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from .moments import Moments
from .plan import Engine, ExecutionConfig

KV_SAFETY_SIGMAS = 3.0
"""Standard deviations of room the steady decode batch and its context get."""
VLLM_BLOCK_SIZE = 32
"""Tokens per paged block of vLLM's KV cache: a size every vLLM attention backend takes
(the CPU backend needs a multiple of 32; vLLM's GPU default is 16)."""


class KvCapacity(BaseModel):
    """The KV cache of one replica's decoding caches (per replica, all its GPUs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Engine
    sequences: int = Field(ge=1, description="most sequences held at once")
    tokens: int = Field(ge=1, description="KV tokens reserved (blocks x block_size)")
    block_size: int = Field(ge=1, description="tokens per block (own engine: one slot)")
    blocks: int = Field(ge=1, description="blocks allocated")


def steady_sequences(config: ExecutionConfig, steady_decode_batch: float) -> int:
    """The most sequences a replica's decoding caches hold at once (see the module)."""
    if config.strategy == "RoundRobin":
        b = max(steady_decode_batch, 1.0)
        return math.ceil(b + KV_SAFETY_SIGMAS * math.sqrt(b)) + config.encode_batch
    if config.strategy == "Static":
        return config.encode_batch
    return config.decode_batch


def reserved_tokens(batch: float, moments: Moments) -> float:
    """KV tokens to reserve for a steady decode batch: mean context plus a margin of
    ``KV_SAFETY_SIGMAS`` standard deviations of the batch's total context."""
    if batch <= 0:
        return 0.0
    m = moments
    return batch * m.mean_context + KV_SAFETY_SIGMAS * math.sqrt(batch) * m.std_context


def _paged_tokens(config: ExecutionConfig, moments: Moments, steady_decode_batch: float) -> float:
    m = moments
    if config.strategy == "RoundRobin":
        return reserved_tokens(steady_decode_batch, m) + config.encode_batch * m.mean_input
    if config.strategy == "WorkloadAware":
        return reserved_tokens(config.decode_batch, m) + config.encode_batch * m.mean_input
    if config.strategy == "Static":
        return static_batch_tokens(config.encode_batch, m)
    return reserved_tokens(config.decode_batch, m)


def static_batch_tokens(batch: int, moments: Moments) -> float:
    """KV tokens a Static batch of ``batch`` sequences holds at most on vLLM: the sum
    of their inputs and outputs, at its mean plus ``KV_SAFETY_SIGMAS`` standard
    deviations (the standard deviation of one sequence's input plus output bounded by
    the sum of the two's), capped at the longest input and output of every sequence."""
    m = moments
    one = m.input.std + m.output.std
    total = batch * (m.mean_input + m.mean_output) + KV_SAFETY_SIGMAS * math.sqrt(batch) * one
    return min(total, batch * float(m.max_input + m.max_output))


def encoder_kv_capacity(config: ExecutionConfig, moments: Moments, engine: Engine) -> KvCapacity:
    """The KV cache of a WorkloadAware replica's encoders (decoder-only models): the own
    engine's encoder caches hold one encoding, ``encode_batch`` slots of the longest
    request; vLLM's prefill instances page the batch being encoded and the one whose
    KV is on its way to the decoders (mean input each)."""
    if engine == "ExeGPT":
        slot = moments.max_input + moments.max_output
        n = config.encode_batch
        return KvCapacity(engine=engine, sequences=n, tokens=n * slot, block_size=slot, blocks=n)
    if engine == "vLLM":
        n = 2 * config.encode_batch
        blocks = math.ceil(n * moments.mean_input / VLLM_BLOCK_SIZE) + n
        tokens = blocks * VLLM_BLOCK_SIZE
        return KvCapacity(
            engine=engine, sequences=n, tokens=tokens, block_size=VLLM_BLOCK_SIZE, blocks=blocks
        )
    raise ValueError(f"engine must be ExeGPT or vLLM, not {engine!r}")


def kv_capacity(
    config: ExecutionConfig,
    moments: Moments,
    engine: Engine,
    steady_decode_batch: float,
) -> KvCapacity:
    """The KV cache ``engine`` allocates for one replica of ``config`` on the workload
    ``moments`` summarises, ``steady_decode_batch`` being the simulator's steady decode
    batch (RoundRobin's ``B_D``)."""
    sequences = steady_sequences(config, steady_decode_batch)
    if engine == "ExeGPT":
        slot = moments.max_input + moments.max_output
        tokens = sequences * slot
        return KvCapacity(
            engine=engine, sequences=sequences, tokens=tokens, block_size=slot, blocks=sequences
        )
    if engine == "vLLM":
        paged = _paged_tokens(config, moments, steady_decode_batch)
        blocks = math.ceil(paged / VLLM_BLOCK_SIZE) + sequences
        tokens = blocks * VLLM_BLOCK_SIZE
        return KvCapacity(
            engine=engine,
            sequences=sequences,
            tokens=tokens,
            block_size=VLLM_BLOCK_SIZE,
            blocks=blocks,
        )
    raise ValueError(f"engine must be ExeGPT or vLLM, not {engine!r}")
