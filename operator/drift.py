"""Pure pieces of the drift check (``reconcile`` runs it): what the plan is made for,
when a check is due, and what a check's report means.

The state lives in ``status.workload``: ``source`` (``Spec`` or ``Observed``), the hash of
the ``spec.workload`` it refers to, the observed workload planned for (bins and counts),
and the last check. Planning reads the observed workload back from there, so a
restarted operator plans exactly what the last one did.
"""

from __future__ import annotations

import calendar
import hashlib
import time
from dataclasses import dataclass

from exegpt.planner.drift import DriftReport
from exegpt.planner.workerplan import canonical_json
from exegpt.planner.workload_spec import HistogramSpec, LengthSpec, WorkloadSpec

from .spec import DriftSpec, ExeGPTDeploymentSpec
from .status import ConditionStatus, ObservedSideStatus, ObservedWorkloadStatus, WorkloadStatus


def workload_hash(workload: WorkloadSpec) -> str:
    """A content hash of a declared workload (``status.workload.specHash``)."""
    doc = canonical_json(workload.model_dump(mode="json"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def current_state(state: WorkloadStatus | None, spec: ExeGPTDeploymentSpec) -> WorkloadStatus:
    """``status.workload`` for this spec: started afresh (source ``Spec``) when there is
    none or ``spec.workload`` was edited since (the user's declaration wins again), the
    observed workload dropped unless ``drift.mode`` is ``Replan``."""
    digest = workload_hash(spec.workload)
    if state is None or state.spec_hash != digest:
        return WorkloadStatus(source="Spec", spec_hash=digest)
    out = state.model_copy(deep=True)
    if spec.drift.mode != "Replan" and out.observed is not None:
        out.observed, out.source = None, "Spec"
    return out


def to_status(workload: WorkloadSpec) -> ObservedWorkloadStatus:
    """An observed workload (histograms of bins, as ``planner.drift`` builds it) as it is
    kept in ``status.workload.observed``."""

    def side(length: LengthSpec | None) -> ObservedSideStatus:
        h = length.histogram if length is not None else None
        if h is None or h.edges is None:
            raise ValueError("an observed workload is two histograms of bins")
        return ObservedSideStatus(edges=list(h.edges), counts=[round(w) for w in h.weights])

    return ObservedWorkloadStatus(input=side(workload.input), output=side(workload.output))


def from_status(observed: ObservedWorkloadStatus) -> WorkloadSpec:
    """The workload spec ``status.workload.observed`` describes (sides independent)."""

    def side(s: ObservedSideStatus) -> LengthSpec:
        return LengthSpec(
            histogram=HistogramSpec(edges=s.edges, weights=[float(c) for c in s.counts])
        )

    return WorkloadSpec(input=side(observed.input), output=side(observed.output), correlation=0.0)


def with_workload(spec: ExeGPTDeploymentSpec, workload: WorkloadSpec) -> ExeGPTDeploymentSpec:
    """``spec`` planning for ``workload`` instead of ``spec.workload``."""
    return spec.model_copy(update={"workload": workload})


def parse_time(text: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 time as the operator writes it."""
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def check_due(
    now: float, interval_seconds: float, checked_at: str | None, ready_since: str | None
) -> bool:
    """Whether ``interval_seconds`` passed since both the last check and the moment the
    workers became ready (their counters start then)."""
    times = [t for t in (parse_time(checked_at), parse_time(ready_since)) if t is not None]
    return not times or now - max(times) >= interval_seconds


@dataclass(frozen=True)
class Verdict:
    """What a check's report means: the ``WorkloadDrift`` condition, and whether to
    replan for the observed workload."""

    status: ConditionStatus
    reason: str
    message: str
    replan: bool = False


def verdict(report: DriftReport, drift: DriftSpec, now: float, replanned_at: str | None) -> Verdict:
    """The condition and decision for ``report`` under ``drift`` at ``now``."""
    seen = (
        f"input distance {report.input_distance:.3f}, output distance "
        f"{report.output_distance:.3f} over {report.requests} requests (threshold "
        f"{drift.threshold:g})"
    )
    if not report.judged:
        return Verdict(
            "Unknown",
            "TooFewRequests",
            f"{report.requests} requests since the plan started; drift is judged from "
            f"{drift.min_requests} (drift.minRequests)",
        )
    if not report.drifted:
        return Verdict("False", "NoDrift", f"the traffic matches the planned workload: {seen}")
    if drift.mode == "Observe":
        return Verdict(
            "True", "Drifted", f"the traffic drifted from the planned workload: {seen}; "
            "drift.mode Observe does not replan",
        )  # fmt: skip
    last = parse_time(replanned_at)
    if last is not None and now - last < drift.cooldown_seconds:
        wait = int(last + drift.cooldown_seconds - now)
        return Verdict(
            "True", "CoolingDown", f"the traffic drifted from the planned workload: {seen}; "
            f"the last replan for drift is under drift.cooldownSeconds ago, next in {wait} s",
        )  # fmt: skip
    return Verdict(
        "True", "Replanned", f"the traffic drifted from the planned workload: {seen}; "
        "planned for the observed workload", replan=True,
    )  # fmt: skip
