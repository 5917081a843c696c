"""Per-stage step times and per-GPU memory, from a profile: the cost model shared by
the analytic simulator and the discrete-event simulator.

A *group* is a set of GPUs running a contiguous range of layers as a pipeline of
``stages`` stages, each stage ``tp`` GPUs wide. Layers are split as evenly as
possible; the slowest stage (the one with the most layers, plus the LM head on the
last stage) sets the pipeline's pace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .architecture import DTYPE_BYTES, Architecture, Dtype
from .hardware import GpuType
from .pipeline import fill_drain, steady
from .profile import Profile


@dataclass(frozen=True)
class Group:
    """A pipeline of ``stages`` stages of ``tp`` GPUs; ``dp`` > 1 means the phase runs
    data-parallel copies inside each stage instead of TP (partial tensor parallelism:
    the stage holds unsharded weights, and this phase splits the batch ``dp`` ways)."""

    stages: int
    tp: int
    dp: int = 1
    first_gpu: int = 0

    @property
    def gpus(self) -> int:
        return self.stages * self.tp * self.dp


def _per_copy(batch: float, copies: int) -> float:
    """The batch of the busiest of ``copies`` data-parallel copies: at least one query
    (a step never costs less than running one sequence)."""
    return max(batch / copies, 1.0)


class CostModel:
    """Times of encode and decode steps for groups of GPUs, and memory per GPU."""

    def __init__(
        self,
        profile: Profile,
        gpu: GpuType,
        gpus_per_node: int,
        dtype: Dtype = "float16",
        overlapped_steps: bool = False,
    ) -> None:
        self.profile = profile
        self.overlapped_steps = overlapped_steps
        self.arch: Architecture = profile.architecture
        self.gpu = gpu
        self.gpus_per_node = gpus_per_node
        self.elem = DTYPE_BYTES[dtype]
        self.hidden = self.arch.hidden_size
        self.comm = profile.comm
        self.mem = profile.memory
        # Plain-Python evaluators and memo tables: the search asks for the same
        # (group, batch) points many times.
        self._enc = {tp: t.encode.fn() for tp, t in profile.tensor_parallel.items()}
        self._dec = {tp: t.decode.fn() for tp, t in profile.tensor_parallel.items()}
        self._head = {tp: t.head.fn() for tp, t in profile.tensor_parallel.items()}
        self._ar = {tp: c.fn() for tp, c in profile.comm.all_reduce.items()}
        self._p2p = (profile.comm.send_recv_intra.fn(), profile.comm.send_recv_inter.fn())
        engine = profile.engine
        self._engine = engine.step.fn() if engine is not None else None
        self._join = engine.join_s if engine is not None else 0.0
        self._memo: dict[tuple[object, ...], float] = {}
        self._boundaries: dict[Group, tuple[int, int]] = {}

    # -- layers -------------------------------------------------------------------------
    @staticmethod
    def max_layers(layers: int, stages: int) -> int:
        return math.ceil(layers / stages)

    def _inter_node_boundaries(self, group: Group) -> tuple[int, int]:
        """(intra-node, inter-node) stage boundaries of the group."""
        known = self._boundaries.get(group)
        if known is not None:
            return known
        width = group.tp * group.dp
        inter = 0
        for k in range(1, group.stages):
            a = group.first_gpu + k * width - 1
            b = a + 1
            if a // self.gpus_per_node != b // self.gpus_per_node:
                inter += 1
        out = (group.stages - 1 - inter, inter)
        self._boundaries[group] = out
        return out

    def _p2p_chain(self, group: Group, nbytes: float) -> tuple[float, float]:
        """(sum over boundaries, worst boundary) send/recv time of ``nbytes``."""
        intra, inter = self._inter_node_boundaries(group)
        t_intra = self._p2p[0](nbytes) if intra else 0.0
        t_inter = self._p2p[1](nbytes) if inter else 0.0
        return intra * t_intra + inter * t_inter, max(t_intra, t_inter)

    def engine_step(self, sequences: float) -> float:
        """What serving adds to a step of ``sequences`` on one stage, beyond the model's
        step (the profile's ``engine`` curve; 0 for a profile without one)."""
        return self._engine(sequences) if self._engine is not None else 0.0

    # -- encode ----------------------------------------------------------------------------
    def encode_stage(self, group: Group, batch: float, length: float) -> float:
        """Busy time of the slowest stage encoding ``batch`` queries of ``length`` tokens,
        with what admitting them costs the server (the profile's ``engine.join_s`` per
        query of the busiest copy, spread over the stages: paid once per query)."""
        if batch <= 0:
            return 0.0
        admission = self._join * _per_copy(batch, group.dp) / group.stages
        return self._encode_model_stage(group, batch, length) + admission

    def _encode_model_stage(self, group: Group, batch: float, length: float) -> float:
        """``encode_stage`` without the queries' admission."""
        key = ("e", group, batch, length)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        b = _per_copy(batch, group.dp)
        layers = self.max_layers(self.arch.encode_layers, group.stages)
        t = layers * self._enc[group.tp](b, length)
        if group.tp > 1:
            t += 2 * layers * self._ar[group.tp](b * length * self.hidden * self.elem)
        if not self.arch.encoder_decoder:
            t += self._head[group.tp](b)  # the first output token's logits
        t += self.engine_step(b)
        self._memo[key] = t
        return t

    def encode_p2p(self, group: Group, batch: float, length: float) -> tuple[float, float]:
        return self._p2p_chain(group, batch / group.dp * length * self.hidden * self.elem)

    def encode_latency(self, group: Group, batch: float, length: float) -> float:
        """Time for one encode batch to pass through the whole pipeline."""
        stage = self.encode_stage(group, batch, length)
        chain, _ = self.encode_p2p(group, batch, length)
        return group.stages * stage + chain

    def prefill_stage(
        self, group: Group, batch: float, lengths: Sequence[float], weights: Sequence[float]
    ) -> float:
        """Busy time of the slowest stage encoding ``batch`` prompts priced at
        ``lengths`` (``prefill.PrefillLengths``): the weighted mean of their costs."""
        if len(lengths) == 1:
            return self.encode_stage(group, batch, lengths[0])
        pairs = zip(lengths, weights, strict=True)
        return sum(w * self.encode_stage(group, batch, x) for x, w in pairs)

    def encode_pass(
        self,
        group: Group,
        batch: float,
        lengths: Sequence[float],
        weights: Sequence[float],
        micro: int,
        chunks: int = 1,
    ) -> tuple[float, float]:
        """(period, latency) of encoding ``batch`` prompts in ``micro`` micro-batches,
        in ``chunks`` steps (chunked prefill): how long the pipeline is taken, and how
        long until the last prompt's first token."""
        if batch <= 0:
            return 0.0, 0.0
        mb = batch / (micro * chunks)
        stage = self.prefill_stage(group, mb, lengths, weights)
        mean_length = sum(x * w for x, w in zip(lengths, weights, strict=True))
        chain, _ = self.encode_p2p(group, mb, mean_length)
        latency = fill_drain(stage, chain, micro, group.stages)
        period = steady(stage, chain, micro, group.stages) if self.overlapped_steps else latency
        if chunks == 1:
            return period, latency
        return chunks * period, (chunks - 1) * period + latency

    # -- decode ----------------------------------------------------------------------------
    def decode_stage(self, group: Group, batch: float, context: float) -> float:
        """Busy time of the slowest stage for one decode step of ``batch`` sequences."""
        if batch <= 0:
            return 0.0
        key = ("d", group, batch, context)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        b = _per_copy(batch, group.dp)
        layers = self.max_layers(self.arch.decode_layers, group.stages)
        t = layers * self._dec[group.tp](b, context)
        if group.tp > 1:
            t += 2 * layers * self._ar[group.tp](b * self.hidden * self.elem)
        t += self._head[group.tp](b)
        t += self.engine_step(b)
        self._memo[key] = t
        return t

    def decode_p2p(self, group: Group, batch: float) -> tuple[float, float]:
        return self._p2p_chain(group, batch / group.dp * self.hidden * self.elem)

    def iteration(self, group: Group, batch: float, context: float, micro: int) -> float:
        """One decode iteration of the whole batch split into ``micro`` micro-batches
        (``pipeline.py``): the pipeline's fill and drain, or with overlapped steps
        stage-bound when the pipeline is full, latency-bound when it is not."""
        if batch <= 0:
            return 0.0
        key = ("i", group, batch, context, micro)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        mb = batch / micro
        stage = self.decode_stage(group, mb, context)
        chain, _ = self.decode_p2p(group, mb)
        out = self.step(stage, chain, micro, group.stages)
        self._memo[key] = out
        return out

    def step(self, stage: float, chain: float, micro: int, stages: int) -> float:
        """Time a step of ``micro`` micro-batches takes the pipeline (``pipeline.py``)."""
        if self.overlapped_steps:
            return steady(stage, chain, micro, stages)
        return fill_drain(stage, chain, micro, stages)

    def step_floor(self, group: Group) -> float:
        """Busy time of the slowest stage for a step that carries almost nothing (one
        one-token prompt): what a step costs whatever it carries (the layers' fixed
        work, the LM head's and the engine's per-step costs), not the prompt's admission
        (``engine.join_s``), which only a step that takes a query in pays."""
        return self._encode_model_stage(group, 1.0, 1.0)

    def joined_prefill(self, group: Group, stage: float) -> float:
        """A stage's busy time ``stage`` encoding prompts, when the engine packs them
        into a step that runs anyway (vLLM: a prefill joins the running batch's decode
        step): less the step's floor, which that step pays once."""
        return max(stage - self.step_floor(group), 0.0)

    def joined_pass(self, group: Group, latency: float, micro: int) -> float:
        """An encoding pass of ``latency`` seconds (``encode_pass``) packed into steps
        that run anyway: less the floor of a step of ``micro`` micro-batches."""
        return max(latency - self.step(self.step_floor(group), 0.0, micro, group.stages), 0.0)

    def mixed_iteration(
        self, group: Group, batch: float, context: float, joins: float, length: float, micro: int
    ) -> float:
        """An iteration-level (continuous batching) step: ``batch`` decodes plus the
        prefill of ``joins`` new queries of ``length`` tokens, in the same iteration.

        The prompts that join one step are encoded together in it (vLLM packs their
        tokens into the step), priced as the profile's encoding of that many prompts at
        once; a fraction of a join (the analytic mode's mean rate, below one a copy) is
        that fraction of one prompt's encoding. Either way less what a step costs
        whatever it carries, when decodes run too (``joined_prefill``)."""
        if batch <= 0 and joins <= 0:
            return 0.0
        mb, mj = batch / micro, joins / micro
        stage = self.decode_stage(group, mb, context)
        if mj > 0:
            per_copy = mj / group.dp
            share, together = (per_copy, group.dp) if per_copy <= 1.0 else (1.0, mj)
            prompts = self.encode_stage(group, together, length)
            stage += share * (self.joined_prefill(group, prompts) if mb > 0 else prompts)
        chain, _ = self._p2p_chain(group, (mb + mj * length) / group.dp * self.hidden * self.elem)
        return self.step(stage, chain, micro, group.stages)

    # -- KV transfer (WorkloadAware) ---------------------------------------------------
    def kv_bytes_per_query(self, input_length: float) -> float:
        """Bytes an encoded query hands to the decoders: the prompt's KV cache of every
        layer (decoder-only), or the encoder's output, from which the decoders project
        their cross-attention K/V (encoder-decoder)."""
        if self.arch.encoder_decoder:
            return input_length * self.hidden * self.elem
        return input_length * self.mem.kv_bytes_per_token * self.arch.decode_layers

    def kv_transfer(self, batch: float, input_length: float, links: int, inter_node: bool) -> float:
        nbytes = batch * self.kv_bytes_per_query(input_length) / max(links, 1)
        return self.comm.send_recv_at(nbytes, inter_node)

    # -- memory ------------------------------------------------------------------------------
    def weights_per_gpu(self, group: Group, phase: str) -> float:
        """Weight bytes on one GPU of the group's slowest stage.

        ``phase``: "encode" (encoder layers for T5, all layers for decoder-only),
        "decode" (decoder layers), or "both" (RoundRobin: every GPU holds every phase
        of its layers)."""
        m = self.mem
        if phase == "encode":
            per_layer = m.encode_layer_weight_bytes
            layers = self.arch.encode_layers
        elif phase == "decode":
            per_layer = m.decode_layer_weight_bytes
            layers = self.arch.decode_layers
        else:
            per_layer = m.decode_layer_weight_bytes
            layers = self.arch.decode_layers
        w = self.max_layers(layers, group.stages) * per_layer
        if phase == "both" and self.arch.encoder_decoder:
            w += (
                self.max_layers(self.arch.encode_layers, group.stages) * m.encode_layer_weight_bytes
            )
        # Embedding on the first stage and LM head on the last; one stage with both.
        emb = m.embedding_bytes if group.stages == 1 else m.embedding_bytes / 2
        return (w + emb) / group.tp

    def kv_per_gpu(self, group: Group, tokens: float, phase: str = "decode") -> float:
        layers = self.arch.encode_layers if phase == "encode" else self.arch.decode_layers
        return (
            tokens
            * self.mem.kv_bytes_per_token
            * self.max_layers(layers, group.stages)
            / (group.tp * group.dp)
        )

    def activations_per_gpu(self, group: Group, tokens_in_flight: float) -> float:
        return tokens_in_flight * self.mem.activation_bytes_per_token / (group.tp * group.dp)
