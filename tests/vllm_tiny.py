"""A tiny Llama checkpoint that vLLM loads: random weights saved with ``save_pretrained``
and a word-level tokenizer trained with ``tokenizers`` at test time (nothing downloaded)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
WORDS = ["user", "assistant", "system", "hello", "world"] + [f"w{i}" for i in range(200)]


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Write a 2-layer Llama (hidden 64, head size 32, float32) and its tokenizer to
    ``directory``; return it."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<unk>", "<s>", "</s>"]
    tokenizer.train_from_iterator(
        [" ".join(WORDS) + " : ."], trainers.WordLevelTrainer(special_tokens=specials)
    )
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)

    torch.manual_seed(seed)
    config = tf.LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    )  # fmt: skip
    model = tf.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3)
    model.save_pretrained(directory)
    return directory


@dataclass
class Step:
    """One engine step as vLLM's scheduler saw it: requests running and waiting before
    the step, and its ``SchedulerOutput``."""

    running_before: int
    waiting_before: int
    started: int
    """requests whose prefill started on this step"""
    batch: int
    """requests scheduled on this step (prefills and decodes)"""


@dataclass
class InProcessEngine:
    """A vLLM ``LLMEngine`` whose engine core runs in this process, with every step its
    scheduler takes recorded."""

    engine: Any
    steps: list[Step] = field(default_factory=list)

    @property
    def scheduler(self) -> Any:
        return self.engine.engine_core.engine_core.scheduler

    def generate(self, prompts: list[list[int]], max_tokens: list[int]) -> dict[str, list[int]]:
        """Greedy outputs of ``prompts`` added together (request ids "0", "1", ...), the
        steps this takes recorded in ``steps`` (cleared first)."""
        from vllm import SamplingParams

        self.steps.clear()
        for i, (prompt, n) in enumerate(zip(prompts, max_tokens, strict=True)):
            params = SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            self.engine.add_request(str(i), {"prompt_token_ids": prompt}, params)
        out: dict[str, list[int]] = {}
        while self.engine.has_unfinished_requests():
            for o in self.engine.step():
                if o.finished:
                    out[o.request_id] = list(o.outputs[0].token_ids)
        return out


@contextmanager
def in_process_engine(model: Path, **engine_args: Any) -> Iterator[InProcessEngine]:
    """An in-process vLLM engine on the CPU with a small KV cache, synchronous scheduling
    and no chunked prefill unless ``engine_args`` say otherwise; torch.distributed, the
    thread count and the environment (vLLM sets ``LD_PRELOAD``, ``LOCAL_WORLD_SIZE``
    and more, which later tests' subprocesses would inherit) are restored afterwards."""
    from vllm import EngineArgs, LLMEngine
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    threads = torch.get_num_threads()
    environment = dict(os.environ)
    args: dict[str, Any] = dict(
        model=str(model), dtype="float32", max_model_len=256, max_num_seqs=8,
        max_num_batched_tokens=256, enable_chunked_prefill=False, async_scheduling=False,
        enforce_eager=True, enable_prefix_caching=False, seed=0,
    )  # fmt: skip
    args.update(engine_args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        engine = LLMEngine.from_engine_args(EngineArgs(**args))
    recorded = InProcessEngine(engine)
    scheduler = recorded.scheduler
    schedule = scheduler.schedule

    def recording(*a: Any, **k: Any) -> Any:
        running, waiting = scheduler.get_request_counts()
        output = schedule(*a, **k)
        recorded.steps.append(
            Step(running, waiting, len(output.scheduled_new_reqs), len(output.num_scheduled_tokens))
        )
        return output

    scheduler.schedule = recording
    try:
        yield recorded
    finally:
        engine.engine_core.shutdown()
        cleanup_dist_env_and_memory()
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(environment)


def stop_servers(procs: Iterable[subprocess.Popen[Any]], timeout_s: float = 30.0) -> None:
    """Stop started servers: ask each in turn, then wait for each, killing one that has
    not stopped within ``timeout_s``."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
