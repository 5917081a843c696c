"""The ``ExeGPTDeployment`` custom resource (``exegpt.dev/v1alpha1``) as pydantic models.

These models are the single source of truth for the resource: the operator reads
bodies into them, ``exegpt plan`` validates manifests with them, and the CRD's
OpenAPI schema is generated from them. Hence they stay structural-schema friendly:
every field is typed, nothing is recursive, field descriptions are the CRD's
documentation, enums are ``Literal``\\s, bounds are ``ge``/``gt``/``le``, and
cross-field rules exist twice: as pydantic validators (with messages that name the
field and the fix) and as CEL rules (``x-kubernetes-validations``) for the API server.

This module imports only pydantic and the planner: the offline CLI uses it without
kopf or a Kubernetes client.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from exegpt.planner.architecture import PRESETS as MODEL_PRESETS
from exegpt.planner.architecture import Architecture, Dtype, get_architecture
from exegpt.planner.hardware import ALIASES as GPU_ALIASES
from exegpt.planner.hardware import PRESETS as GPU_PRESETS
from exegpt.planner.hardware import get_gpu
from exegpt.planner.plan import EngineChoice, StrategyChoice
from exegpt.planner.profilekeys import GROUP as GROUP
from exegpt.planner.workload_spec import WorkloadSpec

VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ExeGPTDeployment"
PLURAL = "exegptdeployments"
SINGULAR = "exegptdeployment"

# -- durations ---------------------------------------------------------------------------

_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_RE = re.compile(rf"^(?:{_NUMBER}(?:ms|s|m|h))+$")
_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_PLAIN_RE = re.compile(rf"^{_NUMBER}$")
DURATION_PATTERN = rf"^(?:{_NUMBER}(?:ms|s|m|h))+$|^{_NUMBER}$"
_DURATION_HELP = (
    "use a number of seconds or a duration string such as '3.1s', '500ms', '2m' or '1h30m'"
)


def parse_duration(value: object) -> float:
    """Seconds in ``value``: a number of seconds, or a string like ``3.1s``, ``500ms``,
    ``2m``, ``1h30m`` (units ``ms``, ``s``, ``m``, ``h``; a bare number is seconds).

    Raises ``PydanticCustomError`` (a ``ValueError``-like error pydantic reports at the
    field) for anything else; the result is positive and finite.
    """
    if isinstance(value, bool):
        raise PydanticCustomError(
            "duration", "invalid duration '{value}': " + _DURATION_HELP, {"value": value}
        )
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _PLAIN_RE.match(text):
            seconds = float(text)
        elif _DURATION_RE.match(text):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART_RE.findall(text))
        else:
            raise PydanticCustomError(
                "duration", "invalid duration '{value}': " + _DURATION_HELP, {"value": value}
            )
    else:
        raise PydanticCustomError(
            "duration",
            "invalid duration of type {type}: " + _DURATION_HELP,
            {"type": type(value).__name__},
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise PydanticCustomError(
            "duration", "duration must be positive, got '{value}'", {"value": value}
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest duration string for ``seconds`` that ``parse_duration`` reads back."""
    if seconds < 1:
        return f"{seconds * 1000:.10g}ms"
    if seconds >= 60 and seconds == int(seconds):
        h, rest = divmod(int(seconds), 3600)
        m, s = divmod(rest, 60)
        return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n)
    return f"{seconds:.10g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    # Kubernetes' own int-or-string form: whole seconds, or a duration string.
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": DURATION_PATTERN,
            "minimum": 1,
        }
    ),
]
"""Seconds, written as a number or a duration string; serialised to JSON as a string."""


def _cross_field(field: str, message: str) -> PydanticCustomError:
    """An error about ``field`` of the model being validated.

    ``format_errors`` appends ``field`` to the error's location, so the CLI prints
    ``spec.hardware.gpus: ...`` rather than ``spec.hardware: ...``.
    """
    return PydanticCustomError("cross_field", message, {"field": field})


_BASE = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# -- model ----------------------------------------------------------------------------------


