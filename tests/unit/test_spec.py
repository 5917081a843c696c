"""The ExeGPTDeployment models: examples parse, bad input names its field, the
schema carries what the CRD needs, and specs map onto plan requests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import DELETE, deployment, spec
from pydantic import BaseModel, ValidationError

from exegpt.operator.request import SpecError, context_overflow, plan_request, request_warnings
from exegpt.operator.spec import (
    DriftSpec,
    ExeGPTDeployment,
    ExeGPTDeploymentSpec,
    HardwareSpec,
    ModelSpec,
    ProfilingSpec,
    RunnerSpec,
    SloSpec,
    Toleration,
    WeightsSpec,
    format_duration,
    format_errors,
    parse_duration,
    parse_manifest,
    parse_spec,
)
from exegpt.planner.architecture import get_architecture

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


def errors_of(obj: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_manifest(obj)
    return format_errors(info.value)


# -- examples -----------------------------------------------------------------------------


def test_there_is_an_example_per_paper_task() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "opt-13b-summarization",
        "t5-11b-translation",
        "gpt3-39b-conversation",
        "gpt3-175b-code",
        "gpt3-341b-conversation-long",
        "llama-3-8b-chat",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_parse_and_build_a_request(path: Path) -> None:
    m = parse_manifest(yaml.safe_load(path.read_text()))
    assert m.name
    request = plan_request(m.spec)
    assert request.gpus == m.spec.hardware.gpus
    assert request.latency_bound_s == m.spec.slo.latency


def test_the_latency_margin_reaches_the_plan_request() -> None:
    r = plan_request(parse_spec(spec(**{"slo": {"latency": "2s", "latencyMargin": 0.1}})))
    assert r.latency_bound_s == pytest.approx(2.0)
    assert r.latency_margin == pytest.approx(0.1)
    assert r.planning_bound_s == pytest.approx(1.8)
    # unset: 0.1 (the median error measured on vLLM); 0 plans at the bound itself
    assert plan_request(parse_spec(spec(**{"slo": {"latency": "2s"}}))).latency_margin == 0.1
    none = plan_request(parse_spec(spec(**{"slo": {"latency": "2s", "latencyMargin": 0}})))
    assert none.planning_bound_s == pytest.approx(2.0)


def test_the_minimum_gain_reaches_the_plan_request() -> None:
    assert plan_request(parse_spec(spec())).min_gain == 0.1
    assert plan_request(parse_spec(spec(minGain=0))).min_gain == 0.0
    assert plan_request(parse_spec(spec(minGain=0.25))).min_gain == 0.25


def test_case_study_example_values() -> None:
    m = parse_manifest(yaml.safe_load((EXAMPLES_DIR / "opt-13b-summarization.yaml").read_text()))
    assert m.spec.model.name == "opt-13b"
    assert m.spec.hardware.gpus == 16
    assert m.spec.hardware.gpu_type == "nvidia-a100-80gb"
    assert m.spec.slo.latency == pytest.approx(3.1)


# -- defaults and normalisation --------------------------------------------------------------


def test_defaults() -> None:
    s = parse_spec(
        {
            "model": {"name": "opt-13b"},
            "hardware": {"gpus": 4, "gpuType": "nvidia-a100-80gb"},
            "workload": {"preset": "summarization"},
        }
    )
    assert s.model.dtype == "float16"
    assert s.model.weights is None
    assert s.hardware.gpus_per_node == 8
    assert s.hardware.node_selector == {}
    assert s.hardware.tolerations == []
    assert s.slo.latency is None
    assert s.strategy == "Auto"
    assert s.profiling.mode == "Analytic"
    assert s.profiling.timeout == 7200.0
    assert s.profiling.max_retries == 3
    assert s.runner.port == 8000
    assert s.runner.image is None
    assert s.drift.mode == "Replan"
    assert (s.drift.threshold, s.drift.min_requests) == (0.2, 1000)
    assert (s.drift.interval_seconds, s.drift.cooldown_seconds) == (300, 1800)


def test_names_are_canonicalised() -> None:
    s = parse_spec(spec(**{"model.name": "OPT-13B", "hardware.gpuType": "a100"}))
    assert s.model.name == "opt-13b"
    assert s.hardware.gpu_type == "nvidia-a100-80gb"


def test_snake_case_names_are_accepted_too() -> None:
    s = ExeGPTDeploymentSpec.model_validate(
        {
            "model": {"name": "opt-13b"},
            "hardware": {"gpus": 16, "gpu_type": "a40", "gpus_per_node": 8},
            "workload": {"preset": "S"},
        }
    )
    assert s.hardware.gpus_per_node == 8


def test_json_round_trip() -> None:
    m = parse_manifest(deployment(**{"profiling.timeout": "90m"}))
    doc = m.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert doc["spec"]["slo"]["latency"] == "3.1s"
    assert doc["spec"]["profiling"]["timeout"] == "1h30m"
    assert parse_manifest(doc).model_dump() == m.model_dump()


def test_explicit_architecture() -> None:
    arch = get_architecture("opt-13b").model_dump(by_alias=True)
    arch["name"] = "my-opt"
    s = parse_spec(spec(**{"model.name": DELETE, "model.architecture": arch}))
    assert s.model.resolved_architecture().name == "my-opt"
    assert s.model.resolved_architecture().num_layers == 40


def test_toleration_to_k8s() -> None:
    t = Toleration.model_validate(
        {"key": "gpu", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}
    )
    assert t.to_k8s() == {
        "key": "gpu",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 30,
    }


# -- bad input names its field ---------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("missing gpus", {"hardware.gpus": DELETE}, "spec.hardware.gpus: required"),
    ("zero gpus", {"hardware.gpus": 0}, "spec.hardware.gpus:"),
    ("negative latency", {"slo.latency": -1}, "spec.slo.latency: duration must be positive"),
    ("negative latency string", {"slo.latency": "-2s"}, "spec.slo.latency: invalid duration"),
    ("zero latency", {"slo.latency": "0s"}, "spec.slo.latency: duration must be positive"),
    (
        "bad duration",
        {"slo.latency": "3 parsecs"},
        "spec.slo.latency: invalid duration '3 parsecs'",
    ),
    ("boolean duration", {"slo.latency": True}, "spec.slo.latency: invalid duration"),
    ("margin above a half", {"slo.latencyMargin": 0.8}, "spec.slo.latencyMargin:"),
    ("negative margin", {"slo.latencyMargin": -0.1}, "spec.slo.latencyMargin:"),
    ("gain above one", {"minGain": 1.5}, "spec.minGain:"),
    ("negative gain", {"minGain": -0.1}, "spec.minGain:"),
    ("unknown preset", {"model.name": "gpt-5"}, "spec.model.name: unknown model preset 'gpt-5'"),
    ("unknown gpu", {"hardware.gpuType": "tpu-v5"}, "spec.hardware.gpuType: unknown GPU type"),
    ("partial nodes", {"hardware.gpus": 12}, "spec.hardware.gpus: 12 GPUs span more than one node"),
    (
        "preset and input",
        {"workload.input": {"mean": 100, "std": 10, "max": 200}},
        "spec.workload",
    ),
    ("extra field", {"hardware.gpuz": 3}, "spec.hardware.gpuz: unknown field"),
    ("extra top-level spec field", {"replicas": 3}, "spec.replicas: unknown field"),
    (
        "preset and architecture",
        {
            "model.architecture": {
                "name": "a",
                "numLayers": 2,
                "hiddenSize": 64,
                "numHeads": 4,
                "ffnSize": 256,
                "vocabSize": 100,
            }
        },
        "spec.model.architecture: both model.name and model.architecture",
    ),
    ("no model", {"model.name": DELETE}, "spec.model.name: no model given"),
    (
        "bad architecture",
        {"model.name": DELETE, "model.architecture": {"name": "a", "numLayers": 2}},
        "spec.model.architecture.hiddenSize: required",
    ),
    ("bad dtype", {"model.dtype": "int3"}, "spec.model.dtype:"),
    ("bad strategy", {"strategy": "Fastest"}, "spec.strategy:"),
    ("bad profiling mode", {"profiling.mode": "Guess"}, "spec.profiling.mode:"),
    ("bad timeout", {"profiling.timeout": "2 hours"}, "spec.profiling.timeout: invalid duration"),
    ("negative retries", {"profiling.maxRetries": -1}, "spec.profiling.maxRetries:"),
    ("bad port", {"runner.port": 70000}, "spec.runner.port:"),
    ("bad pvc", {"model.weights": {"pvc": "Bad_Name"}}, "spec.model.weights.pvc:"),
    ("relative path", {"model.weights": {"pvc": "m", "path": "x"}}, "spec.model.weights.path:"),
    (
        "exists with value",
        {"hardware.tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        "spec.hardware.tolerations[0].value: a toleration with operator Exists",
    ),
    (
        "seconds without NoExecute",
        {"hardware.tolerations": [{"key": "k", "tolerationSeconds": 5}]},
        "spec.hardware.tolerations[0].tolerationSeconds:",
    ),
    (
        "bad effect",
        {"hardware.tolerations": [{"key": "k", "effect": "Never"}]},
        "spec.hardware.tolerations[0].effect:",
    ),
    ("bad drift mode", {"drift.mode": "Auto"}, "spec.drift.mode: Input should be 'Replan'"),
    (
        "zero drift threshold",
        {"drift.threshold": 0},
        "spec.drift.threshold: Input should be greater",
    ),
    (
        "drift threshold past 1",
        {"drift.threshold": 1.5},
        "spec.drift.threshold: Input should be less",
    ),
    (
        "zero min requests",
        {"drift.minRequests": 0},
        "spec.drift.minRequests: Input should be greater",
    ),
    ("short drift interval", {"drift.intervalSeconds": 5}, "spec.drift.intervalSeconds:"),
    ("negative cooldown", {"drift.cooldownSeconds": -1}, "spec.drift.cooldownSeconds:"),
    ("unknown drift field", {"drift.every": 3}, "spec.drift.every: unknown field"),
    (
        "non-string node selector",
        {"hardware.nodeSelector": {"a": 1}},
        "spec.hardware.nodeSelector.a:",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(overrides: dict[str, Any], expected: str) -> None:
    lines = errors_of(deployment(**overrides))
    assert any(line.startswith(expected) for line in lines), lines


def test_wrong_api_version_and_kind() -> None:
    body = deployment()
    body["apiVersion"] = "exegpt.dev/v2"
    body["kind"] = "Deployment"
    lines = errors_of(body)
    assert any(line.startswith("apiVersion:") for line in lines), lines
    assert any(line.startswith("kind:") for line in lines), lines


def test_not_a_mapping() -> None:
    lines = errors_of(["not", "a", "manifest"])
    assert lines and lines[0].startswith("(document):")


def test_whole_nodes_message_gives_the_fix() -> None:
    (line,) = [x for x in errors_of(deployment(**{"hardware.gpus": 12})) if "gpus" in x]
    assert "use 8 or 16 GPUs" in line


def test_unknown_preset_lists_the_known_ones() -> None:
    (line,) = errors_of(deployment(**{"model.name": "gpt-5"}))
    assert "opt-13b" in line and "t5-11b" in line


@pytest.mark.parametrize("gpus", [1, 3, 8, 16, 48])
def test_gpu_counts_that_fill_nodes_are_accepted(gpus: int) -> None:
    assert parse_manifest(deployment(**{"hardware.gpus": gpus})).spec.hardware.gpus == gpus


# -- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3.1s", 3.1),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1m0.5s", 60.5),
        (" 10s ", 10.0),
        ("7", 7.0),
        (".5s", 0.5),
        (3, 3.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "3 parsecs", "s", "1d", "-1s", "1.2.3s", "inf", "nan", 0, -3])
def test_parse_duration_rejects(bad: str | float) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0.25, 0.0031, 1.0, 3.1, 59.5, 60.0, 61.0, 5400.0, 7200.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


# -- the schema the CRD is generated from ------------------------------------------------------

MODELS: list[type[BaseModel]] = [
    ExeGPTDeploymentSpec,
    ModelSpec,
    WeightsSpec,
    HardwareSpec,
    Toleration,
    SloSpec,
    ProfilingSpec,
    RunnerSpec,
    DriftSpec,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_field_is_documented_and_camel_case(model: type[BaseModel]) -> None:
    props = model.model_json_schema(by_alias=True)["properties"]
    for name, prop in props.items():
        assert "_" not in name, f"{model.__name__}.{name} is not camelCase"
        assert prop.get("description"), f"{model.__name__}.{name} has no description"
    assert model.model_config.get("extra") == "forbid"


def test_schema_carries_cel_rules_and_durations() -> None:
    schema = ExeGPTDeploymentSpec.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    assert defs["HardwareSpec"]["x-kubernetes-validations"]
    assert defs["ModelSpec"]["x-kubernetes-validations"]
    assert defs["Toleration"]["x-kubernetes-validations"]
    timeout = defs["ProfilingSpec"]["properties"]["timeout"]
    assert timeout["x-kubernetes-int-or-string"] is True
    assert timeout["default"] == "2h"
    assert "nvidia-a100-80gb" in defs["HardwareSpec"]["properties"]["gpuType"]["enum"]
    assert schema["properties"]["strategy"]["enum"] == ["Auto", "RoundRobin", "WorkloadAware"]


def test_schema_is_not_recursive() -> None:
    """Every $ref can be inlined (structural schemas have no references)."""
    schema = ExeGPTDeployment.model_json_schema(by_alias=True)
    defs = schema.get("$defs", {})

    def refs(node: Any) -> set[str]:
        if isinstance(node, dict):
            out = {node["$ref"].split("/")[-1]} if "$ref" in node else set()
            for v in node.values():
                out |= refs(v)
            return out
        if isinstance(node, list):
            return set().union(*(refs(v) for v in node)) if node else set()
        return set()

    def reaches(name: str, seen: tuple[str, ...]) -> None:
        assert name not in seen, f"recursive schema: {' -> '.join((*seen, name))}"
        for child in refs(defs[name]):
            reaches(child, (*seen, name))

    for name in defs:
        reaches(name, ())


# -- plan_request ---------------------------------------------------------------------------------


def test_plan_request_maps_every_field() -> None:
    s = parse_spec(
        spec(
            **{
                "hardware.gpus": 4,
                "hardware.gpusPerNode": 4,
                "hardware.gpuType": "a40",
                "model.dtype": "bfloat16",
                "slo.latency": "1500ms",
                "strategy": "WorkloadAware",
                "workload.preset": "translation",
            }
        )
    )
    r = plan_request(s)
    assert r.architecture == get_architecture("opt-13b")
    assert r.gpu.name == "nvidia-a40"
    assert r.gpu.gpus_per_node == 4
    assert r.gpus == 4
    assert r.gpus_per_node == 4
    assert r.dtype == "bfloat16"
    assert r.latency_bound_s == pytest.approx(1.5)
    assert r.strategy == "WorkloadAware"
    assert r.workload.input.max == 256


def test_plan_request_without_bound() -> None:
    r = plan_request(parse_spec(spec(**{"slo": {}})))
    assert r.latency_bound_s is None


def test_plan_request_rejects_queries_longer_than_the_context_window() -> None:
    s = parse_spec(
        spec(
            **{
                "workload": {
                    "input": {"mean": 1900, "std": 50, "max": 2000},
                    "output": {"mean": 200, "std": 20, "max": 300},
                }
            }
        )
    )
    with pytest.raises(SpecError) as info:
        plan_request(s)
    assert info.value.path == "spec.workload"
    assert "context window of 2048 tokens" in info.value.message


def test_a_few_long_queries_only_warn() -> None:
    s = parse_spec(
        spec(
            **{
                "workload": {
                    "input": {"mean": 800, "std": 500, "max": 2000},
                    "output": {"mean": 150, "std": 50, "max": 300},
                }
            }
        )
    )
    request = plan_request(s)
    (warning,) = request_warnings(request)
    assert warning.startswith("spec.workload: ")
    assert "context window of 2048 tokens" in warning
    assert 0 < context_overflow(request.architecture, request.workload) < 0.2


def test_no_warnings_for_the_paper_tasks() -> None:
    for preset in ("S", "T", "G", "C1", "C2"):
        request = plan_request(parse_spec(spec(**{"workload.preset": preset})))
        assert request_warnings(request) == []


def test_encoder_decoder_has_no_context_limit() -> None:
    s = parse_spec(
        spec(
            **{
                "model.name": "t5-11b",
                "workload": {
                    "input": {"mean": 3000, "std": 50, "max": 4000},
                    "output": {"mean": 200, "std": 20, "max": 300},
                },
            }
        )
    )
    assert request_warnings(plan_request(s)) == []
