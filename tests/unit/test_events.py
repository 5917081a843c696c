"""The discrete-event XSimulator: determinism, conservation, and agreement with the
analytic mode on the paper's five tasks."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import get_architecture
from exegpt.planner.events import EventSimulator
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import ExecutionConfig, Plan, PlanRequest
from exegpt.planner.profile import Curve, EngineOverhead, Profile
from exegpt.planner.scheduler import schedule
from exegpt.planner.workload import LengthDistribution, Workload
from exegpt.planner.workload_presets import get_workload


@cache
def _profile(model: str, gpu: str) -> Profile:
    return analytic_profile(get_architecture(model), get_gpu(gpu))


def _request(
    task: str, model: str = "opt-13b", gpus: int = 16, bound: float | None = None
) -> PlanRequest:
    return PlanRequest(
        architecture=get_architecture(model),
        gpu=get_gpu("nvidia-a100-80gb"),
        gpus=gpus,
        workload=get_workload(task),
        latency_bound_s=bound,
    )


@cache
def _plan(task: str, bound: float | None) -> Plan:
    result = schedule(_request(task, bound=bound), _profile("opt-13b", "nvidia-a100-80gb"))
    assert isinstance(result, Plan)
    return result


SEEDS = (0, 1, 2, 3)


@cache
def _agreement(task: str) -> list[tuple[str, float, float]]:
    """(strategy, throughput error, latency error) of the plan and both baselines,
    event mode over analytic, for every seed of ``SEEDS``."""
    plan = _plan(task, None)
    sim = EventSimulator(_request(task), _profile("opt-13b", "nvidia-a100-80gb"))
    candidates = [plan.config] + [c.config for c in plan.baselines.values() if c is not None]
    out = []
    for config in candidates:
        predicted = sim.analytic.evaluate(config)
        for seed in SEEDS:
            measured = sim.run(config, np.random.default_rng(seed))
            out.append(
                (
                    config.strategy,
                    measured.throughput_qps / predicted.throughput_qps - 1,
                    measured.latency_s / predicted.latency_s - 1,
                )
            )
    return out


@pytest.mark.parametrize("task", ["S", "T", "G", "C1", "C2"])
def test_event_mode_agrees_with_analytic_throughput_on_every_seed(task: str) -> None:
    for strategy, err, lat_err in _agreement(task):
        assert abs(err) < 0.05, (task, strategy, err)
        assert abs(lat_err) < 0.10, (task, strategy, lat_err)


def test_event_mode_shows_no_one_sided_throughput_bias() -> None:
    """Over tasks and seeds the two modes' throughput differs both ways: a mean signed
    error beyond 1.5 % (e.g. a steady window that counts one batch too many) fails."""
    errors: dict[str, list[float]] = {}
    for task in ("S", "T", "G", "C1", "C2"):
        for strategy, err, _ in _agreement(task):
            errors.setdefault(strategy, []).append(err)
    for strategy, errs in errors.items():
        assert len(errs) >= 2 * len(SEEDS)
        assert abs(float(np.mean(errs))) < 0.015, (strategy, errs)


def test_the_steady_window_does_not_count_the_batch_ending_at_its_start() -> None:
    """Static batches of equal queries end exactly where the next is admitted: the
    window from one admission to a later one holds one batch per batch time."""
    request = PlanRequest(
        architecture=get_architecture("opt-13b"),
        gpu=get_gpu("nvidia-a100-80gb"),
        gpus=1,
        workload=Workload(
            input=LengthDistribution(np.eye(1, 64, 63)[0]),
            output=LengthDistribution(np.eye(1, 16, 15)[0]),
        ),
    )
    sim = EventSimulator(request, _profile("opt-13b", "nvidia-a100-80gb"))
    config = ExecutionConfig(strategy="Static", encode_batch=10)
    measured = sim.run(config, np.random.default_rng(0), queries=200)
    predicted = sim.analytic.evaluate(config)
    # every batch is the same: the two modes agree to the interpolation of the decode
    # cost over the growing context (counting one batch too many would be +6 %)
    assert measured.throughput_qps == pytest.approx(predicted.throughput_qps, rel=2e-3)


def test_event_mode_agrees_for_workload_aware_under_a_bound() -> None:
    request = _request("S", bound=2.0).model_copy(update={"strategy": "WorkloadAware"})
    plan = schedule(request, _profile("opt-13b", "nvidia-a100-80gb"))
    assert isinstance(plan, Plan) and plan.strategy == "WorkloadAware"
    sim = EventSimulator(request, _profile("opt-13b", "nvidia-a100-80gb"))
    measured = sim.run(plan.config, np.random.default_rng(3))
    assert measured.throughput_qps == pytest.approx(plan.predicted.throughput_qps, rel=0.05)
    assert measured.latency_s <= 2.0 * 1.05


def test_event_mode_is_deterministic_for_a_seed() -> None:
    plan = _plan("C1", None)
    sim = EventSimulator(_request("C1"), _profile("opt-13b", "nvidia-a100-80gb"))
    a = sim.run(plan.config, np.random.default_rng(11), queries=500)
    b = sim.run(plan.config, np.random.default_rng(11), queries=500)
    c = sim.run(plan.config, np.random.default_rng(12), queries=500)
    assert a == b
    assert a != c


def test_poisson_arrivals_below_capacity_report_end_to_end_latency() -> None:
    plan = _plan("S", None)
    config = plan.baselines["Continuous"]
    assert config is not None
    sim = EventSimulator(_request("S"), _profile("opt-13b", "nvidia-a100-80gb"))
    rate = 0.5 * config.predicted.throughput_qps
    measured = sim.run(config.config, np.random.default_rng(5), arrival_rate=rate)
    assert measured.completed == measured.queries
    # Below capacity, throughput follows the offered load.
    assert measured.throughput_qps == pytest.approx(rate, rel=0.1)
    assert measured.e2e_p99_s >= measured.latency_s * 0.5


def test_invalid_configuration_is_rejected() -> None:
    sim = EventSimulator(_request("S", gpus=4), _profile("opt-13b", "nvidia-a100-80gb"))
    with pytest.raises(ValueError, match="GPUs"):
        sim.run(ExecutionConfig(strategy="RoundRobin", replicas=8), np.random.default_rng(0))


_small = st.integers(min_value=1, max_value=48)


@settings(max_examples=25, deadline=None)
@given(
    strategy=st.sampled_from(["RoundRobin", "WorkloadAware", "Static", "Continuous"]),
    task=st.sampled_from(["S", "T", "G", "C1", "C2"]),
    b_e=_small,
    b_d=st.integers(min_value=1, max_value=256),
    n_d=st.integers(min_value=1, max_value=16),
    seed=st.integers(min_value=0, max_value=2**16),
    engine=st.sampled_from(["ExeGPT", "vLLM"]),
)
def test_every_sampled_query_completes(
    strategy: str, task: str, b_e: int, b_d: int, n_d: int, seed: int, engine: str
) -> None:
    """Conservation: whatever the configuration and engine, every query leaves the
    system."""
    request = _request(task, model="llama-2-7b", gpus=4).model_copy(update={"engine": engine})
    sim = EventSimulator(request, _profile("llama-2-7b", "nvidia-a100-80gb"))
    if strategy == "WorkloadAware":
        config = ExecutionConfig(
            strategy="WorkloadAware", encode_gpus=1, decode_gpus=1, encode_batch=b_e,
            decode_batch=b_d,
        )  # fmt: skip
    else:
        config = ExecutionConfig(
            strategy=strategy,  # type: ignore[arg-type]
            tensor_parallel=2, pipeline_stages=2, micro_batches=2, encode_batch=b_e,
            decode_batch=b_d, decode_steps_per_encode=n_d,
        )  # fmt: skip
    result = sim.run(config, np.random.default_rng(seed), queries=300)
    assert result.completed == result.queries == 300
    assert result.throughput_qps > 0
    assert np.isfinite(result.latency_s)


# -- replay: given queries instead of sampled ones ---------------------------------------


def _continuous(batch: int = 8) -> ExecutionConfig:
    return ExecutionConfig(strategy="Continuous", decode_batch=batch)


def test_a_query_replayed_alone_takes_its_encoding_and_its_decode_steps() -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    timeline = sim.replay(_continuous(), arrival=[2.0], inputs=[100], outputs=[5])
    k = sim.costs
    g = sim.analytic.round_robin_groups(_continuous())[0]
    # the prefill gives the first token; 4 decode steps at contexts 101..104 the rest
    first = k.mixed_iteration(g, 0.0, 0.0, 1.0, 100.0, 1)
    rest = sum(k.iteration(g, 1.0, 100.0 + j, 1) for j in range(1, 5))
    assert timeline.admitted[0] == 2.0
    assert timeline.done[0] == pytest.approx(2.0 + first + rest)
    assert timeline.e2e[0] == pytest.approx(first + rest)


def _with_request_overhead(profile: Profile, seconds: float) -> Profile:
    engine = EngineOverhead(step=Curve(x=[1.0], seconds=[0.0]), request_s=seconds)
    return profile.model_copy(update={"engine": engine})


@pytest.mark.parametrize(
    "config",
    [
        _continuous(),
        ExecutionConfig(strategy="Static", encode_batch=4),
        ExecutionConfig(strategy="RoundRobin", encode_batch=2, decode_steps_per_encode=4),
    ],
    ids=["Continuous", "Static", "RoundRobin"],
)
def test_what_the_server_adds_to_a_request_delays_every_query_by_as_much(
    config: ExecutionConfig,
) -> None:
    request = _request("S", gpus=1)
    profile = _profile("opt-13b", "nvidia-a100-80gb")
    rng = np.random.default_rng(3)
    inputs, outputs = request.workload.sample(60, rng)
    arrival = 3.0 + np.cumsum(rng.exponential(0.2, size=60))
    steps = EventSimulator(request, _with_request_overhead(profile, 0.0))
    served = EventSimulator(request, _with_request_overhead(profile, 0.015))

    a = steps.replay(config, arrival, inputs, outputs)
    b = served.replay(config, arrival, inputs, outputs)
    # the engine sees every query 15 ms after it arrived: the same timeline, 15 ms later
    assert np.array_equal(b.arrival, a.arrival)
    assert np.allclose(b.admitted, a.admitted + 0.015)
    assert np.allclose(b.e2e, a.e2e + 0.015)
    # sampled runs and the analytic mode carry it in their e2e p99 alike
    run_a = steps.run(config, np.random.default_rng(1), queries=400, arrival_rate=2.0)
    run_b = served.run(config, np.random.default_rng(1), queries=400, arrival_rate=2.0)
    assert run_b.e2e_p99_s == pytest.approx(run_a.e2e_p99_s + 0.015)
    assert run_b.throughput_qps == run_a.throughput_qps
    assert served.analytic.evaluate(config).e2e_p99_s == pytest.approx(
        steps.analytic.evaluate(config).e2e_p99_s + 0.015
    )
    assert served.analytic.evaluate(config).latency_s == steps.analytic.evaluate(config).latency_s


def test_a_static_batch_returns_all_its_queries_when_its_longest_output_ends() -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    config = ExecutionConfig(strategy="Static", encode_batch=4)
    # three queries waiting together form one batch; the fourth arrives during it
    timeline = sim.replay(config, [0.0, 0.0, 0.0, 0.01], [50, 60, 40, 50], [3, 30, 8, 5])
    first = timeline.done[:3]
    assert (first == first[0]).all()  # the 3-token query waits for the 30-token one
    alone = sim.replay(config, [0.0], [60], [30])
    assert first[0] > alone.done[0]  # a batch of three computes more than one query
    assert timeline.admitted[3] == pytest.approx(first[0])  # the next batch, then


def test_round_robin_encodes_a_late_arrival_at_the_next_iteration_once_n_d_have_passed() -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    config = ExecutionConfig(strategy="RoundRobin", encode_batch=1, decode_steps_per_encode=4)
    enc, dec, _ = sim.analytic.round_robin_groups(config)
    encoded = sim.costs.encode_latency(enc, 1, 50.0)  # the first query's decoding starts
    step = sim.costs.iteration(dec, 1.0, 53.0, 1)
    # the second query arrives 5.5 iterations into the first one's decoding: four
    # iterations have passed since the last encoding, so it is encoded at the next one
    # (not after the eighth, the next multiple of N_D)
    late = encoded + 5.5 * step
    both = sim.replay(config, [0.0, late], [50, 50], [100, 10])
    assert 0.0 < both.admitted[1] - late < 1.0 * step
    # arriving before N_D iterations have passed, it waits for the fourth
    early = encoded + 1.5 * step
    waits = sim.replay(config, [0.0, early], [50, 50], [100, 10])
    assert waits.admitted[1] - early > 2.0 * step


def test_a_replay_shifted_in_time_is_the_same_replay() -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    rng = np.random.default_rng(4)
    inputs, outputs = sim.request.workload.sample(200, rng)
    arrival = np.cumsum(rng.exponential(0.05, size=200))
    config = ExecutionConfig(strategy="RoundRobin", encode_batch=4, decode_steps_per_encode=8)
    a = sim.replay(config, arrival, inputs, outputs)
    b = sim.replay(config, arrival + 100.0, inputs, outputs)
    assert np.allclose(b.done - 100.0, a.done)
    assert np.allclose(b.e2e, a.e2e)
    assert (a.admitted >= a.arrival).all() and (a.done > a.admitted).all()


def test_queries_arriving_faster_wait_longer() -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    rng = np.random.default_rng(9)
    inputs, outputs = sim.request.workload.sample(300, rng)
    gaps = rng.exponential(1.0, size=300)
    capacity = sim.analytic.evaluate(_continuous()).throughput_qps
    slow = sim.replay(_continuous(), np.cumsum(gaps / (0.3 * capacity)), inputs, outputs)
    fast = sim.replay(_continuous(), np.cumsum(gaps / (0.9 * capacity)), inputs, outputs)
    assert np.percentile(fast.e2e, 99) > np.percentile(slow.e2e, 99)


@pytest.mark.parametrize(
    ("arrival", "inputs", "outputs", "match"),
    [
        ([1.0, 0.5], [10, 10], [10, 10], "non-decreasing"),
        ([0.0, 1.0], [10], [10, 10], "one per query"),
        ([0.0], [0], [10], ">= 1"),
    ],
)
def test_a_replay_of_malformed_queries_says_what_is_wrong(
    arrival: list[float], inputs: list[int], outputs: list[int], match: str
) -> None:
    sim = EventSimulator(_request("S", gpus=1), _profile("opt-13b", "nvidia-a100-80gb"))
    with pytest.raises(ValueError, match=match):
        sim.replay(_continuous(), arrival, inputs, outputs)
