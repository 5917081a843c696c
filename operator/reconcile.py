"""One level-based reconcile pass of an ExeGPTDeployment.

Everything is derived from the spec, the status written by earlier passes and the
observed children, so a pass can be repeated at any time, after a crash at any point,
with the same result: children have deterministic names, creation races end in
"already exists" and are taken as success, and nothing is written when the observed
state already matches (a converged deployment costs only reads).

Steps: parse the spec -> get the profile (analytic, cached, or a profiling Job) ->
plan, only when the planning inputs changed -> render the children for the plan and
apply what differs -> derive conditions from what is observed -> write the status if
it changed.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import Architecture, Dtype
from exegpt.planner.describe import plan_summary
from exegpt.planner.drift import judge, observed_workload
from exegpt.planner.hardware import GpuType
from exegpt.planner.plan import Engine, Infeasible, Plan, PlanRequest, Prediction
from exegpt.planner.profile import Profile, measured_profile_key
from exegpt.planner.scheduler import schedule
from exegpt.planner.workerplan import WorkerPlan, WorkerPlanError

from . import builders, drift, failure, names, plandoc
from .deployments import PassCache
from .kube import (
    CONFIGMAP,
    EXEGPT,
    JOB,
    JSON,
    NETWORKPOLICY,
    POD,
    ROLE,
    ROLEBINDING,
    SERVICE,
    SERVICEACCOUNT,
    STATEFULSET,
    Api,
    Kind,
    KubeError,
)  # fmt: skip
from .metrics import (
    HttpMetricsReader,
    LengthHistograms,
    MetricsError,
    MetricsReader,
    driver_pods,
    parse_length_histograms,
)
from .parsing import parse, spec_key
from .podspec import PLAN_KEY
from .profiling import ProfilingDecision, decide, failure_record, has_profile, recorded_failure
from .request import SpecError, plan_request
from .settings import OperatorSettings
from .spec import ExeGPTDeploymentSpec
from .status import (
    AlternativeStatus,
    ConditionStatus,
    ConditionType,
    ExeGPTDeploymentStatus,
    InfeasibleStatus,
    PlanStatus,
    PredictedStatus,
    ProfileStatus,
    ReplicasStatus,
    get_condition,
    remove_condition,
    set_condition,
)
from .telemetry import OperatorMetrics

EventSink = Callable[[str, str, str], None]  # (type: Normal|Warning, reason, message)
KINDS: dict[str, Kind] = {
    "ConfigMap": CONFIGMAP,
    "Service": SERVICE,
    "StatefulSet": STATEFULSET,
    "Job": JOB,
    "NetworkPolicy": NETWORKPOLICY,
    "ServiceAccount": SERVICEACCOUNT,
    "Role": ROLE,
    "RoleBinding": ROLEBINDING,
}
WORKER_COMPONENTS = (
    names.WORKER,
    names.ENCODER,
    names.DECODER,
    names.ROUTER,
    *(names.nodes_of(c) for c in (names.WORKER, names.ENCODER, names.DECODER)),
)  # every StatefulSet a plan may run; one the current plan does not is deleted
PLANNER_VERSION = "2"  # raised when the same spec plans differently (2: margin and gain defaults)
# Pod fields the operator never sets that widen what a pod may reach or run: set on a
# child by someone else, they are removed (see docs/operator.md).
FOREIGN_POD_FIELDS = (
    "hostNetwork", "hostPID", "hostIPC", "hostUsers", "shareProcessNamespace", "hostAliases",
    "nodeName", "initContainers", "ephemeralContainers", "runtimeClassName",
)  # fmt: skip
T = TypeVar("T")


@dataclass
class Context:
    kube: Api
    settings: OperatorSettings
    events: EventSink
    clock: Callable[[], float] = time.time
    metrics: MetricsReader = field(default_factory=HttpMetricsReader)
    # Per deployment (uid), the resourceVersion of the body the last status-writing pass
    # of this process started from: a body of that version predates the write.
    written: dict[str, str] = field(default_factory=dict)
    telemetry: OperatorMetrics = field(default_factory=OperatorMetrics)
    # This deployment's parsed spec and last planner result, from earlier passes.
    cache: PassCache = field(default_factory=PassCache)
    # Where parsing and planning run (None: the loop's default executor).
    executor: Executor | None = None
    # Measured profiles this process has read (key -> JSON), shared by the deployments:
    # a deleted profile ConfigMap is restored from here instead of profiling again.
    profiles: dict[str, str] = field(default_factory=dict)

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


@dataclass
class Outcome:
    """What a pass did: the writes it made to children, and whether it is waiting."""

    writes: list[str] = field(default_factory=list)
    status_written: bool = False
    waiting: bool = False
    stale: bool = False  # the body predated this process's last status write: skipped


class _Pass:
    """State of one pass over one deployment."""

    def __init__(self, body: Mapping[str, Any], ctx: Context) -> None:
        meta = body.get("metadata") or {}
        self.body = body
        self.ctx = ctx
        self.name = str(meta.get("name", ""))
        self.namespace = str(meta.get("namespace", "default"))
        self.uid = str(meta.get("uid") or "")
        self.version = str(meta.get("resourceVersion") or "")
        self.generation = int(meta.get("generation") or 0)
        self.owner = builders.owner_reference(meta)
        raw = dict(body.get("status") or {})
        raw.pop("kopf", None)
        self.old_raw = raw
        try:
            self.status = ExeGPTDeploymentStatus.model_validate(raw)
        except ValidationError:
            self.status = ExeGPTDeploymentStatus()
        self.old = self.status.model_copy(deep=True)
        self.outcome = Outcome()
        # Children read earlier in this pass, by (kind, name): read once per pass (the
        # pass holds the deployment's lock, so nothing of the operator's changes them).
        self.seen: dict[tuple[str, str], JSON] = {}
        # Events are posted once the status that records their transition is written:
        # a pass that fails before (and is retried), or a process killed in between,
        # does not post them twice.
        self.pending: list[tuple[str, str, str]] = []

    # -- conditions and events ---------------------------------------------------------
    def condition(
        self, type_: ConditionType, status: ConditionStatus, reason: str, message: str
    ) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, status, reason, message, self.generation,
            at=_rfc3339(self.ctx.clock()),
        )  # fmt: skip

    def transitioned(self, type_: ConditionType) -> bool:
        new = get_condition(self.status.conditions, type_)
        old = get_condition(self.old.conditions, type_)
        if new is None:
            return False
        return old is None or (old.status, old.reason) != (new.status, new.reason)

    def event(self, warning: bool, reason: str, message: str) -> None:
        self.pending.append(("Warning" if warning else "Normal", reason, message))

    def post_events(self) -> None:
        pending, self.pending = self.pending, []
        for kind, reason, message in pending:
            self.ctx.events(kind, reason, message)

    # -- status ------------------------------------------------------------------------------
    async def write_status(self) -> None:
        self.status.observed_generation = self.generation
        new = self.status.model_dump(by_alias=True, exclude_none=True, mode="json")
        if new == self.old_raw:
            self.post_events()
            return
        patch = _merge_patch(self.old_raw, new)
        # The body may predate another pass's write: clear every status field this pass
        # does not set, whatever the body showed.
        for name, info in ExeGPTDeploymentStatus.model_fields.items():
            key = info.alias or name
            if key not in new:
                patch[key] = None
        patch = {"status": patch}
        await self.ctx.kube.merge_patch(EXEGPT, self.namespace, self.name, patch, "status")
        self.outcome.status_written = True
        if self.uid and self.version:
            self.ctx.written[self.uid] = self.version
        self.post_events()

    @property
    def stale(self) -> bool:
        """Whether this process already wrote the status over this very body (the newer
        body is on its way). A pass over it would act on the status as it was before:
        roll the workers back to the previous plan, or check for drift again."""
        return bool(self.uid and self.version) and self.ctx.written.get(self.uid) == self.version


async def reconcile(body: Mapping[str, Any], ctx: Context) -> Outcome:
    """Bring one deployment's children and status in line with its spec (nothing, for
    a body older than this process's last status write: the next pass gets the newer)."""
    p = _Pass(body, ctx)
    if p.stale:
        p.outcome.stale = True
        return p.outcome
    _recovered(p)
    spec, request = await _parse(p)
    if spec is None or request is None:
        await p.write_status()
        return p.outcome
    profile = await _profile(p, spec, request)
    if profile is None:
        p.outcome.waiting = True
        await p.write_status()
        return p.outcome
    spec, request = await _drift(p, spec, request, profile)
    plan = await _plan(p, spec, request, profile)
    if plan is not None:
        await _workers(p, spec, plan)
    await p.write_status()
    return p.outcome


