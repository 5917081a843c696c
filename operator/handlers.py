"""kopf handlers: thin adapters from kopf's callbacks to ``reconcile.reconcile``.

Every handler of a deployment runs the same level-based pass; they differ only in
when kopf calls them: on creation, on a spec edit, when the operator (re)starts, and
on a timer that follows profiling Jobs and worker readiness.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import kopf

from .kube import Kube, KubeError
from .logs import deployment_fields
from .metrics import HttpMetricsReader
from .reconcile import Context, reconcile
from .settings import OperatorSettings
from .spec import GROUP, PLURAL, VERSION
from .telemetry import OperatorMetrics, start_server

RESOURCE = (GROUP, VERSION, PLURAL)
log = logging.getLogger("exegpt.operator")


def _events(body: kopf.Body) -> Any:
    def emit(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message[:1000])

    return emit


def _lock(memo: kopf.Memo, body: kopf.Body) -> asyncio.Lock:
    """One lock per deployment: kopf runs timers beside change handlers, and two passes
    over one deployment at once would race on its children and its status."""
    locks: dict[str, asyncio.Lock] = memo.setdefault("locks", {})
    return locks.setdefault(str(body.metadata.uid or body.metadata.name), asyncio.Lock())


async def _pass(
    handler: str,
    body: kopf.Body,
    memo: kopf.Memo,
    config: OperatorSettings,
    *,
    skip_if_busy: bool = False,
) -> None:
    lock = _lock(memo, body)
    if skip_if_busy and lock.locked():
        return  # a change handler is on it; the next tick will follow up
    telemetry: OperatorMetrics = memo.telemetry
    where = deployment_fields(str(body.metadata.namespace or ""), str(body.metadata.name or ""))
    async with lock:
        ctx = Context(
            kube=memo.kube, settings=config, events=_events(body), clock=memo.clock,
            metrics=memo.metrics, written=memo.setdefault("written", {}), telemetry=telemetry,
        )  # fmt: skip
        started = time.monotonic()
        try:
            await reconcile(body, ctx)
        except KubeError as exc:
            telemetry.passes.inc(handler, "failed")
            telemetry.failures.inc(handler, "KubeError")
            log.error("%s pass failed: API request failed: %s", handler, exc, extra=where)
            raise kopf.TemporaryError(
                f"API request failed: {exc}", delay=config.error_retry_seconds
            ) from exc
        except Exception as exc:
            telemetry.passes.inc(handler, "failed")
            telemetry.failures.inc(handler, type(exc).__name__)
            log.exception("%s pass failed: %s", handler, exc, extra=where)
            raise
        finally:
            telemetry.pass_seconds.observe(time.monotonic() - started, handler)
        telemetry.passes.inc(handler, "ok")


def register(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Add the operator's handlers, configured by ``config``, to ``registry``."""

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Leader election: kopf pauses a replica while a live peer has a higher priority,
        # and pauses every replica of a tie; distinct priorities leave exactly one active.
        settings.peering.standalone = not config.peering
        settings.peering.mandatory = config.peering
        settings.peering.name = config.peering_name
        settings.peering.priority = config.peering_priority or 1 + secrets.randbelow(2**31 - 2)
        settings.watching.server_timeout = config.watch_server_timeout
        settings.watching.client_timeout = config.watch_client_timeout
        settings.posting.level = logging.WARNING
        # The status schema is structural, so the API server would prune kopf's own
        # status fields: keep kopf's bookkeeping in annotations instead.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
        if getattr(memo, "kube", None) is None:
            memo.kube = Kube.connect(config.kube_host)
        if getattr(memo, "metrics", None) is None:
            memo.metrics = HttpMetricsReader(config.metrics_timeout_seconds)
        if getattr(memo, "clock", None) is None:
            memo.clock = time.time
        if getattr(memo, "telemetry", None) is None:
            memo.telemetry = OperatorMetrics()
        if config.metrics_port and getattr(memo, "metrics_server", None) is None:
            memo.metrics_server = await start_server(memo.telemetry, config.metrics_port)
            log.info("operator metrics on :%d/metrics", config.metrics_port)

    @kopf.on.cleanup(id="stop-metrics", registry=registry)
    async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
        server = getattr(memo, "metrics_server", None)
        if server is not None:
            memo.metrics_server = None
            await server.cleanup()

    @kopf.on.login(id="login", registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own gets none of kopf's default login handlers. kube_host is
        # a test seam: the settings refuse it unless kube_insecure is set too.
        if config.kube_host and config.kube_insecure:
            return kopf.ConnectionInfo(server=str(config.kube_host), insecure=True)
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    @kopf.on.resume(*RESOURCE, id="resume", registry=registry)
    async def resume(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _pass("resume", body, memo, config)

    @kopf.on.create(*RESOURCE, id="create", registry=registry)
    async def create(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _pass("create", body, memo, config)

    @kopf.on.update(*RESOURCE, id="update", field="spec", registry=registry)
    async def update(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _pass("update", body, memo, config)

    @kopf.timer(
        *RESOURCE, id="converge", interval=config.resync_seconds,
        initial_delay=config.resync_seconds, registry=registry,
    )  # fmt: skip
    async def converge(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await _pass("converge", body, memo, config, skip_if_busy=True)