class WeightsSpec(BaseModel):
    """Where the model's weights are: a directory on a PersistentVolumeClaim.

    Weights are never downloaded from a hub. Without ``weights`` the workers run with
    random weights, which is enough to benchmark a schedule (timing does not depend on
    the weight values).
    """

    model_config = _BASE

    pvc: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of a PersistentVolumeClaim in the deployment's namespace.",
    )
    path: str = Field(
        default="/",
        pattern=r"^/",
        description="Absolute path of the weights directory inside the volume.",
    )


class ModelSpec(BaseModel):
    """The model to serve: a preset ``name`` or an explicit ``architecture``."""

    model_config = ConfigDict(
        **_BASE,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.name) != has(self.architecture)",
                    "message": "set exactly one of model.name (a preset) and "
                    "model.architecture (an explicit architecture)",
                }
            ]
        },
    )

    name: (
        Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(MODEL_PRESETS)})] | None
    ) = Field(
        default=None,
        description="A model preset: " + ", ".join(sorted(MODEL_PRESETS)) + ".",
    )
    architecture: Architecture | None = Field(
        default=None,
        description="An explicit architecture, for a model that is not a preset.",
    )
    dtype: Dtype = Field(default="float16", description="Weight and activation data type.")
    weights: WeightsSpec | None = Field(
        default=None,
        description="Where the weights are; absent: random weights (benchmarking only).",
    )

    @field_validator("name")
    @classmethod
    def _known_preset(cls, v: str | None) -> str | None:
        if v is None:
            return None
        try:
            return get_architecture(v).name
        except KeyError:
            raise PydanticCustomError(
                "unknown_model",
                "unknown model preset '{name}'; use one of {known}, or give "
                "model.architecture instead of model.name",
                {"name": v, "known": ", ".join(sorted(MODEL_PRESETS))},
            ) from None

    @model_validator(mode="after")
    def _one_of(self) -> ModelSpec:
        if self.name is not None and self.architecture is not None:
            raise _cross_field(
                "architecture",
                "both model.name and model.architecture are set: keep model.name for a "
                "preset, or model.architecture for an explicit architecture, not both",
            )
        if self.name is None and self.architecture is None:
            raise _cross_field(
                "name",
                "no model given: set model.name to a preset ("
                + ", ".join(sorted(MODEL_PRESETS))
                + ") or give model.architecture",
            )
        return self

    def resolved_architecture(self) -> Architecture:
        """The architecture this spec names (preset or explicit)."""
        if self.architecture is not None:
            return self.architecture
        assert self.name is not None  # guaranteed by the validator
        return get_architecture(self.name)


# -- hardware --------------------------------------------------------------------------------