def _recovered(p: _Pass) -> None:
    """This pass got as far as reading the spec: drop what ``Degraded`` said about
    failing API requests (the steps below say what holds now)."""
    degraded = get_condition(p.status.conditions, "Degraded")
    if degraded is None or degraded.reason not in failure.REASONS:
        return
    if p.status.infeasible is not None:
        p.condition("Degraded", "True", "Infeasible", p.status.infeasible.message)
    else:
        p.condition("Degraded", "False", "AsExpected", "")


# -- 1. spec -------------------------------------------------------------------------------
async def _parse(p: _Pass) -> tuple[ExeGPTDeploymentSpec | None, PlanRequest | None]:
    raw = p.body.get("spec") or {}
    key, cache = spec_key(raw), p.ctx.cache
    if cache.parsed is None or cache.spec_key != key:
        # Off the loop: building the workload is arithmetic over its lengths.
        cache.parsed, cache.spec_key = await p.ctx.offload(parse, raw), key
    parsed = cache.parsed
    if parsed.spec is not None and parsed.request is not None:
        return parsed.spec, parsed.request
    message = parsed.error
    p.condition("Planned", "False", "InvalidSpec", message)
    p.condition("Degraded", "True", "InvalidSpec", message)
    p.condition("Progressing", "False", "InvalidSpec", "fix the spec to continue")
    if p.transitioned("Planned"):
        p.event(True, "InvalidSpec", message)
    return None, None


