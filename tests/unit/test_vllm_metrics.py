"""Drift reads vLLM's request-length histograms as it reads the own engine's."""

from __future__ import annotations

import pytest

from exegpt.operator.metrics import MetricsError, parse_length_histograms


def _histogram(name: str, engine: str, cumulative: list[int]) -> str:
    bounds = ["1.0", "2.0", "5.0", "10.0", "+Inf"]
    labels = f'engine="{engine}",model_name="m"'
    lines = [f"# TYPE {name} histogram"]
    lines += [
        f'{name}_bucket{{{labels},le="{le}"}} {float(n)}'
        for le, n in zip(bounds, cumulative, strict=True)
    ]
    lines += [f"{name}_count{{{labels}}} {float(cumulative[-1])}"]
    return "\n".join(lines)


def test_vllm_histograms_of_every_engine_add_up() -> None:
    text = "\n".join(
        [
            _histogram("vllm:request_prompt_tokens", "0", [0, 1, 3, 4, 4]),
            _histogram("vllm:request_prompt_tokens", "1", [0, 0, 1, 1, 2]),
            _histogram("vllm:request_generation_tokens", "0", [1, 1, 2, 4, 4]),
            _histogram("vllm:request_generation_tokens", "1", [0, 0, 0, 2, 2]),
        ]
    )
    h = parse_length_histograms(text)
    assert h.bounds[-1] == float("inf") and h.bounds[:4] == (1.0, 2.0, 5.0, 10.0)
    assert h.input == (0, 1, 3, 1, 1)
    assert h.output == (1, 0, 1, 4, 0)


def test_vllm_without_the_generation_histogram_says_which() -> None:
    text = _histogram("vllm:request_prompt_tokens", "0", [0, 1, 3, 4, 4])
    with pytest.raises(MetricsError, match="vllm:request_generation_tokens"):
        parse_length_histograms(text)
