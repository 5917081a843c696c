"""Backoff of failing passes: doubling waits with a cap, transient and permanent API
errors told apart, and an edited spec never held back."""

from __future__ import annotations

import pytest

from exegpt.operator.backoff import Failures, delay_seconds, is_permanent
from exegpt.operator.kube import KubeError


def test_the_wait_doubles_up_to_the_cap() -> None:
    assert [delay_seconds(n, 1.0, 10.0) for n in range(6)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert delay_seconds(10_000, 1.0, 300.0) == 300.0  # no overflow however long it fails


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(0, False), (409, False), (429, False), (500, False), (503, False),
     (400, True), (403, True), (404, True), (422, True)],
)  # fmt: skip
def test_permanent_and_transient_errors(status: int, permanent: bool) -> None:
    assert is_permanent(KubeError(status, "x")) is permanent


def test_a_periodic_pass_waits_out_the_backoff_but_an_edit_does_not() -> None:
    f = Failures()
    assert not f.backing_off(1, now=0.0)
    assert f.record(KubeError(500, "x"), generation=1, now=0.0, base_seconds=2, max_seconds=60) == 2
    assert f.record(KubeError(500, "x"), generation=1, now=2.0, base_seconds=2, max_seconds=60) == 4
    assert f.backing_off(1, now=5.0) and not f.backing_off(1, now=6.0)
    assert not f.backing_off(2, now=5.0)  # the spec was edited since
    assert not f.permanent
    f.record(KubeError(422, "x"), generation=1, now=6.0, base_seconds=2, max_seconds=60)
    assert f.permanent and f.count == 3
    f.clear()
    assert not f.backing_off(1, now=6.5) and f.count == 0
