"""Isotonic regression of measured costs."""

from __future__ import annotations

import pytest

from exegpt.planner.isotonic import non_decreasing


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),  # already non-decreasing: unchanged
        ([2.0, 1.0, 3.0], [1.5, 1.5, 3.0]),  # a dip pooled with the point before it
        ([1.0, 4.0, 2.0, 0.0, 5.0], [1.0, 2.0, 2.0, 2.0, 5.0]),  # a run pooled to its mean
        ([3.0, 2.0, 1.0], [2.0, 2.0, 2.0]),
    ],
)
def test_a_falling_run_is_replaced_by_its_mean(values: list[float], expected: list[float]) -> None:
    out = non_decreasing(values)
    assert out == pytest.approx(expected)
    assert sum(out) == pytest.approx(sum(values))  # least squares keeps the mean


def test_nothing_in_nothing_out() -> None:
    assert non_decreasing([]) == []
