"""Static batching as each engine runs it: on vLLM a batch's prompts are packed and
each sequence is freed as it finishes (the decode steps shrink); on the own engine the
batch stays padded and every slot is computed until the longest output ends."""

from __future__ import annotations

import numpy as np
import pytest
from planner_builders import config, profile_for, request, simulator

from exegpt.planner.costs import Group
from exegpt.planner.events import EventSimulator
from exegpt.planner.plan import PlanRequest
from exegpt.planner.simulator import Simulator
from exegpt.planner.workload import LengthDistribution, Workload

LLAMA = "llama-2-7b"


def _request(engine: str, workload: Workload | str = "S") -> PlanRequest:
    return request(LLAMA, gpus=1, workload=workload, engine=engine)


def _padded_batch_time(sim: Simulator, b: int) -> float:
    """The time of a static batch priced as a fixed padded batch: the prompts padded to
    the expected longest, every slot decoded until the expected longest output ends."""
    m, k, g = sim.m, sim.costs, Group(1, 1)
    lengths, weights = sim.padded_prefill.expected(b)
    _, t_enc = k.encode_pass(g, b, lengths, weights, 1)
    steps = m.expected_max_steps(b)
    return t_enc + steps * k.iteration(g, b, m.mean_input + steps / 2, 1)


@pytest.mark.parametrize("task", ["S", "C1", "G"])
@pytest.mark.parametrize("b", [8, 32])
def test_a_static_batch_on_vllm_takes_less_than_a_padded_fixed_batch(task: str, b: int) -> None:
    sim = simulator(_request("vLLM", task))
    predicted = sim.evaluate(config("Static", encode_batch=b))
    assert predicted.feasible
    padded_qps = b / _padded_batch_time(sim, b)
    assert predicted.throughput_qps > padded_qps
    # fewer sequences per decode step than the batch (the finished ones have left)
    assert 1.0 < predicted.decode_batch < 0.8 * b


def test_static_on_vllm_equals_a_direct_computation_from_the_output_distribution() -> None:
    outputs = np.array([0.2, 0.3, 0.1, 0.2, 0.2])  # 1..5 tokens: 0..4 decode steps
    workload = Workload(input=LengthDistribution.fixed(64), output=LengthDistribution(outputs))
    sim = simulator(_request("vLLM", workload))
    b, g, k = 3, Group(1, 1), sim.costs
    predicted = sim.evaluate(config("Static", encode_batch=b))

    _, t_enc = k.encode_pass(g, b, (64.0,), (1.0,), 1)  # packed: each prompt's 64 tokens
    t_dec = t_lat = 0.0
    for t in range(1, 5):
        alive = float(outputs[t:].sum())  # P(output >= t + 1) = P(decode steps >= t)
        runs = 1.0 - (1.0 - alive) ** b  # the batch runs step t
        step = k.iteration(g, b * alive / runs, 64.0 + t, 1)
        t_dec += runs * step
        t_lat += step  # the p99 query (5 tokens) runs every step
    assert predicted.throughput_qps == pytest.approx(b / (t_enc + t_dec), rel=1e-12)
    assert predicted.latency_s == pytest.approx(t_enc + t_lat, rel=1e-12)
    assert predicted.e2e_p99_s == pytest.approx(t_enc + t_dec + t_enc + t_lat, rel=1e-12)


@pytest.mark.parametrize("task", ["S", "G"])
def test_static_on_the_own_engine_is_still_a_padded_fixed_batch(task: str) -> None:
    sim = simulator(_request("ExeGPT", task))
    m, k, g, b = sim.m, sim.costs, Group(1, 1), 16
    lengths, weights = sim.padded_prefill.expected(b)
    _, t_enc = k.encode_pass(g, b, lengths, weights, 1)
    steps = m.expected_max_steps(b)
    t_iter = k.iteration(g, b, m.mean_input + steps / 2, 1)
    t_batch = t_enc + steps * t_iter
    predicted = sim.evaluate(config("Static", encode_batch=b))
    assert predicted.throughput_qps == b / t_batch
    assert predicted.latency_s == t_enc + m.steps_p99 * t_iter
    assert predicted.e2e_p99_s == t_batch + t_enc + max(m.steps_p99, steps) * t_iter
    assert predicted.decode_batch == float(b)
    expected_memory = (
        k.weights_per_gpu(g, "both")
        + k.kv_per_gpu(g, sim.kv(config("Static", encode_batch=b), float(b)).tokens)
        + k.activations_per_gpu(g, b / 1 * lengths[0])
    )
    assert predicted.memory_per_gpu_bytes == int(expected_memory)


@pytest.mark.parametrize("task", ["S", "C1", "G"])
@pytest.mark.parametrize("b", [8, 32])
def test_event_mode_agrees_with_analytic_for_static_on_vllm(task: str, b: int) -> None:
    req = _request("vLLM", task)
    sim = EventSimulator(req, profile_for(LLAMA, req.gpu.name))
    cfg = config("Static", encode_batch=b)
    predicted = sim.analytic.evaluate(cfg)
    for seed in (0, 1):
        measured = sim.run(cfg, np.random.default_rng(seed), queries=2000)
        assert measured.throughput_qps / predicted.throughput_qps - 1 == pytest.approx(0, abs=0.05)
        assert measured.latency_s / predicted.latency_s - 1 == pytest.approx(0, abs=0.10)


def test_on_vllm_each_query_of_a_static_batch_finishes_with_its_own_output() -> None:
    req = _request("vLLM")
    sim = EventSimulator(req, profile_for(LLAMA, req.gpu.name))
    k, g = sim.costs, Group(1, 1)
    cfg = config("Static", encode_batch=2)
    timeline = sim.replay(cfg, [0.0, 0.0, 0.0], [50, 50, 40], [2, 4, 3])
    _, t_enc = k.encode_pass(g, 2, (50.0,), (1.0,), 1)
    first = t_enc + k.iteration(g, 2.0, 51.0, 1)  # both decode their second token
    second = first + k.iteration(g, 1.0, 52.0, 1) + k.iteration(g, 1.0, 53.0, 1)
    assert timeline.done[0] == pytest.approx(first)
    assert timeline.done[1] == pytest.approx(second)
    # the next batch is admitted only when the running one has ended
    assert timeline.admitted[2] == pytest.approx(second)


def test_on_vllm_a_static_batch_takes_only_the_prompts_whose_blocks_are_free() -> None:
    req = _request("vLLM")
    # 3 blocks of 32 tokens: one 50-token prompt and its growth, not two
    sim = EventSimulator(req, profile_for(LLAMA, req.gpu.name), kv_blocks=3)
    timeline = sim.replay(config("Static", encode_batch=2), [0.0, 0.0], [50, 50], [3, 3])
    assert timeline.admitted[1] == pytest.approx(timeline.done[0])
