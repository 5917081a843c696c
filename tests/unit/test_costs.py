"""The cost model: per-stage step times and per-GPU memory of groups of GPUs."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from planner_builders import cost_model, profile_for

from exegpt.planner.architecture import get_architecture
from exegpt.planner.costs import CostModel, Group
from exegpt.planner.hardware import get_gpu
from exegpt.planner.profile import Curve, EngineOverhead

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
LENGTHS = [1, 16, 64, 128, 256, 512, 1024, 2048]
GROUPS = [Group(1, 1), Group(2, 2), Group(4, 1), Group(1, 4), Group(2, 1, dp=2)]


def _non_decreasing(values: list[float]) -> bool:
    return all(b >= a * (1 - 1e-12) for a, b in pairwise(values))


def _strictly_decreasing(values: list[float]) -> bool:
    return all(b < a for a, b in pairwise(values))


def _without_all_reduce(model: str) -> CostModel:
    """The same profile with every all-reduce taking no time."""
    profile = profile_for(model)
    free = {
        tp: Curve(x=list(c.x), seconds=[0.0] * len(c.seconds))
        for tp, c in profile.comm.all_reduce.items()
    }
    comm = profile.comm.model_copy(update={"all_reduce": free})
    return CostModel(profile.model_copy(update={"comm": comm}), get_gpu("nvidia-a100-80gb"), 8)


# -- step times -----------------------------------------------------------------------------
@pytest.mark.parametrize("group", GROUPS, ids=str)
@pytest.mark.parametrize("model", ["opt-13b", "t5-11b"])
def test_decode_stage_grows_with_batch_and_context(model: str, group: Group) -> None:
    k = cost_model(model)
    for context in (64, 512, 2048):
        assert _non_decreasing([k.decode_stage(group, b, context) for b in BATCHES])
    for batch in (1, 32, 512):
        assert _non_decreasing([k.decode_stage(group, batch, c) for c in LENGTHS])
    assert k.decode_stage(group, 512, 2048) > k.decode_stage(group, 1, 64)


@pytest.mark.parametrize("group", GROUPS, ids=str)
@pytest.mark.parametrize("model", ["opt-13b", "t5-11b"])
def test_encode_stage_grows_with_batch_and_length(model: str, group: Group) -> None:
    k = cost_model(model)
    for length in (16, 256, 1024):
        assert _non_decreasing([k.encode_stage(group, b, length) for b in BATCHES])
    for batch in (1, 8, 64):
        assert _non_decreasing([k.encode_stage(group, batch, n) for n in LENGTHS])
    assert k.encode_stage(group, 64, 1024) > 10 * k.encode_stage(group, 1, 16)


def test_encode_stage_of_a_batch_smaller_than_its_copies_grows_with_length() -> None:
    # One query on two data-parallel copies: the busy copy runs one whole sequence.
    k = cost_model("opt-13b")
    group = Group(2, 1, dp=2)
    assert _non_decreasing([k.encode_stage(group, 1, n) for n in (1, 16, 32, 64, 128)])


@pytest.mark.parametrize("dp", [2, 4])
def test_a_data_parallel_copy_never_costs_less_than_one_query(dp: int) -> None:
    k = cost_model("opt-13b")
    for length in (16, 32, 512):
        assert k.encode_stage(Group(2, 1, dp=dp), 1, length) == k.encode_stage(
            Group(2, 1), 1, length
        )
        assert k.decode_stage(Group(2, 1, dp=dp), 1, length) == k.decode_stage(
            Group(2, 1), 1, length
        )


def test_empty_batches_cost_nothing() -> None:
    k = cost_model()
    assert k.encode_stage(Group(1, 1), 0, 512) == 0.0
    assert k.decode_stage(Group(1, 1), 0, 512) == 0.0
    assert k.iteration(Group(2, 1), 0, 512, 2) == 0.0


@pytest.mark.parametrize("tp", [1, 2])
def test_more_stages_take_less_time_per_stage(tp: int) -> None:
    k = cost_model("opt-13b")
    stages = [1, 2, 4, 8]
    assert _strictly_decreasing([k.encode_stage(Group(s, tp), 8, 512) for s in stages])
    assert _strictly_decreasing([k.decode_stage(Group(s, tp), 64, 512) for s in stages])


def test_tensor_parallelism_speeds_up_a_compute_bound_encoding() -> None:
    k = cost_model("opt-13b")
    times = [k.encode_stage(Group(1, tp), 16, 512) for tp in (1, 2, 4, 8)]
    assert _strictly_decreasing(times)
    assert times[0] / times[1] > 1.5


@pytest.mark.parametrize("tp", [2, 4, 8])
def test_tensor_parallel_steps_pay_two_all_reduces_per_layer(tp: int) -> None:
    arch = get_architecture("opt-13b")
    k, free = cost_model("opt-13b"), _without_all_reduce("opt-13b")
    g = Group(1, tp)
    batch, length, elem = 4.0, 256.0, 2
    ar = profile_for("opt-13b").comm.all_reduce_at
    enc_extra = k.encode_stage(g, batch, length) - free.encode_stage(g, batch, length)
    expected = 2 * arch.num_layers * ar(tp, batch * length * arch.hidden_size * elem)
    assert enc_extra > 0
    assert enc_extra == pytest.approx(expected, rel=1e-6)
    dec_extra = k.decode_stage(g, batch, length) - free.decode_stage(g, batch, length)
    assert dec_extra == pytest.approx(
        2 * arch.num_layers * ar(tp, batch * arch.hidden_size * elem), rel=1e-6
    )
    assert dec_extra > 0


def test_tensor_parallel_one_has_no_all_reduce() -> None:
    k, free = cost_model("opt-13b"), _without_all_reduce("opt-13b")
    g = Group(2, 1, dp=2)  # partial TP: data-parallel copies, no all-reduce either
    for group in (Group(1, 1), g):
        assert k.encode_stage(group, 8, 256) == free.encode_stage(group, 8, 256)
        assert k.decode_stage(group, 8, 256) == free.decode_stage(group, 8, 256)


def test_data_parallel_copies_split_the_batch() -> None:
    k = cost_model("opt-13b")
    assert k.decode_stage(Group(2, 1, dp=2), 64, 512) == k.decode_stage(Group(2, 1), 32, 512)
    assert k.encode_stage(Group(1, 1, dp=4), 16, 256) == k.encode_stage(Group(1, 1), 4, 256)


def test_pipeline_boundaries_across_nodes_are_slower() -> None:
    # Two stages of 8 GPUs: on 8-GPU nodes the boundary crosses the slower inter-node link.
    across, within = cost_model("opt-13b", gpus_per_node=8), cost_model("opt-13b", gpus_per_node=16)
    g = Group(2, 8)
    assert across.encode_latency(g, 8, 512) > within.encode_latency(g, 8, 512)
    assert across.encode_stage(g, 8, 512) == within.encode_stage(g, 8, 512)


def test_iteration_is_stage_bound_with_a_full_pipeline_and_latency_bound_without() -> None:
    k = cost_model("opt-13b")
    g = Group(4, 1)
    full = k.iteration(g, 256, 512, micro=8)
    assert full >= 8 * k.decode_stage(g, 32, 512)
    single = k.iteration(g, 256, 512, micro=1)
    assert single >= 4 * k.decode_stage(g, 256, 512)
    # Micro-batches keep every stage busy: the batch takes less time than one pass of it.
    assert full < single


def test_mixed_iteration_without_joins_is_a_decode_iteration() -> None:
    k = cost_model("opt-13b")
    g = Group(2, 2)
    assert k.mixed_iteration(g, 64, 512, 0, 256, 2) == k.iteration(g, 64, 512, 2)
    assert k.mixed_iteration(g, 64, 512, 4, 256, 2) > k.iteration(g, 64, 512, 2)


def test_a_prompt_joining_running_decodes_adds_its_work_not_a_second_step() -> None:
    k = cost_model("opt-13b")
    g = Group(1, 1)
    alone = k.mixed_iteration(g, 0, 0, 1, 256, 1)
    assert alone == pytest.approx(k.encode_stage(g, 1, 256))  # nothing running: a whole step
    joined = k.mixed_iteration(g, 64, 512, 1, 256, 1) - k.iteration(g, 64, 512, 1)
    assert joined == pytest.approx(k.encode_stage(g, 1, 256) - k.step_floor(g))
    assert 0 < k.step_floor(g) < k.encode_stage(g, 1, 256)
    # a pass packed into running steps never costs less than nothing
    assert k.joined_pass(g, 0.5 * k.step_floor(g), 1) == 0.0


def test_prompts_joining_one_step_are_encoded_together() -> None:
    k = cost_model("opt-13b")
    g = Group(1, 1)
    decode = k.iteration(g, 64, 512, 1)
    eight = k.mixed_iteration(g, 64, 512, 8, 256, 1) - decode
    assert eight == pytest.approx(k.encode_stage(g, 8, 256) - k.step_floor(g))
    # one encoding of eight prompts (the step's floor paid once), not eight of one
    one = k.mixed_iteration(g, 64, 512, 1, 256, 1) - decode
    assert one == pytest.approx(k.encode_stage(g, 1, 256) - k.step_floor(g))
    assert eight != pytest.approx(8 * one)
    # nothing running: the eight prompts' step
    assert k.mixed_iteration(g, 0, 0, 8, 256, 1) == pytest.approx(k.encode_stage(g, 8, 256))
    # a fraction of a join (the analytic mode's mean rate) is that fraction of one,
    # meeting the batched price at one join a copy
    half = k.mixed_iteration(g, 64, 512, 0.5, 256, 1) - decode
    assert half == pytest.approx(0.5 * one)
    just_over = k.mixed_iteration(g, 64, 512, 1.0 + 1e-9, 256, 1) - decode
    assert just_over == pytest.approx(one, rel=1e-6)


# -- memory --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["opt-13b", "llama-2-7b", "t5-11b"])
def test_one_gpu_holds_every_weight(model: str) -> None:
    k = cost_model(model)
    assert k.weights_per_gpu(Group(1, 1), "both") == get_architecture(model).weight_bytes()


@pytest.mark.parametrize("model", ["opt-13b", "t5-11b"])
def test_weights_per_gpu_shrink_with_tensor_parallelism_and_stages(model: str) -> None:
    k = cost_model(model)
    for s in (1, 2, 4):
        assert _strictly_decreasing([k.weights_per_gpu(Group(s, t), "both") for t in (1, 2, 4, 8)])
    for t in (1, 2, 4):
        assert _strictly_decreasing([k.weights_per_gpu(Group(s, t), "both") for s in (1, 2, 4, 8)])
    # TP shards everything a stage holds.
    assert k.weights_per_gpu(Group(2, 4), "both") == pytest.approx(
        k.weights_per_gpu(Group(2, 1), "both") / 4
    )


def test_kv_per_gpu_shrinks_with_tensor_parallelism_and_stages() -> None:
    k = cost_model("opt-13b")
    tokens = 100_000.0
    assert _strictly_decreasing([k.kv_per_gpu(Group(1, t), tokens) for t in (1, 2, 4, 8)])
    assert _strictly_decreasing([k.kv_per_gpu(Group(s, 1), tokens) for s in (1, 2, 4, 8)])
    per_token_layer = profile_for("opt-13b").memory.kv_bytes_per_token
    assert k.kv_per_gpu(Group(1, 1), tokens) == tokens * per_token_layer * 40


@pytest.mark.parametrize("dp", [2, 4])
def test_partial_tensor_parallel_groups_hold_unsharded_weights(dp: int) -> None:
    k = cost_model("opt-13b")
    for s in (1, 2, 4):
        unsharded = k.weights_per_gpu(Group(s, 1), "both")
        assert k.weights_per_gpu(Group(s, 1, dp=dp), "both") == unsharded
        assert k.weights_per_gpu(Group(s, dp), "both") == pytest.approx(unsharded / dp)
        # ... while the KV cache is split across the copies like across TP shards.
        assert k.kv_per_gpu(Group(s, 1, dp=dp), 1e5) == pytest.approx(
            k.kv_per_gpu(Group(s, dp), 1e5)
        )


def test_encoder_decoder_phases_hold_their_own_layers() -> None:
    k = cost_model("t5-11b")
    mem = profile_for("t5-11b").memory
    g = Group(1, 1)
    assert (
        k.weights_per_gpu(g, "encode") == 24 * mem.encode_layer_weight_bytes + mem.embedding_bytes
    )
    assert (
        k.weights_per_gpu(g, "decode") == 24 * mem.decode_layer_weight_bytes + mem.embedding_bytes
    )
    both = k.weights_per_gpu(g, "both")
    assert both < k.weights_per_gpu(g, "encode") + k.weights_per_gpu(g, "decode")
    assert math.isclose(
        both,
        24 * (mem.encode_layer_weight_bytes + mem.decode_layer_weight_bytes) + mem.embedding_bytes,
    )


def test_kv_transfer_grows_with_batch_and_input_and_shrinks_with_links() -> None:
    k = cost_model("opt-13b")
    assert k.kv_transfer(8, 512, 1, False) > k.kv_transfer(4, 512, 1, False)
    assert k.kv_transfer(8, 512, 1, False) > k.kv_transfer(8, 128, 1, False)
    assert k.kv_transfer(8, 512, 4, False) < k.kv_transfer(8, 512, 1, False)
    assert k.kv_transfer(8, 512, 1, True) > k.kv_transfer(8, 512, 1, False)


def test_the_engines_time_is_charged_once_per_step_and_stage() -> None:
    profile = profile_for("opt-13b")
    assert profile.engine is None  # an analytic profile: no engine time
    engine = EngineOverhead(step=Curve(x=[1.0, 64.0], seconds=[1e-4, 8e-4]))
    k = CostModel(profile, get_gpu("nvidia-a100-80gb"), 8)
    with_engine = CostModel(
        profile.model_copy(update={"engine": engine}), get_gpu("nvidia-a100-80gb"), 8
    )
    assert k.engine_step(8) == 0.0
    assert with_engine.engine_step(1) == pytest.approx(1e-4)
    assert with_engine.engine_step(32.5) == pytest.approx(4.5e-4)  # linear between points
    one = Group(1, 1)
    assert with_engine.decode_stage(one, 8, 512) == pytest.approx(
        k.decode_stage(one, 8, 512) + with_engine.engine_step(8)
    )
    assert with_engine.encode_stage(one, 4, 128) == pytest.approx(
        k.encode_stage(one, 4, 128) + with_engine.engine_step(4)
    )
    # every stage of a pipeline handles the step: a 4-stage encoding pays it 4 times
    four = Group(4, 1)
    assert with_engine.encode_latency(four, 4, 128) == pytest.approx(
        k.encode_latency(four, 4, 128) + 4 * with_engine.engine_step(4)
    )