class Toleration(BaseModel):
    """A Kubernetes pod toleration (``core/v1 Toleration``), applied to every pod the
    operator creates (profiling Job and workers)."""

    model_config = ConfigDict(
        **_BASE,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.operator) || self.operator != 'Exists' "
                    "|| !has(self.value) || self.value == ''",
                    "message": "a toleration with operator Exists must not set value",
                },
                {
                    "rule": "(has(self.key) && self.key != '') "
                    "|| (has(self.operator) && self.operator == 'Exists')",
                    "message": "a toleration without key must use operator Exists",
                },
                {
                    "rule": "!has(self.tolerationSeconds) "
                    "|| (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds needs effect NoExecute",
                },
            ]
        },
    )

    key: str | None = Field(
        default=None, description="Taint key; empty with operator Exists matches all taints."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal (key and value match) or Exists (key matches)."
    )
    value: str | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        alias="tolerationSeconds",
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )

    @model_validator(mode="after")
    def _check(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise _cross_field(
                "value", "a toleration with operator Exists must not set value; remove it"
            )
        if not self.key and self.operator != "Exists":
            raise _cross_field(
                "key", "a toleration without key must use operator Exists (it matches all taints)"
            )
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise _cross_field(
                "tolerationSeconds",
                "tolerationSeconds only applies to effect NoExecute; set effect: NoExecute "
                "or remove tolerationSeconds",
            )
        return self

    def to_k8s(self) -> dict[str, Any]:
        """The toleration as it goes into a pod spec."""
        return self.model_dump(by_alias=True, exclude_none=True)


_GPU_NAMES = sorted(GPU_PRESETS)
_GPU_ENUM: list[JsonValue] = [*sorted([*_GPU_NAMES, *GPU_ALIASES])]


class HardwareSpec(BaseModel):
    """The GPU budget: how many GPUs of which type, and where they may be scheduled."""

    model_config = ConfigDict(
        **_BASE,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.gpus <= self.gpusPerNode || self.gpus % self.gpusPerNode == 0",
                    "message": "hardware.gpus must fit in one node (<= gpusPerNode) or be a "
                    "multiple of gpusPerNode",
                }
            ]
        },
    )

    gpus: int = Field(ge=1, le=4096, description="Total GPUs the deployment may use.")
    gpu_type: str = Field(
        alias="gpuType",
        description="GPU type: " + ", ".join(_GPU_NAMES) + " (or a short alias like a100-80gb).",
        json_schema_extra={"enum": _GPU_ENUM},
    )
    gpus_per_node: int = Field(
        default=8,
        ge=1,
        le=64,
        alias="gpusPerNode",
        description="GPUs per node; pipeline stages never split a tensor-parallel group "
        "across nodes.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        alias="nodeSelector",
        description="Node labels every pod (profiling Job and workers) must match.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Tolerations for every pod the operator creates."
    )

    @field_validator("gpu_type")
    @classmethod
    def _known_gpu(cls, v: str) -> str:
        try:
            return get_gpu(v).name
        except KeyError:
            raise PydanticCustomError(
                "unknown_gpu",
                "unknown GPU type '{name}'; use one of {known}",
                {"name": v, "known": ", ".join(_GPU_NAMES)},
            ) from None

    @model_validator(mode="after")
    def _whole_nodes(self) -> HardwareSpec:
        n, per = self.gpus, self.gpus_per_node
        if n > per and n % per != 0:
            lower, upper = n // per * per, (n // per + 1) * per
            raise _cross_field(
                "gpus",
                f"{n} GPUs span more than one node of {per} (gpusPerNode) but are not whole "
                f"nodes: use {lower} or {upper} GPUs, or at most {per}, or set gpusPerNode "
                "to the GPUs per node of your cluster",
            )
        return self


# -- workload, SLO, strategy, profiling, runner ---------------------------------------------------


class SloSpec(BaseModel):
    """The service-level objective the plan must meet."""

    model_config = _BASE

    latency: Duration | None = Field(
        default=None,
        description="Bound on the time to generate an output of the workload's "
        "99th-percentile output length, queueing excluded (ExeGPT's latency bound), "
        "e.g. '3.1s', '500ms', or seconds; absent: no bound (maximum throughput).",
    )
    latency_margin: float = Field(
        default=0.1,
        ge=0.0,
        le=0.5,
        alias="latencyMargin",
        description="Fraction of the latency bound kept free for the planner's "
        "prediction error (0 to 0.5, default 0.1; 0 plans at the bound itself): the plan "
        "is chosen so that its predicted latency is within latency x (1 - latencyMargin). "
        "A plan sits at the edge of its bound, so one predicted a few per cent short "
        "misses it; 0.1 covers the median error measured on vLLM (docs/vllm.md).",
    )


ProfilingMode = Literal["Measured", "Analytic"]


class ProfilingSpec(BaseModel):
    """How per-layer times are obtained for the planner.

    ``Analytic`` (the default in v1alpha1) plans from a roofline cost model calibrated per
    GPU type: a plan is ready in seconds, with no GPU and no profiling Job, and editing
    the SLO or the workload replans at once. ``Measured`` runs the profiler as a Job on
    one of the deployment's GPU nodes (up to ``timeout``, retried ``maxRetries`` times)
    and caches the profile per model, GPU type and dtype; choose it for the most
    accurate plan once GPUs are available.
    """

    model_config = _BASE

    mode: ProfilingMode = Field(
        default="Analytic",
        description="Analytic: roofline cost model, no GPU needed (default). Measured: "
        "run the profiler on the GPUs in a Job and cache the profile.",
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Profiler image (Measured); absent: the operator's runtime image.",
    )
    timeout: Duration = Field(
        default=7200.0,
        description="Deadline of one profiling Job (Measured), e.g. '2h'.",
        json_schema_extra={"default": "2h"},
    )
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        alias="maxRetries",
        description="Failed profiling Jobs retried before giving up (Measured).",
    )


