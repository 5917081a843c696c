"""The bench's reading of the machine's speed against a profile (``exegpt.bench.speed``)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from planner_builders import config, profile_for, request
from tiny import tiny_architecture

from exegpt.bench.speed import SpeedProbe, at_speed, priced, speed_ratio
from exegpt.planner.events import EventSimulator
from exegpt.planner.profile import Curve, EngineOverhead, Profile


def with_engine(profile: Profile) -> Profile:
    return profile.model_copy(
        update={"engine": EngineOverhead(step=Curve(x=[1.0, 64.0], seconds=[1e-4, 3e-4]))}
    )


def test_at_speed_scales_every_compute_timing_and_the_engine_curve() -> None:
    base = with_engine(profile_for())
    slow = at_speed(base, 1.25)
    for tp, t in base.tensor_parallel.items():
        s = slow.tensor_parallel[tp]
        for phase in ("encode", "decode"):
            a, b = getattr(t, phase), getattr(s, phase)
            assert (a.batch, a.length) == (b.batch, b.length)
            assert np.allclose(np.array(b.seconds), 1.25 * np.array(a.seconds))
        assert np.allclose(s.head.seconds, [1.25 * x for x in t.head.seconds])
    assert base.engine is not None and slow.engine is not None
    assert np.allclose(slow.engine.step.seconds, [1.25 * x for x in base.engine.step.seconds])
    assert slow.comm == base.comm and slow.memory == base.memory
    assert slow.provenance == base.provenance


def test_a_slower_machine_replays_slower() -> None:
    base = profile_for()
    req = request()
    cfg = config("Static", encode_batch=8)
    arrivals = [0.05 * i for i in range(60)]
    ins, outs = [128] * 60, [64] * 60
    fast = EventSimulator(req, base).replay(cfg, arrivals, ins, outs)
    slow = EventSimulator(req, at_speed(base, 1.1)).replay(cfg, arrivals, ins, outs)
    assert float(np.max(slow.e2e)) > float(np.max(fast.e2e))


def test_at_speed_refuses_a_factor_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="factor must be positive"):
        at_speed(profile_for(), 0.0)


def test_priced_step_is_every_layer_and_the_head() -> None:
    p = profile_for()
    layers = p.architecture.decode_layers
    (one,) = priced(p, [(4, 64)])
    assert one == pytest.approx(layers * p.decode_layer(1, 4, 64) + p.head(1, 4))


def test_speed_ratio_is_the_median_over_points() -> None:
    assert speed_ratio([1.1, 2.4, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.1)
    with pytest.raises(ValueError, match="one measured time per priced point"):
        speed_ratio([1.0], [1.0, 2.0])


def test_probe_times_each_point_and_travels_to_another_process() -> None:
    arch = tiny_architecture("opt")
    probe = SpeedProbe(arch, passes=1, points=((1, 8), (2, 8)))
    assert pickle.loads(pickle.dumps(probe)) == probe  # a multi-process replica's job
    seconds = probe.measure()
    assert len(seconds) == 2 and all(s > 0 for s in seconds)


def test_probe_refuses_a_model_the_profiler_times_in_part() -> None:
    # 48 layers: the profiler times a chain of fewer copies than the model has
    arch = tiny_architecture("opt", num_layers=48)
    with pytest.raises(ValueError, match="the probe times the whole model"):
        SpeedProbe(arch, passes=1, points=((1, 8),)).measure()
