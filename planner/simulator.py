"""XSimulator, analytic mode: expected-value throughput, latency and memory of one
execution configuration, fast enough to sit inside the scheduler's search loop.

Every strategy is modelled from the same per-stage costs (``costs.CostModel``), as the
engine that runs the plan drives its pipeline and batches its prompts
(``engines.EngineModel``, ``prefill.PrefillLengths``). Each strategy is one class in
``strategies/`` (RoundRobin, WorkloadAware, Static, Continuous) with its prediction
and its discrete-event run; this module holds what they share: the shape checks, the
groups of GPUs each phase runs on, and the memory per GPU.

The latency is the paper's: the time to generate an output of the 99th-percentile
length, queueing excluded. ``e2e_p99_s`` adds the wait for the next admission slot and
what a request spends in the server outside the steps (the profile's
``engine.request_s``).
"""

from __future__ import annotations

from .costs import CostModel, Group
from .engines import EngineModel, engine_model
from .kvcapacity import KvCapacity, encoder_kv_capacity, kv_capacity, reserved_tokens
from .moments import Moments
from .plan import Engine, ExecutionConfig, PlanRequest, Prediction
from .prefill import PrefillLengths
from .profile import Profile
from .runnable import vllm_deployment_limitation, vllm_limitation, worker_limitation
from .strategies import strategy_model


