"""The operator's settings: one typed model, read from ``EXEGPT_*`` environment
variables (the chart sets them) and command-line flags, applied to kopf once at
startup."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
        description="kopf peering between operator replicas; off: run one replica (the chart's "
        "Deployment has replicas: 1 and strategy Recreate)",
    )
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
    profiler_service_account: str = Field(
        default="exegpt-profiler", description="service account of profiling Jobs"
    )
    kube_host: str | None = Field(
        default=None,
        description="API server URL to use instead of the kubeconfig / in-cluster config",
    )

    @property
    def cluster_wide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> OperatorSettings:
        """Settings from ``EXEGPT_<FIELD>`` variables (``EXEGPT_NAMESPACES=a,b``), then
        ``overrides`` (command-line flags); errors name the variable."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            if name == "namespaces":
                values[name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif name in ("liveness_endpoint", "kube_host"):
                values[name] = raw or None
            else:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid operator settings: {problems}") from None
