"""A spec the operator cannot run is reported on the deployment, field and fix named,
once: no children, no retry loop. Fixing the spec carries on."""

from __future__ import annotations

from typing import Any

import pytest
from builders import deployment
from harness import ApiError, Cluster, Operator, condition, is_condition

pytestmark = pytest.mark.asyncio

WORKLOAD_TOO_LONG = {
    "input": {"mean": 3000, "std": 100, "max": 4000},
    "output": {"mean": 100, "std": 10, "max": 200},
}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Cross-field rules (the CRD's CEL rules, which the emulator does not evaluate).
        (
            {"hardware.gpus": 12},
            "spec.hardware.gpus: 12 GPUs span more than one node of 8 (gpusPerNode) but are "
            "not whole nodes: use 8 or 16 GPUs",
        ),
        # Fields the schema allows but the operator cannot plan.
        (
            {"workload": WORKLOAD_TOO_LONG},
            "spec.workload: 100% of queries (input + output tokens) exceed opt-13b's context "
            "window of 2048 tokens",
        ),
        # What the schema rejects, had it been stored all the same (by an older CRD).
        ({"model.name": "gpt-9"}, "spec.model.name: unknown model preset 'gpt-9'; use one of"),
        ({"slo.latency": "fast"}, "spec.slo.latency: invalid duration 'fast'"),
    ],
    ids=["whole-nodes", "context-window", "unknown-model", "bad-duration"],
)
async def test_an_invalid_spec_is_reported_once_with_the_field_and_the_fix(
    cluster: Cluster, operator: Operator, overrides: dict[str, Any], message: str
) -> None:
    with cluster.unvalidated():
        await cluster.create(deployment("x", **overrides))

    planned = await cluster.wait_for(lambda: condition(cluster.deployment("x"), "Planned"))
    assert (planned["status"], planned["reason"]) == ("False", "InvalidSpec")
    assert message in planned["message"]
    assert condition(cluster.deployment("x"), "Degraded")["reason"] == "InvalidSpec"  # type: ignore[index]
    assert cluster.deployment("x")["status"]["observedGeneration"] == 1  # type: ignore[index]

    # Reported, not retried: the passes that follow write nothing, and nothing was made.
    await operator.settle("x")
    children = [
        c for c in cluster.writes_since() if c.resource not in ("exegptdeployments", "events")
    ]
    assert children == []
    events = [c.body for c in cluster.writes_since() if c.resource == "events"]
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "InvalidSpec")]
    assert message in events[0]["message"]


async def test_fixing_an_invalid_spec_carries_on(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(deployment("x", **{"hardware.gpus": 12}))
    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Degraded"))

    await cluster.patch_deployment("x", {"spec": {"hardware": {"gpus": 16}}})

    await cluster.wait_for(lambda: is_condition(cluster.deployment("x"), "Planned"))
    assert is_condition(cluster.deployment("x"), "Degraded", "False")
    assert cluster.deployment("x")["status"]["observedGeneration"] == 2  # type: ignore[index]
    await cluster.wait_for(cluster.statefulsets)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.name": "gpt-9"}, 'spec.model.name: Invalid value: "gpt-9"'),
        ({"slo.latency": "fast"}, 'spec.slo.latency: Invalid value: "fast"'),
        ({"hardware.gpus": 0}, "spec.hardware.gpus: Invalid value: 0"),
    ],
    ids=["unknown-model", "bad-duration", "no-gpus"],
)
async def test_the_api_rejects_what_the_crd_schema_forbids(
    cluster: Cluster, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as rejected:
        await cluster.create(deployment("x", **overrides))
    assert rejected.value.status == 422
    assert (
        'ExeGPTDeployment.exegpt.dev "x" is invalid: ' + message in rejected.value.body["message"]
    )
    assert cluster.deployment("x") is None


async def test_fields_the_crd_does_not_declare_are_dropped(cluster: Cluster) -> None:
    created = await cluster.create(deployment("x", replicas=3))
    assert "replicas" not in created["spec"]