class AllowFromPeer(BaseModel):
    """Pods admitted to the workers' API port (a NetworkPolicy peer): pods with all of
    ``podLabels`` in namespaces with all of ``namespaceLabels``. Absent ``podLabels``:
    every pod of those namespaces; absent ``namespaceLabels``: the deployment's own
    namespace. ``{}`` alone admits every pod of the deployment's namespace."""

    model_config = _BASE

    pod_labels: dict[str, str] | None = Field(
        default=None, alias="podLabels", description="Labels the client pods carry."
    )
    namespace_labels: dict[str, str] | None = Field(
        default=None,
        alias="namespaceLabels",
        description="Labels of the client pods' namespaces (e.g. "
        "kubernetes.io/metadata.name: gateway); absent: this namespace.",
    )


class SecretKey(BaseModel):
    """One key of a Secret in the deployment's namespace."""

    model_config = _BASE

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the Secret.",
    )
    key: str = Field(
        default="token",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key in the Secret whose value is the token.",
    )


class RunnerSpec(BaseModel):
    """The worker pods that run the chosen plan."""

    model_config = _BASE

    image: str | None = Field(
        default=None,
        min_length=1,
        description="Worker image; absent: the operator's runtime image.",
    )
    port: int = Field(
        default=8000, ge=1, le=65535, description="HTTP port of the inference Service."
    )
    allow_from: list[AllowFromPeer] | None = Field(
        default=None,
        alias="allowFrom",
        max_length=32,
        description="Who may call the API port (the workers' NetworkPolicy): these peers, "
        "plus the operator (which reads /metrics). Absent: every pod of the deployment's "
        "namespace; []: none but the operator. The rendezvous port (port + 1) admits only "
        "the deployment's own worker pods, whatever this says.",
    )
    api_key_secret: SecretKey | None = Field(
        default=None,
        alias="apiKeySecret",
        description="A Secret key holding a bearer token the API requires on /v1/* "
        "(Authorization: Bearer <token>); absent: no token. /healthz, /readyz and "
        "/metrics stay open.",
    )


DriftMode = Literal["Replan", "Observe", "Off"]


class DriftSpec(BaseModel):
    """Replanning when the served traffic drifts from the planned workload.

    Every ``intervalSeconds``, while the workers run their plan and are ready, the
    operator reads the prompt- and output-length histograms of the replicas' drivers
    and compares them with the workload the plan was made for (total-variation
    distance per side over the histograms' buckets). ``Replan`` plans again for the
    observed workload when either side is ``threshold`` or more away, at most once per
    ``cooldownSeconds``; ``Observe`` only reports (condition ``WorkloadDrift``); ``Off``
    reads nothing and plans from ``spec.workload``.
    """

    model_config = _BASE

    mode: DriftMode = Field(
        default="Replan",
        description="Replan: plan again for the observed traffic when it drifts (default). "
        "Observe: report drift in the WorkloadDrift condition only. Off: no checks.",
    )
    threshold: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Total-variation distance (0 < t <= 1) between the observed and the "
        "planned bucket shares of input or output lengths at which the traffic has drifted.",
    )
    min_requests: int = Field(
        default=1000,
        ge=1,
        alias="minRequests",
        description="Requests the workers must have served since the plan started before "
        "drift is judged.",
    )
    interval_seconds: int = Field(
        default=300,
        ge=30,
        alias="intervalSeconds",
        description="Seconds between two reads of the workers' metrics.",
    )
    cooldown_seconds: int = Field(
        default=1800,
        ge=0,
        alias="cooldownSeconds",
        description="Least seconds between two replans for drift.",
    )


