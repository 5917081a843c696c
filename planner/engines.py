"""What the simulator needs to know about the engine that executes a plan: how it
drives pipeline stages, how it batches prompts, and how it admits them.

* **ExeGPT** (the project's own engine, ``runner/engine.py``): the driver sends a
  step's micro-batches and waits for their tokens before the next step (fill and
  drain, ``pipeline.py``); decoder-only prompts run packed (each prompt's own tokens,
  no padding), encoder-decoder prompts padded to the batch's longest.
* **vLLM**: as many batches in flight as the pipeline has stages (overlapped steps);
  prompts packed, and packed into the running batch's decode step (a step that
  encodes while others decode pays the step's fixed costs once); at most
  ``max_num_batched_tokens`` tokens per step, a longer prefill chunked over several
  steps (chunked prefill); a paged KV cache in blocks of
  ``kv_block_tokens`` tokens, allocated as sequences grow.

Static batching admits a batch only when none runs and runs it until its longest
output ends. The own engine runs it as FasterTransformer does (prompts padded to the
batch's longest, every slot computed until then); vLLM packs its prompts within the
token budget and frees each sequence as it finishes, so later steps decode only the
sequences still running (``strategies/static.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import Architecture
from .kvcapacity import VLLM_BLOCK_SIZE
from .plan import Engine, EngineChoice

VLLM_MAX_NUM_BATCHED_TOKENS = 8192
"""The token budget per step of stock vLLM (the Continuous baseline, chunked prefill):
vLLM's online default on H100/H200-class GPUs. The planner prices it and the operator
renders it (``vllm_args``), so the baseline that runs is the one priced."""


@dataclass(frozen=True)
class EngineModel:
    """The behaviour of one engine, as far as the simulator prices it."""

    name: Engine
    overlapped_steps: bool
    """Pipeline steps overlap (a micro-batch starts its next step as soon as its own
    tokens are back) instead of each step filling and draining the pipeline."""
    pads_encoder_decoder: bool
    """Encoder-decoder prompts are padded to the batch's longest."""
    token_budget: int | None = None
    """Tokens per step at most (chunked prefill); ``None``: a step takes any prefill."""
    kv_block_tokens: int | None = None
    """Paged KV cache block size; ``None``: a slot per sequence."""
    prefill_joins_decodes: bool = False
    """A prompt's prefill is packed into the running batch's decode step (vLLM), so a
    step that encodes while others decode pays a step's fixed costs once; ``False``:
    the encoding is a step of its own."""
    static_frees_finished: bool = False
    """A static batch's prompts are packed and each sequence is freed as it finishes
    (vLLM); ``False``: FasterTransformer's fixed batch, prompts padded and every slot
    computed until the batch's longest output ends."""

    def pads_prefill(self, architecture: Architecture) -> bool:
        """Whether RoundRobin, WorkloadAware and Continuous prefills are padded."""
        return self.pads_encoder_decoder and architecture.encoder_decoder

    def prefill_steps(self, tokens: float) -> int:
        """Steps a prefill of ``tokens`` tokens takes (chunks of the token budget)."""
        if self.token_budget is None or tokens <= self.token_budget:
            return 1
        return -(-round(tokens) // self.token_budget)


OWN_ENGINE = EngineModel(name="ExeGPT", overlapped_steps=False, pads_encoder_decoder=True)
VLLM = EngineModel(
    name="vLLM",
    overlapped_steps=True,
    pads_encoder_decoder=False,
    token_budget=VLLM_MAX_NUM_BATCHED_TOKENS,
    kv_block_tokens=VLLM_BLOCK_SIZE,
    prefill_joins_decodes=True,
    static_frees_finished=True,
)


def engine_model(choice: EngineChoice) -> EngineModel:
    """The model of the engine a request plans for ("Auto" plans for the own engine,
    the one a plan names unless told otherwise)."""
    return VLLM if choice == "vLLM" else OWN_ENGINE