# -- 2. profile ----------------------------------------------------------------------------
async def _profile(p: _Pass, spec: ExeGPTDeploymentSpec, request: PlanRequest) -> Profile | None:
    arch, gpu = request.architecture, request.gpu
    degrees = arch.tensor_parallel_degrees(limit=min(request.gpus_per_node, request.gpus))
    if spec.profiling.mode == "Analytic":
        profile = await p.ctx.offload(_analytic_profile, arch, gpu, request.dtype, tuple(degrees))
        p.status.profile = ProfileStatus(
            key=profile.key, source="analytic", gpu_type=gpu.name, config_map=None
        )
        p.condition(
            "Profiled", "True", "Analytic",
            f"analytic profile of {arch.name} on {gpu.name} ({request.dtype})",
        )  # fmt: skip
        return profile
    engine_profiled: Engine = "vLLM" if request.engine == "vLLM" else "ExeGPT"
    key = measured_profile_key(arch, gpu.name, request.dtype, engine_profiled)
    cm_name = names.profile_configmap(key)
    kube, ns, s = p.ctx.kube, p.namespace, p.ctx.settings
    image = spec.profiling.image or s.runtime_image
    if not s.profiler_image_allowed(image):
        message = (
            f"profiler image {image!r} is not allowed by the operator (allowed: "
            f"{', '.join(s.allowed_profiler_images)}); set spec.profiling.image to an "
            "allowed image, or ask the operator's admin to allow it (chart value "
            "profiler.allowedImages)"
        )
        p.status.profile = ProfileStatus(
            key=key, source="measured", gpu_type=gpu.name, config_map=cm_name
        )
        p.condition("Profiled", "False", "ImageNotAllowed", message)
        p.condition("Progressing", "False", "ImageNotAllowed", message)
        p.condition("Degraded", "True", "ImageNotAllowed", message)
        if p.transitioned("Profiled"):
            p.event(True, "ImageNotAllowed", message)
        return None
    configmap = await kube.get(CONFIGMAP, ns, cm_name)
    kept = p.ctx.profiles.get(key)
    if configmap is None and kept is not None:
        configmap = await _create(p, builders.build_profile_configmap(ns, key, kept))
    jobs: list[JSON] = []
    if not has_profile(configmap):
        selector = f"{names.LABEL_PROFILE}={names.profile_digest(key)}"
        jobs = await kube.list(JOB, ns, selector)
        # A Job writes the profile before it succeeds, so the ConfigMap is read after
        # the Jobs: a Job that finished since the first read has its profile seen.
        configmap = await kube.get(CONFIGMAP, ns, cm_name)
    d = decide(
        key, configmap, jobs, now=p.ctx.clock(), max_retries=spec.profiling.max_retries,
        timeout_seconds=spec.profiling.timeout, backoff_seconds=s.retry_backoff_seconds,
        backoff_max_seconds=s.retry_backoff_max_seconds,
    )  # fmt: skip
    p.status.profile = ProfileStatus(
        key=key, source="measured", gpu_type=gpu.name, config_map=cm_name, job=d.job,
        attempts=d.attempts,
    )  # fmt: skip
    if d.action == "ready":
        loaded = _load_profile(p, d, cm_name)
        if loaded is not None and d.profile_text:
            _keep(p.ctx.profiles, key, d.profile_text)
        return loaded
    if d.action == "create":
        if configmap is None:
            await _create(p, builders.build_profile_configmap(ns, key))
        job_name = names.profile_job(key, d.attempts + 1)
        job = builders.build_profile_job(
            ns, spec, key, d.attempts + 1, image, job_name, spec.profiling.timeout,
            engine_profiled,
        )  # fmt: skip
        created = await _create(p, job)
        await _profiler_access(p, key, created)
        p.status.profile.attempts = d.attempts + 1
        p.ctx.telemetry.profiling_jobs.inc("created")
    elif d.action == "wait" and d.reason == "Profiling":
        # The running Job's access, in case a crash came between creating the two.
        running = [j for j in jobs if (j.get("metadata") or {}).get("name") == d.job]
        if running:
            await _profiler_access(p, key, running[0])
    failed = d.action == "failed"
    if failed and d.reason == "ProfilingFailed":
        await _clean_up_failed_jobs(p, key, configmap, jobs, d)
    p.condition("Profiled", "False", d.reason, d.message)
    p.condition("Progressing", "False" if failed else "True", d.reason, d.message)
    p.condition("Degraded", "True" if failed else "False", d.reason if failed else "AsExpected",
                d.message if failed else "")  # fmt: skip
    if p.transitioned("Profiled") or d.action == "create":
        reason = {"create": "ProfilingStarted", "failed": d.reason}.get(d.action, d.reason)
        p.event(failed, reason, d.message)
    return None


