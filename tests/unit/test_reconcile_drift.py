"""Drift checks in the reconcile pass, against an in-memory API, a fake clock and fake
worker metrics: when the served traffic drifts from the planned workload, the plan is
made again for the observed one (or only reported), and nothing else changes."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import numpy as np
import pytest
from builders import FakeMetrics, deployment, metrics_text, worker_pod

from exegpt.operator import names
from exegpt.operator.drift import Verdict, check_due, current_state, from_status, to_status, verdict
from exegpt.operator.kube import POD
from exegpt.operator.memkube import MemoryKube
from exegpt.operator.reconcile import Context, Outcome, reconcile
from exegpt.operator.settings import OperatorSettings
from exegpt.operator.spec import DriftSpec, parse_spec
from exegpt.planner.drift import DriftReport, bucket_masses, observed_workload
from exegpt.planner.workload_presets import get_workload
from exegpt.runner.metrics import TOKEN_LENGTHS_32K

SETTINGS = OperatorSettings(retry_backoff_seconds=0.0, plan_time_limit_seconds=20.0)
INTERVAL = 300  # drift.intervalSeconds' default
# Summarization plans for prompts of at most 512 tokens (about half of them in
# (256, 512]) and outputs of at most 80 (mostly 17 to 64): this traffic is short chat,
# prompts of 100 tokens and outputs of 10, in buckets the plan gives little of its mass.
DRIFTED = ({100: 1500}, {10: 1500})
SUMMARIZATION = get_workload("summarization")
BOUNDS = [*TOKEN_LENGTHS_32K, float("inf")]  # the workers' buckets


def distance(masses: Any, bucket: int) -> float:
    """The TV distance of traffic all in ``bucket`` from the planned ``masses``."""
    return round(1.0 - float(masses[bucket]), 4)


def planned_traffic(n: int = 2000) -> tuple[dict[int, int], dict[int, int]]:
    """``n`` requests drawn from the planned (summarization) workload, seeded."""
    inputs, outputs = get_workload("summarization").sample(n, np.random.default_rng(7))
    return (
        {int(k): int(v) for k, v in zip(*np.unique(inputs, return_counts=True), strict=True)},
        {int(k): int(v) for k, v in zip(*np.unique(outputs, return_counts=True), strict=True)},
    )


class World:
    """A MemoryKube with one deployment, a clock to move, and the workers' metrics."""

    def __init__(self, **overrides: Any) -> None:
        self.kube = MemoryKube()
        self.metrics = FakeMetrics()
        self.events: list[tuple[str, str, str]] = []
        self.clock = 1_700_000_000.0
        body = deployment("x", **{"strategy": "RoundRobin", **overrides})
        body["metadata"].update(uid="uid-x", generation=1)
        self.kube.objects[("exegptdeployments", "default", "x")] = body

    def body(self) -> dict[str, Any]:
        return self.kube.objects[("exegptdeployments", "default", "x")]

    def status(self) -> dict[str, Any]:
        return dict(self.body().get("status") or {})

    def condition(self, type_: str) -> dict[str, Any] | None:
        conds = self.status().get("conditions") or []
        return next((c for c in conds if c["type"] == type_), None)

    def run(
        self, body: dict[str, Any] | None = None, written: dict[str, str] | None = None
    ) -> Outcome:
        """A pass over ``body`` (default: the stored deployment), with what one operator
        process remembers of its status writes across passes (``written``)."""
        ctx = Context(
            kube=self.kube, settings=SETTINGS, events=lambda *e: self.events.append(e),
            clock=lambda: self.clock, metrics=self.metrics,
            written={} if written is None else written,
        )  # fmt: skip
        return asyncio.run(reconcile(self.body() if body is None else body, ctx))

    def edit(self, path: str, value: Any) -> None:
        node = self.body()["spec"]
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.body()["metadata"]["generation"] += 1

    def make_ready(self) -> None:
        """The StatefulSet controller and the kubelet: every pod of the plan runs, ready,
        with counters back at zero (a new plan rolls the pods)."""
        self.kube.objects = {k: v for k, v in self.kube.objects.items() if k[0] != "pods"}
        self.metrics.texts.clear()
        for (plural, _, _), sts in list(self.kube.objects.items()):
            if plural != "statefulsets":
                continue
            n = sts["spec"]["replicas"]
            sts["status"] = {"replicas": n, "readyReplicas": n, "updatedReplicas": n}
            role = sts["metadata"]["labels"][names.LABEL_COMPONENT]
            for o in range(n):
                pod = worker_pod("x", role, o)
                pod["metadata"]["namespace"] = "default"
                self.kube.objects[("pods", "default", pod["metadata"]["name"])] = pod
        self.run()
        assert (self.condition("Available") or {}).get("status") == "True"

    def drivers(self) -> list[str]:
        plan = self.status()["plan"]
        role = "worker" if plan["strategy"] == "RoundRobin" else "encoder"
        stages = plan["pipelineStages"] if role == "worker" else plan["encodeStages"]
        sts = names.statefulset("x", role)
        return [f"{sts}-{r * stages}" for r in range(plan["replicas"])]

    def serve(self, inputs: dict[int, int], outputs: dict[int, int]) -> None:
        """The drivers served this traffic since the plan started (split between them)."""
        drivers = self.drivers()
        for i, pod in enumerate(drivers):
            share_in = {k: v // len(drivers) + (i < v % len(drivers)) for k, v in inputs.items()}
            share_out = {k: v // len(drivers) + (i < v % len(drivers)) for k, v in outputs.items()}
            self.metrics.texts[pod] = metrics_text(share_in, share_out)

    def serve_drifted(self) -> None:
        """The drivers served the drifted traffic, and a check is due."""
        self.serve(*DRIFTED)
        self.clock += INTERVAL

    def pod_template_hash(self) -> str:
        sts = self.kube.objects[("statefulsets", "default", names.statefulset("x", "worker"))]
        return str(sts["spec"]["template"]["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH])

    def reasons(self) -> list[str]:
        return [e[1] for e in self.events]


def ready_world(**overrides: Any) -> World:
    w = World(**overrides)
    w.run()
    w.make_ready()
    return w


def test_drifted_traffic_replans_for_the_observed_workload() -> None:
    w = ready_world()
    before, template, drivers = w.status()["plan"], w.pod_template_hash(), w.drivers()
    w.serve_drifted()

    w.run()

    status = w.status()
    workload = status["workload"]
    assert workload["source"] == "Observed"
    assert workload["requests"] == 1500
    d_in = distance(bucket_masses(SUMMARIZATION.input, BOUNDS), BOUNDS.index(108))  # (91, 108]
    d_out = distance(bucket_masses(SUMMARIZATION.output, BOUNDS), BOUNDS.index(10))  # (8, 10]
    assert workload["inputDistance"] == d_in and workload["outputDistance"] == d_out
    assert min(d_in, d_out) > 0.9
    assert workload["checkedAt"] == workload["replannedAt"]
    # One bin per observed bucket, (91, 108] and (8, 10], then the declared longest
    # lengths (512 and 80) kept by one request each, with nothing observed between.
    assert workload["observed"]["input"] == {"edges": [92, 109, 512, 513], "counts": [1500, 0, 1]}
    assert workload["observed"]["output"] == {"edges": [9, 11, 80, 81], "counts": [1500, 0, 1]}
    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Replanned")
    assert f"input distance {d_in:.3f}" in cond["message"]
    # The workers still take the longest requests the deployment declared.
    doc = json.loads(w.kube.objects[("configmaps", "default", "x-plan")]["data"]["plan.json"])
    assert doc["limits"] == {"maxInputTokens": 512, "maxOutputTokens": 80}
    assert status["plan"]["inputsHash"] != before["inputsHash"]
    assert status["plan"]["hash"] != before["hash"]
    assert w.pod_template_hash() == status["plan"]["hash"] != template
    assert w.reasons()[-3:] == ["WorkloadDrifted", "Replanned", "RolloutStarted"]
    assert [r[1] for r in w.metrics.reads] == drivers


def test_a_drift_replan_is_kept_by_later_passes_and_a_restart() -> None:
    w = ready_world()
    w.serve_drifted()
    w.run()
    replanned = w.status()["plan"]
    events = len(w.events)
    # A restarted operator plans from status: same inputs, nothing to redo.
    w.metrics = FakeMetrics()
    out = w.run()
    assert w.status()["plan"]["inputsHash"] == replanned["inputsHash"]
    assert "Replanned" not in w.reasons()[events:]
    assert [x for x in out.writes if "StatefulSet" in x] == []


def test_a_pass_over_a_body_older_than_its_own_status_write_does_nothing() -> None:
    w = ready_world()
    w.serve_drifted()
    stale = copy.deepcopy(w.body())  # as a queued event that predates the next write
    written: dict[str, str] = {}
    w.run(written=written)
    replanned, reads, events = w.status()["plan"], len(w.metrics.reads), len(w.events)
    assert w.status()["workload"]["source"] == "Observed"
    assert w.pod_template_hash() == replanned["hash"]
    mark = len(w.kube.calls)
    w.clock += 1

    out = w.run(body=stale, written=written)

    assert out.stale and w.kube.calls[mark:] == []  # no read, no write
    assert len(w.metrics.reads) == reads and len(w.events) == events
    # The newer body is acted on as usual.
    assert not w.run(written=written).stale
    assert w.status()["plan"] == replanned and w.pod_template_hash() == replanned["hash"]
    # Without that memory (another process), the old body would check again and roll
    # the workers back to the plan its status shows, before the next pass rolls them
    # forward again.
    w.run(body=copy.deepcopy(stale))
    assert len(w.metrics.reads) > reads


def test_traffic_as_planned_is_no_drift_and_writes_only_status() -> None:
    w = ready_world()
    before = w.status()["plan"]
    w.serve(*planned_traffic())
    w.clock += INTERVAL
    mark = len(w.kube.calls)

    out = w.run()

    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "NoDrift")
    workload = w.status()["workload"]
    assert workload["source"] == "Spec" and "observed" not in workload
    assert workload["requests"] == 2000
    # sampling noise over the workers' 56 buckets: about 0.05 at 2000 requests
    assert workload["inputDistance"] < 0.1 and workload["outputDistance"] < 0.1
    assert w.status()["plan"] == before
    assert out.writes == []
    writes = [c for c in w.kube.calls[mark:] if c[0] in ("create", "patch", "delete")]
    assert writes == [("patch", "exegptdeployments/status", "x")]
    assert ("list", "pods", "") in w.kube.calls[mark:]


def test_fewer_requests_than_min_requests_are_not_judged() -> None:
    w = ready_world()
    before = w.status()["plan"]
    w.serve({700: 999}, {100: 999})
    w.clock += INTERVAL

    w.run()

    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == ("Unknown", "TooFewRequests")
    assert "999 requests" in cond["message"] and "drift.minRequests" in cond["message"]
    assert w.status()["plan"] == before
    assert w.status()["workload"]["source"] == "Spec"


def test_unreadable_metrics_are_unknown_and_leave_the_plan() -> None:
    w = ready_world()
    before = w.status()["plan"]
    w.clock += INTERVAL  # no driver answers

    w.run()

    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == (
        "Unknown",
        "MetricsUnavailable",
    )
    assert "connection refused" in cond["message"]
    assert w.status()["plan"] == before
    assert w.reasons()[-1] == "MetricsUnavailable"
    # Not retried at every pass: the next read waits for drift.intervalSeconds.
    reads = len(w.metrics.reads)
    w.clock += INTERVAL - 1
    w.run()
    assert len(w.metrics.reads) == reads
    w.clock += 1
    w.run()
    assert len(w.metrics.reads) > reads


def test_no_ready_driver_is_unknown() -> None:
    w = ready_world()
    w.kube.objects = {k: v for k, v in w.kube.objects.items() if k[0] != POD.plural}
    w.clock += INTERVAL
    w.run()
    cond = w.condition("WorkloadDrift")
    assert cond is not None and cond["reason"] == "MetricsUnavailable"
    assert "replica driver pods are ready" in cond["message"]


def test_a_check_waits_for_the_interval_after_the_workers_are_ready() -> None:
    w = ready_world()
    w.serve(*DRIFTED)
    w.clock += INTERVAL - 1
    w.run()
    assert w.metrics.reads == [] and w.condition("WorkloadDrift") is None


def test_observe_mode_reports_drift_and_keeps_the_plan() -> None:
    w = ready_world(**{"drift.mode": "Observe"})
    before = w.status()["plan"]
    w.serve_drifted()

    w.run()

    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "Drifted")
    assert "drift.mode Observe" in cond["message"]
    assert w.status()["plan"] == before
    assert w.status()["workload"]["source"] == "Spec"
    assert w.reasons()[-1] == "WorkloadDrifted" and "Replanned" not in w.reasons()


def test_off_mode_reads_nothing_and_reports_nothing() -> None:
    w = ready_world(**{"drift.mode": "Off"})
    w.serve_drifted()
    w.run()
    assert w.metrics.reads == []
    assert "workload" not in w.status() and w.condition("WorkloadDrift") is None
    assert ("list", "pods", "") not in w.kube.calls


def test_a_second_drift_waits_for_the_cooldown() -> None:
    w = ready_world(**{"drift.cooldownSeconds": 1000})
    w.serve_drifted()
    w.run()
    first = w.status()["plan"]
    w.make_ready()
    w.serve({300: 1500}, {20: 1500})  # back to other lengths
    w.clock += INTERVAL

    w.run()

    cond = w.condition("WorkloadDrift")
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "CoolingDown")
    assert w.status()["plan"] == first
    w.clock += 1000 - INTERVAL
    w.run()
    cond = w.condition("WorkloadDrift")
    assert cond is not None and cond["reason"] == "Replanned"
    assert w.status()["workload"]["observed"]["input"]["edges"] == [257, 305, 512, 513]
    assert w.status()["plan"]["inputsHash"] != first["inputsHash"]


def test_editing_the_spec_workload_goes_back_to_the_declaration() -> None:
    w = ready_world()
    declared = w.status()["plan"]["inputsHash"]
    w.serve_drifted()
    w.run()
    assert w.status()["workload"]["source"] == "Observed"

    w.edit("workload", {"preset": "translation"})
    w.run()

    workload = w.status()["workload"]
    assert workload["source"] == "Spec" and "observed" not in workload
    assert w.condition("WorkloadDrift") is None
    plan = w.status()["plan"]
    assert plan["inputsHash"] != declared
    # The plan is the one for the declared workload: as planning it afresh gives.
    fresh = World(**{"workload": {"preset": "translation"}})
    fresh.run()
    assert fresh.status()["plan"]["inputsHash"] == plan["inputsHash"]


def test_switching_to_observe_plans_for_the_declaration_again() -> None:
    w = ready_world()
    declared = w.status()["plan"]["inputsHash"]
    w.serve_drifted()
    w.run()
    w.edit("drift.mode", "Observe")
    w.run()
    assert w.status()["workload"]["source"] == "Spec"
    assert w.status()["plan"]["inputsHash"] == declared


def test_workload_aware_reads_the_encoder_drivers() -> None:
    w = ready_world(strategy="WorkloadAware")
    assert w.status()["plan"]["strategy"] == "WorkloadAware"
    drivers = w.drivers()  # the running plan's (the new plan may run more replicas)
    w.serve_drifted()
    w.run()
    assert {r[1] for r in w.metrics.reads} == set(drivers)
    assert drivers and all(pod.startswith("x-encoder-") for pod in drivers)
    assert w.status()["workload"]["source"] == "Observed"
    encoder = w.kube.objects[("statefulsets", "default", names.statefulset("x", "encoder"))]
    assert (
        encoder["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH]
        == (w.status()["plan"]["hash"])
    )


# -- the pure pieces ---------------------------------------------------------------------------


def report(distance: float, requests: int = 5000) -> DriftReport:
    return DriftReport(
        input_distance=distance, output_distance=0.0, requests=requests, threshold=0.2,
        min_requests=1000,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("r", "mode", "replanned_at", "expected"),
    [
        (report(0.5, requests=10), "Replan", None, ("Unknown", "TooFewRequests", False)),
        (report(0.1), "Replan", None, ("False", "NoDrift", False)),
        (report(0.2), "Replan", None, ("True", "Replanned", True)),
        (report(0.5), "Observe", None, ("True", "Drifted", False)),
        (report(0.5), "Replan", "2023-11-14T22:00:00Z", ("True", "CoolingDown", False)),
        (report(0.5), "Replan", "2023-11-14T20:00:00Z", ("True", "Replanned", True)),
    ],
)
def test_verdicts(
    r: DriftReport, mode: str, replanned_at: str | None, expected: tuple[str, str, bool]
) -> None:
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    v: Verdict = verdict(r, DriftSpec.model_validate({"mode": mode}), now, replanned_at)
    assert (v.status, v.reason, v.replan) == expected


def test_a_check_is_due_after_the_interval_since_the_later_of_check_and_readiness() -> None:
    now = 1_700_000_000.0  # 2023-11-14T22:13:20Z
    assert check_due(now, 300, None, None)
    assert check_due(now, 300, "2023-11-14T22:08:20Z", "2023-11-14T20:00:00Z")
    assert not check_due(now, 300, "2023-11-14T22:08:21Z", None)
    assert not check_due(now, 300, None, "2023-11-14T22:10:00Z")


def test_the_observed_workload_round_trips_through_status() -> None:
    bounds = [float(2**i) for i in range(16)] + [float("inf")]
    counts_in = [0] * 17
    counts_in[9] = 4
    counts_out = [0] * 17
    counts_out[5] = 3
    spec = observed_workload(bounds, counts_in, counts_out, max_length=2048)
    assert from_status(to_status(spec)) == spec


def test_the_state_starts_afresh_when_the_declared_workload_changes() -> None:
    spec = parse_spec(deployment("x")["spec"])
    state = current_state(None, spec)
    assert state.source == "Spec" and state.observed is None
    kept = state.model_copy(update={"checked_at": "2023-11-14T22:08:20Z"})
    assert current_state(kept, spec).checked_at == "2023-11-14T22:08:20Z"
    other = parse_spec(deployment("x", **{"workload": {"preset": "chat"}})["spec"])
    assert current_state(kept, other).checked_at is None
