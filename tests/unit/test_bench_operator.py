"""``exegpt bench operator``'s result: strict JSON whatever timed out, percentiles that
count a timed-out edit, the targets, and the stalls of its own process."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from exegpt.bench import finite_json
from exegpt.bench.operator import Edit, percentiles, targets
from exegpt.bench.stalls import Stalls


def _strict(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_result_with_timeouts_is_strict_json_saying_which_numbers_are_null() -> None:
    result = {
        "plan_all_seconds": math.inf,
        "edit": {"p50_s": 0.1, "p99_s": math.inf, "max_s": -math.inf, "timed_out": 3},
        "series": [[0.0, 1.5], [1.0, math.nan]],
        "timed_out": ["plan_all: 2 of 200 without a plan after 660 s"],
        "ok": True,
        "name": "x",
    }
    text = finite_json.dumps(result)
    assert "Infinity" not in text and "NaN" not in text
    doc = _strict(text)
    assert doc["plan_all_seconds"] is None
    assert doc["edit"] == {"p50_s": 0.1, "p99_s": None, "max_s": None, "timed_out": 3}
    assert doc["series"] == [[0.0, 1.5], [1.0, None]]
    assert doc["null_numbers"] == [
        "plan_all_seconds",
        "edit.p99_s",
        "edit.max_s",
        "series[1][1]",
    ]
    assert doc["timed_out"] == result["timed_out"] and doc["ok"] is True
    assert math.isinf(result["plan_all_seconds"])  # type: ignore[arg-type]  # not changed


def test_a_result_without_timeouts_lists_no_null_numbers() -> None:
    doc = _strict(finite_json.dumps({"p99_s": 0.5, "n": 3, "none": None}))
    assert doc == {"p99_s": 0.5, "n": 3, "none": None, "null_numbers": []}


def test_percentiles_count_a_timed_out_edit_as_the_longest() -> None:
    edits = [Edit(i, 0.0, 0.1 * (i + 1)) for i in range(99)] + [Edit(99, 0.0, None)]
    p = percentiles(edits)
    assert p["timed_out"] == 1
    assert math.isinf(p["max_s"])
    assert p["p99_s"] == pytest.approx(9.9)  # the 99th of 100 is the slowest that finished
    assert p["p50_s"] == pytest.approx((5.0 + 5.1) / 2)
    two = percentiles([Edit(0, 0.0, 1.0), Edit(1, 0.0, None)])
    assert math.isinf(two["p99_s"]) and two["timed_out"] == 1
    doc = _strict(finite_json.dumps({"edit": two}))
    assert doc["edit"]["p99_s"] is None and doc["null_numbers"] == [
        "edit.p50_s",
        "edit.p99_s",
        "edit.max_s",
    ]


def test_targets_are_missed_when_a_p99_timed_out() -> None:
    assert targets(0.5, 0.9, True) == {
        "p99_edit_under_2s": True,
        "faults_move_no_p99": True,
        "memory_flat": True,
    }
    assert targets(0.5, 1.1, False)["faults_move_no_p99"] is False
    assert targets(2.5, 2.6, True)["p99_edit_under_2s"] is False
    assert targets(math.inf, 0.5, True)["p99_edit_under_2s"] is False
    assert targets(0.5, math.inf, True)["faults_move_no_p99"] is False
    assert targets(None, None, True)["faults_move_no_p99"] is False


def test_stalls_cover_an_interval_once_where_loop_lags_and_collections_overlap() -> None:
    stalls = Stalls(loop_stalls=[(10.0, 2.0), (20.0, 1.0)], gc_pauses=[(11.0, 2.0, 2)])
    assert stalls.overlapping(0.0, 30.0) == pytest.approx(4.0)  # [10, 13] and [20, 21]
    assert stalls.overlapping(12.0, 20.5) == pytest.approx(1.5)
    assert stalls.overlapping(14.0, 19.0) == 0.0