async def _profiler_access(p: _Pass, key: str, job: JSON) -> None:
    meta = job.get("metadata") or {}
    uid = meta.get("uid")
    for obj in builders.build_profiler_access(
        p.namespace, key, str(meta.get("name")), str(uid) if uid else None
    ):
        await _apply(p, obj)


async def _clean_up_failed_jobs(
    p: _Pass, key: str, configmap: JSON | None, jobs: list[JSON], d: ProfilingDecision
) -> None:
    """Retries are exhausted: record the failure on the profile's ConfigMap (so it
    outlives the Jobs: every deployment sharing the profile, and a restarted operator,
    see it), then delete the failed Jobs with their pods. Deleting the ConfigMap
    starts profiling again."""
    cm_name = names.profile_configmap(key)
    if recorded_failure(configmap) is None:
        record = failure_record(key, p.namespace, d)
        if configmap is None:
            await _create(p, record)
        else:
            meta = {"annotations": record["metadata"]["annotations"]}
            await p.ctx.kube.merge_patch(CONFIGMAP, p.namespace, cm_name, {"metadata": meta})
            p.outcome.writes.append(f"patch ConfigMap/{cm_name}")
        p.ctx.telemetry.profiling_jobs.inc("failed")
    digest = names.profile_digest(key)
    for job in jobs:
        meta = job.get("metadata") or {}
        if (meta.get("labels") or {}).get(names.LABEL_PROFILE) != digest:
            continue
        await p.ctx.kube.delete(JOB, p.namespace, str(meta.get("name")), propagation="Background")
        p.outcome.writes.append(f"delete Job/{meta.get('name')}")
        p.ctx.telemetry.profiling_jobs.inc("deleted")


KEPT_PROFILES = 32


def _keep(profiles: dict[str, str], key: str, text: str) -> None:
    """Remember ``text`` as the profile ``key`` (the most recent ``KEPT_PROFILES``)."""
    profiles.pop(key, None)
    profiles[key] = text
    while len(profiles) > KEPT_PROFILES:
        profiles.pop(next(iter(profiles)))


@functools.lru_cache(maxsize=64)
def _analytic_profile(
    arch: Architecture, gpu: GpuType, dtype: Dtype, degrees: tuple[int, ...]
) -> Profile:
    """The analytic profile is a pure function of its inputs; every pass of every
    deployment asks for it, so it is built once per distinct set."""
    return analytic_profile(arch, gpu, dtype, degrees)


def _load_profile(p: _Pass, d: ProfilingDecision, cm_name: str) -> Profile | None:
    try:
        profile = Profile.from_json(d.profile_text or "")
    except ValueError as exc:
        message = f"ConfigMap {cm_name} holds no valid profile: {str(exc)[:300]}"
        p.condition("Profiled", "False", "InvalidProfile", message)
        p.condition("Degraded", "True", "InvalidProfile", message)
        if p.transitioned("Profiled"):
            p.event(True, "InvalidProfile", message)
        return None
    prov = profile.provenance
    p.condition("Profiled", "True", "ProfileCached",
                f"measured profile from ConfigMap {cm_name} ({prov.gpu_type}, {prov.dtype}, "
                f"{prov.profiler_version})")  # fmt: skip
    if p.transitioned("Profiled"):
        p.event(False, "ProfilingFinished", f"using the measured profile in {cm_name}")
    return profile


