"""The operator's settings: one typed model, read from ``EXEGPT_*`` environment
variables (the chart sets them) and command-line flags, applied to kopf once at
startup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "EXEGPT_"


class OperatorSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        default=(), description="namespaces to watch; empty: every namespace (cluster-wide)"
    )
    liveness_endpoint: str | None = Field(
        default="http://0.0.0.0:8080/healthz", description="kopf's health endpoint; '' for none"
    )
    peering: bool = Field(
        default=False,
        description="leader election between operator replicas (kopf peering): one replica "
        "handles deployments, the others stand by; off: run exactly one replica",
    )
    peering_name: str = Field(
        default="exegpt", min_length=1, description="name of the KopfPeering object replicas share"
    )
    peering_priority: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="this replica's peering priority (the highest live one leads); absent: "
        "drawn at random at startup, so no two replicas tie (tied replicas all pause)",
    )  # fmt: skip
    watch_server_timeout: int = Field(default=300, gt=0, description="seconds per watch call")
    watch_client_timeout: int = Field(default=330, gt=0)
    resync_seconds: float = Field(
        default=10.0, gt=0, description="how often a deployment is re-checked (Job progress, "
        "worker readiness) besides reacting to its own edits",
    )  # fmt: skip
    retry_backoff_seconds: float = Field(
        default=30.0, ge=0, description="wait after the first failed profiling Job; doubles"
    )
    retry_backoff_max_seconds: float = Field(default=600.0, ge=0)
    error_retry_seconds: float = Field(
        default=1.0,
        gt=0,
        description="wait before retrying a pass whose API request failed (the first time)",
    )
    plan_time_limit_seconds: float = Field(default=30.0, gt=0, description="XScheduler budget")
    planner_threads: int = Field(
        default=2, ge=1, le=64, description="threads that parse specs and plan (off the event "
        "loop); more plan more deployments at once",
    )  # fmt: skip
    metrics_timeout_seconds: float = Field(
        default=5.0, gt=0, description="how long a drift check waits for one worker's /metrics "
        "(a total deadline, however slowly the worker answers)",
    )  # fmt: skip
    api_timeout_seconds: float = Field(
        default=10.0, gt=0, description="total deadline of one API request, its retries included"
    )
    error_retry_max_seconds: float = Field(
        default=300.0, gt=0, description="longest wait between passes that keep failing (the "
        "wait starts at error_retry_seconds and doubles with each failure in a row)",
    )  # fmt: skip
    runtime_image: str = Field(
        default="ghcr.io/exegpt/exegpt-runtime:0.1.0",
        description="image of the profiling Jobs and workers unless the spec names one",
    )
    kube_host: str | None = Field(
        default=None,
        description="test only: an API server URL reached with no authentication and no TLS "
        "verification; refused unless kube_insecure is also set",
    )
    kube_insecure: bool = Field(
        default=False,
        description="test only: allow kube_host (an unauthenticated, unverified API server)",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as text, or one JSON object per line"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="port of the operator's own Prometheus /metrics (the chart: 9090); 0: none",
    )  # fmt: skip
    allowed_profiler_images: tuple[str, ...] = Field(
        default=(),
        description="images profiling Jobs may run (an entry ending in '*' is a prefix); "
        "empty: any",
    )
    operator_namespace: str | None = Field(
        default=None,
        description="the operator's namespace: the workers' NetworkPolicy admits the "
        "operator's pods (operator_pod_selector there) to read /metrics",
    )
    operator_pod_selector: tuple[str, ...] = Field(
        default=(), description="labels of the operator's pods, as key=value"
    )

    @model_validator(mode="after")
    def _kube_host_is_for_tests(self) -> OperatorSettings:
        if self.kube_host and not self.kube_insecure:
            raise ValueError(
                "kube_host connects with no authentication and no TLS verification, for "
                "tests only; unset it to use the in-cluster service account or the "
                "kubeconfig, or set EXEGPT_KUBE_INSECURE=true (--kube-insecure) as well"
            )
        for item in self.operator_pod_selector:
            if "=" not in item:
                raise ValueError(
                    f"operator_pod_selector: {item!r} is not key=value "
                    "(e.g. app.kubernetes.io/name=exegpt)"
                )
        return self

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    @property
    def operator_pod_labels(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.operator_pod_selector)

    def profiler_image_allowed(self, image: str) -> bool:
        """Whether profiling Jobs may run ``image`` (any, with no allow-list)."""
        if not self.allowed_profiler_images:
            return True
        return any(
            image.startswith(entry[:-1]) if entry.endswith("*") else image == entry
            for entry in self.allowed_profiler_images
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> OperatorSettings:
        """Settings from ``EXEGPT_<FIELD>`` variables (``EXEGPT_NAMESPACES=a,b``), then
        ``overrides`` (command-line flags); errors name the variable."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name in ("namespaces", "allowed_profiler_images", "operator_pod_selector"):
                values[name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif name in ("liveness_endpoint", "kube_host", "operator_namespace"):
                values[name] = raw or None
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                if e["loc"]
                else str(e["msg"]).removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ValueError(f"invalid operator settings: {problems}") from None
