"""On vLLM a prompt's prefill rides in the running batch's decode step: a RoundRobin
cycle is its N_D decode steps plus the encoding's work, not a step more; on the own
engine the encoding is a step of its own. Both simulator modes agree."""

from __future__ import annotations

import numpy as np
import pytest
from planner_builders import config, request, simulator

from exegpt.planner.events import EventSimulator
from exegpt.planner.plan import PlanRequest

LLAMA = "llama-2-7b"
RR = config("RoundRobin", encode_batch=8, decode_steps_per_encode=4)


def _request(engine: str) -> PlanRequest:
    return request(LLAMA, gpus=1, workload="S", engine=engine)


def _cycle_parts(engine: str) -> tuple[float, float, float]:
    """(throughput, decode iteration, whole encoding pass) of RR as priced."""
    sim = simulator(_request(engine))
    m, k = sim.m, sim.costs
    enc, dec, _ = sim.round_robin_groups(RR)
    b_d = RR.encode_batch * m.mean_steps / RR.decode_steps_per_encode
    t_iter = k.iteration(dec, b_d, m.mean_context, 1)
    lengths, weights = sim.prefill.expected(RR.encode_batch)
    chunks = sim.engine.prefill_steps(RR.encode_batch * m.mean_input)
    _, t_enc = k.encode_pass(enc, RR.encode_batch, lengths, weights, 1, chunks)
    return sim.evaluate(RR).throughput_qps, t_iter, t_enc


def test_round_robin_on_vllm_packs_its_encoding_into_a_decode_step() -> None:
    qps, t_iter, t_enc = _cycle_parts("vLLM")
    k = simulator(_request("vLLM")).costs
    floor = k.step_floor(simulator(_request("vLLM")).round_robin_groups(RR)[0])
    cycle = RR.decode_steps_per_encode * t_iter + (t_enc - floor)
    assert qps == pytest.approx(RR.encode_batch / cycle)


def test_round_robin_on_the_own_engine_encodes_in_a_step_of_its_own() -> None:
    qps, t_iter, t_enc = _cycle_parts("ExeGPT")
    cycle = RR.decode_steps_per_encode * t_iter + t_enc
    assert qps == pytest.approx(RR.encode_batch / cycle)


@pytest.mark.parametrize("engine", ["vLLM", "ExeGPT"])
def test_the_event_mode_prices_the_cycle_as_the_analytic_mode(engine: str) -> None:
    # an encoding every step: the step's floor is a large share of the cycle (on vLLM,
    # a separate encoding step would be 17 % slower)
    every_step = config("RoundRobin", encode_batch=2, decode_steps_per_encode=1)
    req = _request(engine)
    analytic = simulator(req).evaluate(every_step)
    events = EventSimulator(req, simulator(req).profile).run(every_step, np.random.default_rng(0))
    assert events.throughput_qps == pytest.approx(analytic.throughput_qps, rel=0.05)