# -- 2b. traffic drift -----------------------------------------------------------------------
async def _drift(
    p: _Pass, spec: ExeGPTDeploymentSpec, request: PlanRequest, profile: Profile
) -> tuple[ExeGPTDeploymentSpec, PlanRequest]:
    """The spec and request to plan with: ``spec.workload``, or the observed workload a
    drift replan adopted. Reads the workers' metrics when a check is due and, in
    ``Replan`` mode, adopts the observed workload when the traffic drifted."""
    d = spec.drift
    if d.mode == "Off":
        p.status.workload = None
        p.status.conditions = remove_condition(p.status.conditions, "WorkloadDrift")
        return spec, request
    state = drift.current_state(p.status.workload, spec)
    if p.status.workload is None or state.spec_hash != p.status.workload.spec_hash:
        p.status.conditions = remove_condition(p.status.conditions, "WorkloadDrift")
    p.status.workload = state
    planned, planned_request = spec, request
    if state.observed is not None:
        try:
            planned = drift.with_workload(spec, drift.from_status(state.observed))
            planned_request = plan_request(planned)
        except (SpecError, ValueError):
            # No longer plannable (e.g. the model changed): back to the declaration.
            state.observed, state.source = None, "Spec"
            planned, planned_request = spec, request
    plan, available = p.status.plan, get_condition(p.old.conditions, "Available")
    now = p.ctx.clock()
    if (
        plan is None
        or p.status.infeasible is not None
        or available is None
        or available.status != "True"
        or plan.inputs_hash != inputs_hash(planned, profile)
        or not drift.check_due(
            now, d.interval_seconds, state.checked_at, available.last_transition_time
        )
    ):
        return planned, planned_request
    state.checked_at = _rfc3339(now)
    try:
        seen = await _read_lengths(p, spec.runner.port)
        report = judge(
            planned_request.workload, seen.bounds, seen.input, seen.output,
            threshold=d.threshold, min_requests=d.min_requests,
        )  # fmt: skip
    except (MetricsError, KubeError, ValueError) as exc:
        message = f"cannot read the workers' request lengths: {str(exc)[:300]}"
        p.condition("WorkloadDrift", "Unknown", "MetricsUnavailable", message)
        if p.transitioned("WorkloadDrift"):
            p.event(True, "MetricsUnavailable", message)
        return planned, planned_request
    state.requests = report.requests
    state.input_distance = round(report.input_distance, 4)
    state.output_distance = round(report.output_distance, 4)
    v = drift.verdict(report, d, now, state.replanned_at)
    if v.replan:
        max_length = request.architecture.max_positions
        declared = request.workload  # spec.workload: the longest lengths it must serve
        longest = (declared.input.max, declared.output.max)
        try:
            observed = observed_workload(seen.bounds, seen.input, seen.output, max_length, longest)
            candidate = drift.with_workload(spec, observed)
            candidate_request = plan_request(candidate)
        except (SpecError, ValueError) as exc:
            v = drift.Verdict(
                "True", "NotPlannable", f"{v.message}, which cannot be planned: {exc}"
            )
        else:
            state.observed, state.source = drift.to_status(observed), "Observed"
            state.replanned_at = _rfc3339(now)
            p.condition("WorkloadDrift", v.status, v.reason, v.message)
            p.event(False, "WorkloadDrifted", v.message)
            return candidate, candidate_request
    p.condition("WorkloadDrift", v.status, v.reason, v.message)
    if v.status == "True" and p.transitioned("WorkloadDrift"):
        p.event(True, "WorkloadDrifted", v.message)
    return planned, planned_request


async def _read_lengths(p: _Pass, port: int) -> LengthHistograms:
    """The request-length histograms of the running plan's drivers, summed."""
    plan = p.status.plan
    assert plan is not None
    # the entry StatefulSet (RoundRobin's workers, WorkloadAware's encoders) drives; on
    # vLLM (one server per pod, plandoc.roles), WorkloadAware's decode servers see whole
    # requests (prefill ones, one token)
    if plan.engine == "vLLM":
        role = names.DECODER if plan.strategy == "WorkloadAware" else names.WORKER
        stages = 1
    elif plan.strategy == "WorkloadAware":
        role, stages = names.ENCODER, plan.encode_stages
    else:
        role, stages = names.WORKER, plan.pipeline_stages
    selector = ",".join(f"{k}={v}" for k, v in sorted(names.selector(p.name, role).items()))
    pods = await p.ctx.kube.list(POD, p.namespace, selector)
    drivers = driver_pods(pods, names.statefulset(p.name, role), stages)
    if len(drivers) < plan.replicas:
        raise MetricsError(f"{len(drivers)} of {plan.replicas} replica driver pods are ready")
    deadline = p.ctx.settings.metrics_timeout_seconds
    try:
        async with asyncio.timeout(deadline):  # all of them, however slowly they answer
            texts = await asyncio.gather(
                *(p.ctx.metrics.read(p.namespace, pod.name, pod.ip, port) for pod in drivers)
            )
    except TimeoutError:
        raise MetricsError(f"the workers' /metrics did not answer within {deadline:g} s") from None
    total = parse_length_histograms(texts[0])
    for text in texts[1:]:
        total += parse_length_histograms(text)
    return total


