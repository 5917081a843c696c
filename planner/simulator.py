"""XSimulator, analytic mode: expected-value throughput, latency and memory of one
execution configuration, fast enough to sit inside the scheduler's search loop.

Every strategy is modelled from the same per-stage costs (``costs.CostModel``):

RoundRobin (RRA)
    A cycle is one encoding of ``B_E`` queries followed by ``N_D`` decode iterations.
    In steady state as many queries leave per cycle as join, so by Little's law the
    decode batch is ``B_D = B_E * E[d] / N_D`` (E[d]: mean decode iterations).
    Throughput ``B_E / T_cycle``; a query of the p99 output length sees ``d99``
    iterations and ``d99 / N_D`` encodings on its way.
WorkloadAware (WAA)
    Encoders encode batches back to back; KV caches move to the decoders, which keep a
    decode batch of up to ``B_D``. Throughput is the slowest of encoding, KV transfer
    and decoding; when encoding is the bottleneck the decode batch settles below
    ``B_D`` (found by bisection on the flow balance).
Static (FasterTransformer-like)
    A batch is encoded (padded to its longest input) and decoded until its longest
    output ends, with every slot computed throughout (each slot's attention over its own
    context); KV is reserved for the longest input plus the longest possible output of
    each slot.
Continuous (ORCA / vLLM-like)
    Iteration-level batching: each iteration decodes the running batch and prefills
    the queries that joined it, in the same step.

The latency is the paper's: the time to generate an output of the 99th-percentile
length, queueing excluded. ``e2e_p99_s`` adds the wait for the next admission slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .costs import CostModel, Group
from .moments import Moments
from .plan import ExecutionConfig, PlanRequest, Prediction
from .profile import Profile
from .runnable import vllm_deployment_limitation, vllm_limitation, worker_limitation

KV_SAFETY_SIGMAS = 3.0


def _pass_time(stage: float, chain: float, micro: int, stages: int) -> float:
    """One pass of ``micro`` micro-batches through ``stages`` stages (fill + drain)."""
    return (micro + stages - 1) * stage + chain


class Simulator:
    """Analytic XSimulator bound to one request and profile."""

    def __init__(self, request: PlanRequest, profile: Profile, moments: Moments | None = None):
        if profile.architecture.name != request.architecture.name:
            raise ValueError(
                f"profile is for {profile.architecture.name!r} but the request is for "
                f"{request.architecture.name!r}"
            )
        self.request, self.profile = request, profile
        self.costs = CostModel(profile, request.gpu, request.gpus_per_node, request.dtype)
        self.m = moments or Moments.of(request.workload, request.architecture)
        self.capacity = request.gpu.memory_bytes * request.memory_headroom
        self.tp_degrees = set(profile.tp_degrees)

    # -- public -----------------------------------------------------------------------
    def evaluate(self, config: ExecutionConfig) -> Prediction:
        problem = self.check_shape(config)
        if problem:
            return _infeasible(problem)
        if config.strategy == "RoundRobin":
            p = self._round_robin(config)
        elif config.strategy == "WorkloadAware":
            p = self._workload_aware(config)
        elif config.strategy == "Static":
            p = self._static(config)
        else:
            p = self._continuous(config)
        return p

    def check_shape(self, c: ExecutionConfig) -> str:
        """Why a configuration cannot run at all (empty string if it can)."""
        if c.total_gpus > self.request.gpus:
            return f"needs {c.total_gpus} GPUs, the budget is {self.request.gpus}"
        tps = [c.tensor_parallel] + ([c.encode_tp] if c.strategy == "WorkloadAware" else [])
        for tp in tps:
            if tp not in self.tp_degrees:
                return f"the profile has no TP degree {tp}"
            if tp > self.request.gpus_per_node:
                return f"TP degree {tp} exceeds the {self.request.gpus_per_node} GPUs of a node"
        arch = self.costs.arch
        if c.pipeline_stages > arch.decode_layers or c.encode_stages > arch.encode_layers:
            return "more pipeline stages than layers"
        if c.strategy == "WorkloadAware":
            if c.encode_gpus != c.encode_stages * c.encode_tp:
                return "encode_gpus must equal encode_stages * encode_tp"
            if c.decode_gpus != c.pipeline_stages * c.tensor_parallel:
                return "decode_gpus must equal pipeline_stages * tensor_parallel"
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
        """KV tokens to reserve for a steady decode batch: mean plus a safety margin."""
        if batch <= 0:
            return 0.0
        m = self.m
        return batch * m.mean_context + KV_SAFETY_SIGMAS * math.sqrt(batch) * m.std_context

    def _finish(
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
            e2e_p99_s=e2e,
            memory_per_gpu_bytes=int(memory),
            decode_batch=decode_batch,
            feasible=feasible,
            reason=reason,
        )

    # -- strategies ------------------------------------------------------------------------
    def round_robin_groups(self, c: ExecutionConfig) -> tuple[Group, Group, Group]:
        """(encode group, decode group, memory group) for a RoundRobin config."""
        s, t = c.pipeline_stages, c.tensor_parallel
        tp_group, dp_group = Group(s, t), Group(s, 1, dp=t)
        if t == 1 or c.tp_scope == "all":
            return tp_group, tp_group, tp_group
        if c.tp_scope == "encode":
            return tp_group, dp_group, Group(s, 1)
        return dp_group, tp_group, Group(s, 1)

    def _round_robin(self, c: ExecutionConfig) -> Prediction:
        m, k = self.m, self.costs
        enc, dec, mem_group = self.round_robin_groups(c)
        s, n_d, b_e, micro = (
            c.pipeline_stages,
            c.decode_steps_per_encode,
            c.encode_batch,
            c.micro_batches,
        )
        b_d = b_e * m.mean_steps / n_d
        t_iter = k.iteration(dec, b_d, m.mean_context, micro)
        enc_lat = k.encode_latency(enc, b_e, m.mean_input)
        t_enc = k.encode_stage(enc, b_e, m.mean_input) if micro >= s else enc_lat
        t_cycle = n_d * t_iter + t_enc
        qps = b_e / t_cycle
        d99 = m.steps_p99
        latency = enc_lat + d99 * t_iter + (d99 / n_d) * t_enc
        memory = (
            k.weights_per_gpu(mem_group, "both")
            + k.kv_per_gpu(dec, self._kv_tokens(b_d) + b_e * m.mean_input)
            + k.activations_per_gpu(enc, b_e * m.mean_input)
        )
        return self._finish(c, qps, latency, latency + t_cycle, memory, b_d)

    def workload_aware_groups(self, c: ExecutionConfig) -> tuple[Group, Group]:
        enc = Group(c.encode_stages, c.encode_tp)
        dec = Group(c.pipeline_stages, c.tensor_parallel, first_gpu=c.encode_gpus)
        return enc, dec

    def _workload_aware(self, c: ExecutionConfig) -> Prediction:
        m, k = self.m, self.costs
        enc, dec = self.workload_aware_groups(c)
        b_e, micro = c.encode_batch, c.micro_batches
        enc_stage = k.encode_stage(enc, b_e, m.mean_input)
        enc_lat = k.encode_latency(enc, b_e, m.mean_input)
        # Each encoder stage sends its own layers' KV: stages x TP links in parallel.
        links = c.encode_stages * min(c.encode_tp, c.tensor_parallel)
        inter = c.gpus_per_replica > self.request.gpus_per_node
        t_kv = k.kv_transfer(b_e, m.mean_input, links, inter)
        lam = b_e / max(enc_stage, t_kv, 1e-12)

        def decode_rate(batch: float) -> float:
            return batch / max(m.mean_steps * k.iteration(dec, batch, m.mean_context, micro), 1e-12)

        batch = float(c.decode_batch)
        if m.mean_steps <= 0:
            qps, t_iter = lam, 0.0
        elif lam >= decode_rate(batch):
            qps = decode_rate(batch)
            t_iter = k.iteration(dec, batch, m.mean_context, micro)
        else:
            batch = _settle(decode_rate, lam, batch)
            qps = lam
            t_iter = k.iteration(dec, batch, m.mean_context, micro)
        latency = enc_lat + t_kv + (m.steps_p99 + 1) * t_iter
        enc_tokens = 2 * b_e * m.mean_input  # the batch being encoded + the one in transfer
        if self.costs.arch.encoder_decoder:
            enc_mem = k.weights_per_gpu(enc, "encode") + k.activations_per_gpu(enc, enc_tokens)
        else:
            enc_mem = (
                k.weights_per_gpu(enc, "encode")
                + k.kv_per_gpu(enc, enc_tokens, "encode")
                + k.activations_per_gpu(enc, enc_tokens / 2)
            )
        dec_mem = (
            k.weights_per_gpu(dec, "decode")
            + k.kv_per_gpu(dec, self._kv_tokens(float(c.decode_batch)) + b_e * m.mean_input)
            + k.activations_per_gpu(dec, c.decode_batch)
        )
        return self._finish(c, qps, latency, latency + enc_stage, max(enc_mem, dec_mem), batch)

    def _static(self, c: ExecutionConfig) -> Prediction:
        m, k = self.m, self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = c.encode_batch, c.micro_batches
        in_max = float(m.input.expected_max(b))
        stage = k.encode_stage(g, b / micro, in_max)
        chain, _ = k.encode_p2p(g, b / micro, in_max)
        t_enc = _pass_time(stage, chain, micro, g.stages)
        steps = m.expected_max_steps(b)
        t_iter = k.iteration(g, b, m.mean_input + steps / 2, micro)
        t_batch = t_enc + steps * t_iter
        latency = t_enc + m.steps_p99 * t_iter
        memory = (
            k.weights_per_gpu(g, "both")
            + k.kv_per_gpu(g, b * (in_max + m.max_output))
            + k.activations_per_gpu(g, b / micro * in_max)
        )
        # A caller waits for the batch in flight, then for its own batch to end (static
        # batching returns a batch when its longest output ends).
        e2e = t_batch + t_enc + max(m.steps_p99, steps) * t_iter
        return self._finish(c, b / t_batch, latency, e2e, memory, float(b))

    def _continuous(self, c: ExecutionConfig) -> Prediction:
        m, k = self.m, self.costs
        g = Group(c.pipeline_stages, c.tensor_parallel)
        b, micro = float(c.decode_batch), c.micro_batches
        iters = m.mean_steps + 1.0  # the prefill iteration, then the decode steps
        joins = b / iters
        t_iter = k.mixed_iteration(g, b, m.mean_context, joins, m.mean_input, micro)
        qps = b / (iters * t_iter)
        latency = (m.steps_p99 + 1.0) * t_iter
        memory = (
            k.weights_per_gpu(g, "both")
            + k.kv_per_gpu(g, self._kv_tokens(b))
            + k.activations_per_gpu(g, joins / micro * m.mean_input + b / micro)
        )
        return self._finish(c, qps, latency, latency + t_iter, memory, b)


def _settle(rate: Callable[[float], float], target: float, cap: float) -> float:
    """The batch ``b`` in (0, cap] where ``rate(b) == target`` (``rate`` increasing,
    ``rate(cap) > target``): regula falsi with the Illinois step, to 0.1 % of ``cap``."""
    lo, f_lo = 0.0, -target
    hi, f_hi = cap, rate(cap) - target
    side = 0
    for _ in range(40):
        if hi - lo <= 1e-3 * cap:
            break
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        mid = min(max(mid, lo + 1e-6 * cap), hi - 1e-6 * cap)
        f_mid = rate(mid) - target
        if f_mid < 0:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi /= 2
            side = -1
        else:
            hi, f_hi = mid, f_mid
            if side == 1:
                f_lo /= 2
            side = 1
        if abs(f_mid) <= 1e-6 * target:
            return mid
    return hi


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
