"""The ExeGPT schedule as vLLM's ``additional_config`` carries it."""

from __future__ import annotations

import json

import pytest

from exegpt.planner.plan import ExecutionConfig
from exegpt.planner.vllm_schedule import VllmSchedule


def test_round_trips_through_the_json_vllm_parses() -> None:
    schedule = VllmSchedule(
        mode="RoundRobin", encode_batch=4, decode_steps_per_encode=6, decode_batch=48
    )
    text = json.dumps(schedule.additional_config())
    assert VllmSchedule.from_additional_config(json.loads(text)) == schedule


def test_missing_section_names_the_flag() -> None:
    with pytest.raises(ValueError, match=r"--additional-config.*exegpt"):
        VllmSchedule.from_additional_config({})


def test_bad_section_names_the_field() -> None:
    with pytest.raises(ValueError, match="decode_steps_per_encode"):
        VllmSchedule.from_additional_config(
            {"exegpt": {"mode": "RoundRobin", "decode_steps_per_encode": 0}}
        )


def test_from_plan_configurations() -> None:
    rr = ExecutionConfig(strategy="RoundRobin", encode_batch=8, decode_steps_per_encode=5)
    # a query of at most 32 tokens lives through ceil(32 / 5) = 7 prefill steps of 8
    assert VllmSchedule.from_config(rr, max_output_tokens=32) == VllmSchedule(
        mode="RoundRobin", encode_batch=8, decode_steps_per_encode=5, decode_batch=56
    )
    assert VllmSchedule.from_config(rr, max_output_tokens=30).decode_batch == 48
    static = ExecutionConfig(strategy="Static", encode_batch=16, decode_batch=4)
    assert VllmSchedule.from_config(static, 64).decode_batch == 16
    continuous = ExecutionConfig(strategy="Continuous", decode_batch=96)
    assert VllmSchedule.from_config(continuous, 64).decode_batch == 96
    waa = ExecutionConfig(strategy="WorkloadAware", encode_gpus=1, decode_gpus=1)
    with pytest.raises(ValueError, match="prefill and decode instances"):
        VllmSchedule.from_config(waa, 64)
    with pytest.raises(ValueError, match="max_output_tokens"):
        VllmSchedule.from_config(rr, 0)