class Simulator:
    """Analytic XSimulator bound to one request and profile."""

    def __init__(self, request: PlanRequest, profile: Profile, moments: Moments | None = None):
        if profile.architecture.name != request.architecture.name:
            raise ValueError(
                f"profile is for {profile.architecture.name!r} but the request is for "
                f"{request.architecture.name!r}"
            )
        self.request, self.profile = request, profile
        self.engine: EngineModel = engine_model(request.engine)
        self.costs = CostModel(
            profile,
            request.gpu,
            request.gpus_per_node,
            request.dtype,
            overlapped_steps=self.engine.overlapped_steps,
        )
        self.m = moments or Moments.of(request.workload, request.architecture)
        # The lengths prefills are priced at: as the engine batches them, and padded
        # to the longest for Static (the FasterTransformer baseline).
        self.prefill = PrefillLengths(
            request.workload.input, self.engine.pads_prefill(request.architecture)
        )
        self.padded_prefill = PrefillLengths(request.workload.input, padded=True)
        self.capacity = request.gpu.memory_bytes * request.memory_headroom
        # The engine whose KV cache is priced ("Auto" is priced as the own engine, the
        # larger reservation of the two).
        self.kv_engine: Engine = "vLLM" if request.engine == "vLLM" else "ExeGPT"
        self.tp_degrees = set(profile.tp_degrees)
        # What a request spends in the server outside the engine's steps (its e2e only).
        self.request_overhead = profile.engine.request_s if profile.engine is not None else 0.0
        # What a WorkloadAware decode instance's steps take per request handed over.
        self.handover = profile.engine.handover_s if profile.engine is not None else 0.0

    # -- public -----------------------------------------------------------------------
    def evaluate(self, config: ExecutionConfig) -> Prediction:
        problem = self.check_shape(config)
        if problem:
            return _infeasible(problem)
        return strategy_model(config.strategy).predict(self, config)

    def check_shape(self, c: ExecutionConfig) -> str:
        """Why a configuration cannot run at all (empty string if it can)."""
        if c.total_gpus > self.request.gpus:
            return f"needs {c.total_gpus} GPUs, the budget is {self.request.gpus}"
        model = strategy_model(c.strategy)
        tps = [c.tensor_parallel] + ([c.encode_tp] if model.name == "WorkloadAware" else [])
        for tp in tps:
            if tp not in self.tp_degrees:
                return f"the profile has no TP degree {tp}"
            if tp > self.request.gpus_per_node:
                return f"TP degree {tp} exceeds the {self.request.gpus_per_node} GPUs of a node"
        arch = self.costs.arch
        if c.pipeline_stages > arch.decode_layers or c.encode_stages > arch.encode_layers:
            return "more pipeline stages than layers"
        problem = model.shape_problem(self, c)
        if problem:
            return problem
        if self.request.engine == "vLLM":  # a plan for vLLM is always one it runs
            reason = vllm_limitation(c, arch)
            if not reason and self.request.executable_only:
                reason = vllm_deployment_limitation(c, self.request.gpus_per_node)
            return reason
        if self.request.executable_only:
            return worker_limitation(c, arch)
        return ""

    # -- memory ------------------------------------------------------------------------
    def _kv_tokens(self, batch: float) -> float:
        """A lower bound on the KV tokens the engine reserves for a steady decode batch of
        ``batch`` (the scheduler's upper bounds use it)."""
        if self.kv_engine == "ExeGPT":
            return max(batch, 0.0) * (self.m.max_input + self.m.max_output)
        return reserved_tokens(batch, self.m)

    def kv(self, c: ExecutionConfig, steady_decode_batch: float) -> KvCapacity:
        """The KV cache the engine allocates per replica for ``c`` (what it is priced at)."""
        return kv_capacity(c, self.m, self.kv_engine, steady_decode_batch)

    def finish(
        self,
        c: ExecutionConfig,
        qps: float,
        latency: float,
        e2e: float,
        memory: float,
        decode_batch: float,
    ) -> Prediction:
        feasible = memory <= self.capacity
        reason = (
            ""
            if feasible
            else f"needs {memory / 2**30:.1f} GiB per GPU, {self.capacity / 2**30:.1f} GiB usable"
        )
        q = qps * c.replicas
        return Prediction(
            throughput_qps=q,
            throughput_tps=q * self.m.mean_output,
            latency_s=latency,
            e2e_p99_s=e2e + self.request_overhead,
            memory_per_gpu_bytes=int(memory),
            decode_batch=decode_batch,
            feasible=feasible,
            reason=reason,
        )

    # -- memory per strategy ---------------------------------------------------------------
    def round_robin_groups(self, c: ExecutionConfig) -> tuple[Group, Group, Group]:
        """(encode group, decode group, memory group) for a RoundRobin config."""
        s, t = c.pipeline_stages, c.tensor_parallel
        tp_group, dp_group = Group(s, t), Group(s, 1, dp=t)
        if t == 1 or c.tp_scope == "all":
            return tp_group, tp_group, tp_group
        if c.tp_scope == "encode":
            return tp_group, dp_group, Group(s, 1)
        return dp_group, tp_group, Group(s, 1)

    def round_robin_memory(self, c: ExecutionConfig, b_d: float) -> float:
        m, k = self.m, self.costs
        enc, dec, mem_group = self.round_robin_groups(c)
        b_e = c.encode_batch
        memory = (
            k.weights_per_gpu(mem_group, "both")
            + k.kv_per_gpu(dec, self.kv(c, b_d).tokens)
            + k.activations_per_gpu(enc, b_e * m.mean_input)
        )
        return memory

    def workload_aware_groups(self, c: ExecutionConfig) -> tuple[Group, Group]:
        enc = Group(c.encode_stages, c.encode_tp)
        dec = Group(c.pipeline_stages, c.tensor_parallel, first_gpu=c.encode_gpus)
        return enc, dec

    def workload_aware_memory(self, c: ExecutionConfig) -> float:
        m, k = self.m, self.costs
        enc, dec = self.workload_aware_groups(c)
        b_e = c.encode_batch
        enc_tokens = 2 * b_e * m.mean_input  # the batch being encoded + the one in transfer
        if self.costs.arch.encoder_decoder:
            enc_mem = k.weights_per_gpu(enc, "encode") + k.activations_per_gpu(enc, enc_tokens)
        else:
            enc_kv = encoder_kv_capacity(c, m, self.kv_engine).tokens
            enc_mem = (
                k.weights_per_gpu(enc, "encode")
                + k.kv_per_gpu(enc, enc_kv, "encode")
                + k.activations_per_gpu(enc, enc_tokens / 2)
            )
        dec_mem = (
            k.weights_per_gpu(dec, "decode")
            + k.kv_per_gpu(dec, self.kv(c, float(c.decode_batch)).tokens)
            + k.activations_per_gpu(dec, c.decode_batch)
        )
        return max(enc_mem, dec_mem)

    def static_memory(self, c: ExecutionConfig, prompt_tokens: float) -> float:
        """``prompt_tokens``: the tokens of one micro-batch of the batch's encoding."""
        k = self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b = c.encode_batch
        memory = (
            k.weights_per_gpu(g, "both")
            + k.kv_per_gpu(g, self.kv(c, float(b)).tokens)
            + k.activations_per_gpu(g, prompt_tokens)
        )
        return memory

    def continuous_memory(self, c: ExecutionConfig, b: float, joins: float) -> float:
        m, k = self.m, self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        micro = c.micro_batches
        memory = (
            k.weights_per_gpu(g, "both")
            + k.kv_per_gpu(g, self.kv(c, b).tokens)
            + k.activations_per_gpu(g, joins / micro * m.mean_input + b / micro)
        )
        return memory


def _infeasible(reason: str) -> Prediction:
    return Prediction(
        throughput_qps=0.0,
        throughput_tps=0.0,
        latency_s=0.0,
        e2e_p99_s=0.0,
        memory_per_gpu_bytes=0,
        decode_batch=0.0,
        feasible=False,
        reason=reason,
    )
