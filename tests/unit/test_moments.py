"""Workload moments the cost model uses: decode steps, the length-biased KV context,
and the expected longest output of a static batch."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from planner_builders import bimodal_workload, fixed_workload, rng

from exegpt.planner.architecture import Architecture, get_architecture
from exegpt.planner.moments import Moments, decode_steps
from exegpt.planner.workload import LengthDistribution, Workload
from exegpt.planner.workload_presets import get_workload

DECODER = get_architecture("llama-2-7b")
ENCODER_DECODER = get_architecture("t5-11b")
SAMPLES = 200_000


def _monte_carlo_context(
    wl: Workload, arch: Architecture, n: int = SAMPLES, seed: int = 7
) -> tuple[float, float]:
    """(mean, std) of the KV context over every decode step of ``n`` sampled queries.

    At decode step k (1-based) a query with input i attends to i + k cached tokens, so a
    query that decodes d steps contributes the contexts i+1 .. i+d: long outputs weigh
    more (length-biased)."""
    inputs, outputs = wl.sample(n, rng(seed))
    i = inputs.astype(np.float64)
    o = outputs.astype(np.float64)
    d = o if arch.encoder_decoder else np.maximum(o - 1, 0.0)  # decode_steps, vectorised
    steps = d.sum()
    s1 = float((i * d + d * (d + 1) / 2).sum() / steps)
    s2 = float((i * i * d + i * d * (d + 1) + d * (d + 1) * (2 * d + 1) / 6).sum() / steps)
    return s1, float(np.sqrt(max(s2 - s1 * s1, 0.0)))


# -- decode steps -----------------------------------------------------------------------
@pytest.mark.parametrize("output_length", [1.0, 2.0, 32.0, 417.0])
def test_decoder_only_decodes_one_step_fewer_than_its_output(output_length: float) -> None:
    assert decode_steps(output_length, encoder_decoder=False) == output_length - 1
    assert decode_steps(output_length, encoder_decoder=True) == output_length


def test_decode_steps_are_never_negative() -> None:
    assert decode_steps(0.0, encoder_decoder=False) == 0.0
    assert decode_steps(0.5, encoder_decoder=False) == 0.0


@pytest.mark.parametrize("preset", ["S", "G", "C1"])
def test_moments_steps_differ_by_one_between_model_families(preset: str) -> None:
    wl = get_workload(preset)
    dec = Moments.of(wl, DECODER)
    ed = Moments.of(wl, ENCODER_DECODER)
    assert dec.mean_steps == pytest.approx(wl.output.mean - 1)
    assert ed.mean_steps == pytest.approx(wl.output.mean)
    assert dec.steps_p99 == wl.output_p99 - 1
    assert ed.steps_p99 == wl.output_p99
    assert not dec.encoder_decoder
    assert ed.encoder_decoder


# -- KV context ---------------------------------------------------------------------------
def test_mean_context_of_fixed_lengths_is_exact() -> None:
    # Input 100, output 21: a decoder-only model decodes 20 steps at contexts 101..120.
    m = Moments.of(fixed_workload(100, 21), DECODER)
    assert m.mean_steps == 20
    assert m.mean_context == pytest.approx(110.5)
    assert m.std_context == pytest.approx(np.sqrt((20**2 - 1) / 12))
    # T5 decodes all 21 steps at contexts 101..121.
    assert Moments.of(fixed_workload(100, 21), ENCODER_DECODER).mean_context == pytest.approx(111)


def test_mean_context_is_length_biased() -> None:
    # 90 % of outputs have 8 tokens, 10 % have 512; long outputs dominate the decode steps,
    # so the average context sits far above input + mean_output / 2.
    wl = bimodal_workload(input_length=128, short=8, long=512, p_long=0.1)
    m = Moments.of(wl, DECODER)
    naive = 128 + wl.output.mean / 2
    assert m.mean_context > naive + 100
    mc_mean, _ = _monte_carlo_context(wl, DECODER)
    assert m.mean_context == pytest.approx(mc_mean, rel=0.02)


@pytest.mark.parametrize("arch", [DECODER, ENCODER_DECODER], ids=lambda a: a.name)
@pytest.mark.parametrize("preset", ["S", "T", "G", "C1", "C2", "chat", "code"])
def test_mean_context_matches_monte_carlo(preset: str, arch: Architecture) -> None:
    wl = get_workload(preset)
    mc_mean, _ = _monte_carlo_context(wl, arch)
    assert Moments.of(wl, arch).mean_context == pytest.approx(mc_mean, rel=0.02)


def test_mean_context_of_trace_pairs_is_exact() -> None:
    g = rng(3)
    inputs = g.integers(1, 600, size=500)
    outputs = np.maximum(1, (inputs // 4 + g.integers(0, 50, size=500))).astype(np.int64)
    wl = Workload(
        LengthDistribution.from_samples(inputs),
        LengthDistribution.from_samples(outputs),
        pairs=(inputs, outputs),
    )
    i = inputs.astype(np.float64)
    d = outputs.astype(np.float64) - 1
    exact = float((i * d + d * (d + 1) / 2).sum() / d.sum())
    assert Moments.of(wl, DECODER).mean_context == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize(
    "wl",
    [
        pytest.param(get_workload("S").with_correlation(0.0), id="S-uncorrelated"),
        pytest.param(get_workload("G"), id="G"),
        pytest.param(bimodal_workload(), id="bimodal"),
        pytest.param(get_workload("S"), id="S-weakly-correlated"),
        pytest.param(get_workload("T"), id="T-strongly-correlated"),
        pytest.param(get_workload("chat"), id="chat"),
    ],
)
def test_std_context_matches_monte_carlo(wl: Workload) -> None:
    _, mc_std = _monte_carlo_context(wl, DECODER)
    assert Moments.of(wl, DECODER).std_context == pytest.approx(mc_std, rel=0.03)


# -- longest output of a batch -------------------------------------------------------------
@pytest.mark.parametrize("preset", ["S", "G", "C2"])
def test_expected_max_steps_grows_with_batch_to_the_longest_output(preset: str) -> None:
    wl = get_workload(preset)
    m = Moments.of(wl, DECODER)
    ns = [1, 2, 3, 4, 8, 16, 64, 256, 1024]
    values = [m.expected_max_steps(n) for n in ns]
    assert all(b >= a for a, b in pairwise(values))
    assert values[-1] > values[0]
    assert values[0] == pytest.approx(m.mean_steps)
    assert values[-1] <= m.max_output - 1


def test_expected_max_steps_matches_monte_carlo() -> None:
    wl = get_workload("G")
    m = Moments.of(wl, DECODER)
    n, trials = 16, 20_000
    outputs = wl.output.sample(n * trials, rng(11)).reshape(trials, n)
    mc = float(outputs.max(axis=1).mean()) - 1
    assert m.expected_max_steps(n) == pytest.approx(mc, rel=0.01)


def test_expected_max_steps_of_a_fixed_output_is_that_output() -> None:
    m = Moments.of(fixed_workload(64, 40), DECODER)
    assert m.expected_max_steps(1) == m.expected_max_steps(512) == 39
