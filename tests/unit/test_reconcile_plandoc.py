"""The plan ConfigMap holds the exact worker plan: a pass that does not plan again reads
it back (the workers keep reading what the planner produced), and a missing or
unreadable document is planned again, never rebuilt from status."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from builders import deployment

from exegpt.operator import names, reconcile
from exegpt.operator.memkube import MemoryKube
from exegpt.operator.reconcile import Context, Outcome
from exegpt.operator.settings import OperatorSettings
from exegpt.planner.describe import config_summary, plan_summary
from exegpt.planner.kvcapacity import steady_sequences
from exegpt.planner.plan import PlanRequest, PlanResult
from exegpt.planner.profile import Profile
from exegpt.planner.workerplan import WorkerPlan

SETTINGS = OperatorSettings(retry_backoff_seconds=0.0, plan_time_limit_seconds=20.0)
CM = ("configmaps", "default", names.plan_configmap("x"))


class Passes:
    """One RoundRobin deployment in a MemoryKube, passes over it, and the searches they
    ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kube = MemoryKube()
        body = deployment("x", strategy="RoundRobin")
        body["metadata"].update(uid="uid-x", generation=1)
        self.kube.objects[("exegptdeployments", "default", "x")] = body
        self.searches = 0
        search = reconcile.schedule

        def counted(request: PlanRequest, profile: Profile, **kw: Any) -> PlanResult:
            self.searches += 1
            return search(request, profile, **kw)

        monkeypatch.setattr(reconcile, "schedule", counted)

    def run(self) -> Outcome:
        body = self.kube.objects[("exegptdeployments", "default", "x")]
        ctx = Context(kube=self.kube, settings=SETTINGS, events=lambda *e: None)
        return asyncio.run(reconcile.reconcile(body, ctx))

    def text(self) -> str:
        return str(self.kube.objects[CM]["data"]["plan.json"])

    def status(self) -> dict[str, Any]:
        return dict(self.kube.objects[("exegptdeployments", "default", "x")]["status"])


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Passes:
    return Passes(monkeypatch)


def test_a_pass_that_does_not_plan_keeps_the_planners_document(passes: Passes) -> None:
    passes.run()
    first = passes.text()
    doc = WorkerPlan.from_json(first)
    assert doc.hash() == passes.status()["plan"]["hash"]
    # the steady decode batch is the planner's, so the slots are (not B_E + 4)
    assert doc.predicted.decode_batch > 1
    held = steady_sequences(doc.config, doc.predicted.decode_batch)
    assert doc.capacity.sequences == held > doc.config.encode_batch + 4
    for _ in range(2):
        out = passes.run()
        assert passes.text() == first
        assert not [w for w in out.writes if "ConfigMap" in w]
    assert passes.searches == 1


@pytest.mark.parametrize("damage", ["missing", "not JSON", "another plan"])
def test_a_missing_or_unreadable_document_is_planned_again(passes: Passes, damage: str) -> None:
    passes.run()
    first = passes.text()
    if damage == "missing":
        del passes.kube.objects[CM]
    elif damage == "not JSON":
        passes.kube.objects[CM]["data"]["plan.json"] = "{"
    else:  # a document whose hash is not the one status records
        doc = WorkerPlan.from_json(first)
        other = doc.model_copy(update={"deployment": "y"})
        passes.kube.objects[CM]["data"]["plan.json"] = other.canonical_json()
    passes.run()
    assert passes.searches == 2
    assert passes.text() == first  # the same inputs plan the same document


def test_a_new_image_keeps_the_plan_and_moves_the_hash(passes: Passes) -> None:
    passes.run()
    before = WorkerPlan.from_json(passes.text())
    body = passes.kube.objects[("exegptdeployments", "default", "x")]
    body["spec"].setdefault("runner", {})["image"] = "registry.example/exegpt:2"
    body["metadata"]["generation"] += 1
    passes.run()
    after = WorkerPlan.from_json(passes.text())
    assert passes.searches == 1
    assert after.runner.image == "registry.example/exegpt:2"
    planned = ("strategy", "engine", "config", "predicted", "capacity", "limits")
    assert {k: getattr(after, k) for k in planned} == {k: getattr(before, k) for k in planned}
    assert after.hash() != before.hash()
    assert passes.status()["plan"]["hash"] == after.hash()


def test_status_describes_the_plan_as_the_cli_does(passes: Passes) -> None:
    passes.run()
    doc = WorkerPlan.from_json(passes.text())
    planned = next(c for c in passes.status()["conditions"] if c["type"] == "Planned")
    summary = plan_summary(doc.config, doc.predicted)
    assert planned["message"].startswith(summary + "; ")
    assert summary.startswith(f"RoundRobin: {config_summary(doc.config, doc.predicted)}: ")
    assert f"B_D~{doc.predicted.decode_batch:.0f}" in summary