# -- 3. plan -------------------------------------------------------------------------------
def inputs_hash(spec: ExeGPTDeploymentSpec, profile: Profile) -> str:
    """What planning depends on; an unchanged hash means the plan stands. ``spec`` is
    the spec planned with: after a drift replan its workload is the observed one."""
    doc = {
        "planner": PLANNER_VERSION,
        "model": spec.model.model_dump(mode="json", exclude={"weights"}),
        "hardware": spec.hardware.model_dump(
            mode="json", include={"gpus", "gpu_type", "gpus_per_node"}
        ),
        "workload": spec.workload.model_dump(mode="json"),
        "slo": spec.slo.model_dump(mode="json"),
        "strategy": spec.strategy,
        "min_gain": spec.min_gain,
        "profile": profile.key,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


Planned = Plan | WorkerPlan
"""What a pass runs: a new plan, or the worker plan the plan ConfigMap holds."""


async def _plan(
    p: _Pass, spec: ExeGPTDeploymentSpec, request: PlanRequest, profile: Profile
) -> Planned | None:
    """The plan the workers run: the running one (read back from the plan ConfigMap)
    while the planning inputs are unchanged, else a new one. A running plan whose
    document is missing or unreadable is planned again, never rebuilt from status."""
    digest = inputs_hash(spec, profile)
    old = p.status.plan
    if p.status.infeasible is not None and p.status.infeasible.inputs_hash == digest:
        return await _running(p) if old else None
    running = await _running(p) if old is not None and old.inputs_hash == digest else None
    if old is not None and running is not None:
        if p.status.infeasible is not None:
            # Back to the inputs of the running plan (e.g. an infeasible SLO reverted).
            p.status.infeasible = None
            summary = plan_summary(running.config, running.predicted)
            p.condition("Planned", "True", "Planned", f"{summary}; {old.reason}")
            p.condition("Degraded", "False", "AsExpected", "")
            p.event(False, "Replanned", f"back to the running plan: {summary}")
        return running
    p.condition("Progressing", "True", "Planning", "searching for the best plan")
    cache = p.ctx.cache
    if cache.planned is not None and cache.plan_key == digest:
        result = cache.planned  # planned by a pass that failed to record it: not again
    else:
        started = time.monotonic()
        result = await p.ctx.offload(
            functools.partial(schedule, time_limit_s=p.ctx.settings.plan_time_limit_seconds),
            request, profile,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        p.ctx.telemetry.plan_seconds.observe(elapsed, "replan" if old else "plan")
        cache.planned, cache.plan_key = result, digest
    if isinstance(result, Infeasible):
        p.status.infeasible = InfeasibleStatus(
            latency_bound_seconds=result.latency_bound_s,
            latency_margin=result.latency_margin,
            best_latency_seconds=result.best_latency_s,
            message=result.message,
            inputs_hash=digest,
        )
        p.condition("Planned", "False", "Infeasible", result.message)
        p.condition("Degraded", "True", "Infeasible", result.message)
        kept = " (the workers keep the previous plan)" if old else ""
        p.condition("Progressing", "False", "Infeasible", result.message + kept)
        p.event(True, "Infeasible", result.message + kept)
        return await _running(p) if old else None
    p.status.infeasible = None
    previous_hash = old.hash if old else ""
    p.status.plan = plan_status(result, digest, previous_hash, names.plan_configmap(p.name))
    summary = plan_summary(result.config, result.predicted)
    p.condition("Planned", "True", "Planned", f"{summary}; {result.reason}")
    p.condition("Degraded", "False", "AsExpected", "")
    p.event(False, "Replanned" if old else "PlanChosen", f"{summary}; {result.reason}")
    return result


async def _running(p: _Pass) -> WorkerPlan | None:
    """The worker plan in the plan ConfigMap, if it is the one status records (its hash);
    None when the ConfigMap is missing, unreadable, or holds another plan."""
    recorded = p.status.plan
    if recorded is None:
        return None
    name = names.plan_configmap(p.name)
    configmap = await p.ctx.kube.get(CONFIGMAP, p.namespace, name)
    if configmap is not None:
        p.seen[("ConfigMap", name)] = configmap
    text = ((configmap or {}).get("data") or {}).get(PLAN_KEY)
    if not isinstance(text, str):
        return None
    try:
        doc = WorkerPlan.from_json(text, f"ConfigMap {name}")
    except WorkerPlanError:
        return None
    return doc if doc.hash() == recorded.hash else None


def _predicted(q: Prediction) -> PredictedStatus:
    return PredictedStatus(
        throughput_qps=round(q.throughput_qps, 4),
        throughput_tps=round(q.throughput_tps, 2),
        latency_seconds=round(q.latency_s, 4),
        e2e_p99_seconds=round(q.e2e_p99_s, 4),
        memory_per_gpu_gib=round(q.memory_per_gpu_bytes / 2**30, 2),
    )


def plan_status(plan: Plan, digest: str, worker_hash: str, configmap: str) -> PlanStatus:
    c = plan.config
    return PlanStatus(
        strategy=plan.strategy,
        engine=plan.engine,
        replicas=c.replicas,
        tensor_parallel=c.tensor_parallel,
        tp_scope=c.tp_scope,
        pipeline_stages=c.pipeline_stages,
        micro_batches=c.micro_batches,
        encode_batch=c.encode_batch,
        decode_batch=c.decode_batch,
        decode_steps_per_encode=c.decode_steps_per_encode,
        encode_gpus=c.encode_gpus,
        encode_tensor_parallel=c.encode_tp,
        encode_stages=c.encode_stages,
        decode_gpus=c.decode_gpus,
        latency_bound_seconds=plan.latency_bound_s,
        latency_margin=plan.latency_margin,
        min_gain=plan.min_gain,
        predicted=_predicted(plan.predicted),
        baselines={k: _predicted(v.predicted) for k, v in plan.baselines.items() if v},
        alternatives=[
            AlternativeStatus(
                strategy=a.config.strategy,
                throughput_qps=round(a.predicted.throughput_qps, 4),
                latency_seconds=round(a.predicted.latency_s, 4),
                summary=plan_summary(a.config, a.predicted),
            )
            for a in plan.alternatives
        ],
        reason=plan.reason,
        search_seconds=round(plan.search.seconds, 3),
        evaluated=plan.search.evaluated,
        hash=worker_hash,
        inputs_hash=digest,
        config_map=configmap,
    )


# -- 4. workers ----------------------------------------------------------------------------
async def _workers(p: _Pass, spec: ExeGPTDeploymentSpec, plan: Planned) -> None:
    s = p.ctx.settings
    image = spec.runner.image or s.runtime_image
    doc = plandoc.plan_document(p.name, spec, plan, image)
    digest = doc.hash()
    workers = builders.build_workers(p.name, p.namespace, p.owner, spec, doc, digest, image)
    desired = [
        builders.build_plan_configmap(
            names.plan_configmap(p.name), p.namespace, p.owner, doc, digest
        ),
        *workers,
        builders.build_headless_service(p.name, p.namespace, p.owner),
        builders.build_client_service(p.name, p.namespace, p.owner, spec, plan),
        builders.build_network_policy(
            p.name, p.namespace, p.owner, spec, s.operator_namespace, s.operator_pod_labels
        ),
    ]
    # The worker StatefulSets in one list (by their labels) instead of a read per role:
    # both the ones the plan runs and those of another strategy to delete.
    roles = {names.statefulset(p.name, c) for c in WORKER_COMPONENTS}
    listed = await p.ctx.kube.list(STATEFULSET, p.namespace, names.owned_selector(p.name))
    for sts in listed:
        name = str((sts.get("metadata") or {}).get("name", ""))
        if name in roles:
            p.seen[("StatefulSet", name)] = sts
    observed: list[JSON] = []
    for obj in desired:
        current = await _apply(p, obj)
        if obj["kind"] == "StatefulSet":
            observed.append(current)
    wanted = {o["metadata"]["name"] for o in workers}
    for stale in sorted(roles - wanted):
        if ("StatefulSet", stale) in p.seen:
            await p.ctx.kube.delete(STATEFULSET, p.namespace, stale)
            p.outcome.writes.append(f"delete StatefulSet/{stale}")
    if p.status.plan is not None:
        previous = p.status.plan.hash
        p.status.plan.hash = digest
        if previous and previous != digest:
            p.event(False, "RolloutStarted", f"workers roll to plan {digest}")
    p.status.endpoint = names.endpoint(p.name, p.namespace, spec.runner.port)
    _readiness(p, observed, digest)


def _hash_of(obj: Mapping[str, Any]) -> str | None:
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    value = ann.get(names.ANNOTATION_PLAN_HASH)
    return str(value) if value is not None else None


def _readiness(p: _Pass, statefulsets: list[JSON], digest: str) -> None:
    desired = ready = 0
    rolling = False
    for sts in statefulsets:
        want = int((sts.get("spec") or {}).get("replicas") or 0)
        st = sts.get("status") or {}
        have = int(st.get("readyReplicas") or 0)
        updated = st.get("updatedReplicas")
        desired += want
        ready += min(have, want)
        if _hash_of(sts) != digest or have < want or (updated is not None and updated < want):
            rolling = True
    p.status.pods = ReplicasStatus(desired=desired, ready=ready)
    if desired and ready == desired and not rolling:
        p.condition("Available", "True", "WorkersReady", f"{ready}/{desired} worker pods ready")
        if p.status.infeasible is None:
            p.condition("Progressing", "False", "Converged", "workers run the current plan")
            p.condition("Degraded", "False", "AsExpected", "")
        if p.transitioned("Available"):
            p.event(False, "RolloutDone", f"{ready}/{desired} worker pods ready")
        return
    p.condition("Available", "False", "WorkersNotReady", f"{ready}/{desired} worker pods ready")
    if p.status.infeasible is None:
        p.condition("Progressing", "True", "Rolling", f"{ready}/{desired} worker pods ready")
        was = get_condition(p.old.conditions, "Available")
        if was is not None and was.status == "True":
            p.condition("Degraded", "True", "WorkersUnavailable",
                        f"{ready}/{desired} worker pods ready")  # fmt: skip


async def _create(p: _Pass, obj: JSON) -> JSON:
    kind, meta = KINDS[obj["kind"]], obj["metadata"]
    try:
        created = await p.ctx.kube.create(kind, p.namespace, obj)
        p.outcome.writes.append(f"create {obj['kind']}/{meta['name']}")
        return created
    except KubeError as exc:
        if exc.status != 409:
            raise
        conflict = exc
    # Created by a concurrent pass or another deployment sharing it: take it as done,
    # if it is there (a 409 for an object that is not, e.g. being deleted, is a failure).
    existing = await p.ctx.kube.get(kind, p.namespace, meta["name"])
    if existing is None:
        raise conflict
    return existing


async def _apply(p: _Pass, obj: JSON) -> JSON:
    """Create ``obj`` or patch the fields it sets that differ; return what is observed."""
    kind, name = KINDS[obj["kind"]], obj["metadata"]["name"]
    current = p.seen.get((obj["kind"], name))
    if current is None:
        current = await p.ctx.kube.get(kind, p.namespace, name)
    if current is None:
        return await _create(p, obj)
    foreign = _foreign_pod_fields(current, obj)
    if _contains(current, obj) and not foreign:
        return current
    patch = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    if foreign:
        patch = copy.deepcopy(patch)
        patch["spec"]["template"]["spec"].update(dict.fromkeys(foreign))  # null: removed
    try:
        out = await p.ctx.kube.merge_patch(kind, p.namespace, name, patch)
    except KubeError as exc:
        if exc.status != 409:
            raise
        out = await p.ctx.kube.merge_patch(kind, p.namespace, name, patch)
    p.outcome.writes.append(f"patch {obj['kind']}/{name}")
    return out or obj


def _foreign_pod_fields(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[str]:
    """The ``FOREIGN_POD_FIELDS`` set in ``current``'s pod template but not in
    ``desired``'s (for objects with a pod template)."""

    def pod(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
        template = (obj.get("spec") or {}).get("template")
        spec = template.get("spec") if isinstance(template, Mapping) else None
        return spec if isinstance(spec, Mapping) else None

    have, want = pod(current), pod(desired)
    if have is None or want is None:
        return []
    return [k for k in FOREIGN_POD_FIELDS if have.get(k) not in (None, False) and k not in want]


def _contains(current: Any, desired: Any) -> bool:
    """Whether every field ``desired`` sets has that value in ``current`` (fields the
    server adds, such as defaults and status, are ignored)."""
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return False
        return all(k in current and _contains(current[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(current, list) or len(current) != len(desired):
            return False
        return all(_contains(c, d) for c, d in zip(current, desired, strict=True))
    return bool(current == desired)


def _merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new`` (removed keys become null)."""
    out: dict[str, Any] = {}
    for k in old.keys() - new.keys():
        out[k] = None
    for k, v in new.items():
        was = old.get(k)
        if isinstance(v, Mapping) and isinstance(was, Mapping):
            sub = _merge_patch(was, v)
            if sub:
                out[k] = sub
        elif was != v or k not in old:
            out[k] = v
    return out


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
