"""The periodic passes of deployments are spread over the resync period by their uid,
so deployments created or resumed together do not make one burst of requests."""

from __future__ import annotations

import uuid

from exegpt.operator.deployments import resync_phase


def test_a_deployment_keeps_its_phase_within_the_period() -> None:
    uid = "0b6c6f0e-4d1f-4e0e-9a53-1f6a8c2f7a10"
    assert resync_phase(uid, 10.0) == resync_phase(uid, 10.0)
    assert 0.0 <= resync_phase(uid, 10.0) < 10.0
    assert resync_phase(uid, 20.0) == 2 * resync_phase(uid, 10.0)


def test_phases_of_many_deployments_spread_over_the_period() -> None:
    phases = [resync_phase(str(uuid.UUID(int=i * 7919 + 1)), 10.0) for i in range(2000)]
    assert all(0.0 <= p < 10.0 for p in phases)
    # Ten one-second slots: about 200 passes each, none near all of them at once.
    slots = [sum(1 for p in phases if s <= p < s + 1) for s in range(10)]
    assert min(slots) > 140 and max(slots) < 260, slots