class ExeGPTDeploymentSpec(BaseModel):
    """What to serve, on what, for which traffic, under which latency bound."""

    model_config = _BASE

    model: ModelSpec = Field(description="The model: a preset name or an explicit architecture.")
    hardware: HardwareSpec = Field(description="GPU budget and placement.")
    workload: WorkloadSpec = Field(
        description="Distribution of input and output lengths of the traffic: a preset "
        "(the paper's tasks, chat, code), truncated normals, or histograms."
    )
    slo: SloSpec = Field(default_factory=SloSpec, description="Latency bound; absent: none.")
    strategy: StrategyChoice = Field(
        default="Auto",
        description="Allocation strategy: Auto (the planner picks the best), RoundRobin "
        "(every GPU encodes and decodes) or WorkloadAware (GPUs split between encoding "
        "and decoding).",
    )
    min_gain: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        alias="minGain",
        description="Under strategy Auto, the predicted throughput gain a schedule must "
        "show over a simpler one to be chosen (0 to 1, default 0.1): the engine's own "
        "continuous batching (stock vLLM) is kept unless Static is predicted more than "
        "minGain faster, and those unless an ExeGPT schedule is. A gain inside the "
        "prediction's error is no gain: 0.1 covers the median error measured on vLLM "
        "(docs/vllm.md); 0 picks the highest predicted throughput.",
    )
    engine: EngineChoice = Field(
        default="Auto",
        description="The engine the workers run: vLLM (with the ExeGPT schedule inside it), "
        "ExeGPT (the project's own engine, which also runs encoder-decoder models and "
        "partial tensor parallelism) or Auto (vLLM wherever it runs the model and a plan "
        "meeting the bound, else ExeGPT).",
    )
    profiling: ProfilingSpec = Field(
        default_factory=ProfilingSpec, description="Where the planner's layer times come from."
    )
    runner: RunnerSpec = Field(default_factory=RunnerSpec, description="Worker pods.")
    drift: DriftSpec = Field(
        default_factory=DriftSpec,
        description="Replanning when the served traffic drifts from the planned workload.",
    )


class ExeGPTDeployment(BaseModel):
    """An ``ExeGPTDeployment`` object as stored by the API server.

    ``status`` is written only by the operator and is carried as an opaque mapping here.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    api_version: Literal["exegpt.dev/v1alpha1"] = Field(
        alias="apiVersion", description="exegpt.dev/v1alpha1"
    )
    kind: Literal["ExeGPTDeployment"] = Field(description="ExeGPTDeployment")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ExeGPTDeploymentSpec
    status: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))


def parse_manifest(obj: object) -> ExeGPTDeployment:
    """Validate one manifest (a mapping as loaded from YAML or a watch event).

    Raises ``pydantic.ValidationError``; ``format_errors`` turns it into one
    ``path: message`` line per problem.
    """
    return ExeGPTDeployment.model_validate(obj)


def parse_spec(obj: object) -> ExeGPTDeploymentSpec:
    """Validate a bare ``spec`` mapping (as kopf hands it to a handler)."""
    return ExeGPTDeploymentSpec.model_validate(obj)


# -- error reporting ----------------------------------------------------------------------------


def _path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MESSAGE_PREFIXES = ("Value error, ", "Assertion failed, ")


def format_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """One ``path: message`` line per error, e.g.
    ``spec.hardware.gpus: Input should be greater than or equal to 1``.

    ``prefix`` is prepended to every path (``"spec"`` when ``exc`` came from
    ``parse_spec``). Union-branch noise is removed: pydantic reports a failed union
    member under a location part naming the member's type, which is not a field.
    """
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = [p for p in err["loc"] if not _is_union_tag(p)]
        ctx = err.get("ctx") or {}
        if err["type"] == "cross_field" and "field" in ctx:
            loc.append(str(ctx["field"]))
        if prefix:
            loc.insert(0, prefix)
        msg = err["msg"]
        for p in _MESSAGE_PREFIXES:
            if msg.startswith(p):
                msg = msg[len(p) :]
        # Messages that already start with the field's own name ("workload: ...").
        if loc and isinstance(loc[-1], str) and msg.startswith(f"{loc[-1]}: "):
            msg = msg[len(loc[-1]) + 2 :]
        if err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field (not part of exegpt.dev/v1alpha1 ExeGPTDeployment)"
        path = _path(loc) or "(document)"
        line = f"{path}: {msg}"
        if line not in lines:
            lines.append(line)
    return lines


_SCALAR_TAGS = {"str", "int", "float", "bool", "none", "dict[str,any]", "list[any]"}


def _is_union_tag(part: int | str) -> bool:
    """Whether a location part names a union member (a type) rather than a field or key.

    Fields are camelCase; union members appear as class names (``NormalWorkload``),
    scalar type names or ``function-after[...]``-style tags.
    """
    if isinstance(part, int):
        return False
    return "[" in part or part in _SCALAR_TAGS or (part[:1].isupper() and part.isidentifier())
