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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .deployments import Deployments, resync_phase
from .failure import report_failure
from .kube import Kube, KubeError
from .logs import deployment_fields
from .metrics import HttpMetricsReader
from .reconcile import Context, reconcile
from .settings import OperatorSettings
from .spec import GROUP, PLURAL, VERSION
from .telemetry import OperatorMetrics, start_server

RESOURCE = (GROUP, VERSION, PLURAL)
NO_LOG_EVENTS = logging.CRITICAL + 10
STOP_GRACE_SECONDS = 5.0
"""On stop, how long the passes in flight may take to finish before the operator closes
its API client and planner threads under them."""
log = logging.getLogger("exegpt.operator")


def _events(body: kopf.Body) -> Any:
    def emit(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message[:1000])

    return emit


def _uid(body: kopf.Body) -> str:
    return str(body.metadata.uid or body.metadata.name)


async def _pass(
    handler: str,
    body: kopf.Body,
    memo: kopf.Memo,
    config: OperatorSettings,
    *,
    periodic: bool = False,
) -> None:
    """One pass over a deployment, one at a time (kopf runs timers beside change
    handlers, and two passes at once would race on its children and its status).

    A pass that fails on an API error is retried with exponential backoff: the change
    handlers through kopf (a permanent error ends their retries), the periodic pass by
    skipping ticks until the backoff has passed. The failure is said in a condition,
    logged with the deployment's name and counted in the operator's metrics.

    Once the operator is stopping, no pass starts (the next start's resume pass takes
    over: passes are level-based); one that the stop cuts short is logged as such."""
    deployments: Deployments = memo.deployments
    where = deployment_fields(str(body.metadata.namespace or ""), str(body.metadata.name or ""))
    if deployments.stopping():
        log.debug("%s pass not started: the operator is stopping", handler, extra=where)
        return
    deployments.pass_started()
    try:
        await _locked_pass(handler, body, memo, config, periodic, where)
    finally:
        deployments.pass_ended()


async def _locked_pass(
    handler: str,
    body: kopf.Body,
    memo: kopf.Memo,
    config: OperatorSettings,
    periodic: bool,
    where: dict[str, str],
) -> None:
    deployments: Deployments = memo.deployments
    memory = deployments.of(_uid(body))
    generation = int(body.metadata.get("generation") or 0)
    if periodic and (
        memory.lock.locked() or memory.failures.backing_off(generation, time.monotonic())
    ):
        return  # a change handler is on it, or backing off; a later tick follows up
    telemetry: OperatorMetrics = memo.telemetry
    async with memory.lock:
        if deployments.stopping():
            return  # stopped while waiting for the lock
        ctx = Context(
            kube=memo.kube, settings=config, events=_events(body), clock=memo.clock,
            metrics=memo.metrics, written=deployments.written, cache=memory.cache,
            executor=memo.executor, profiles=deployments.profiles, telemetry=telemetry,
        )  # fmt: skip
        started = time.monotonic()
        try:
            await reconcile(body, ctx)
        except Exception as exc:
            if deployments.stopping():  # its client or planner threads closed under it
                telemetry.passes.inc(handler, "stopped")
                log.warning(
                    "%s pass cut short: the operator stopped while it ran (%s: %s)",
                    handler, type(exc).__name__, exc, extra=where,
                )  # fmt: skip
                return
            error = await _failed(handler, body, memo, config, exc, periodic, where)
            if error is exc:
                raise
            if error is not None:
                raise error from exc
            return  # a periodic pass backs off: a later tick tries again
        finally:
            telemetry.pass_seconds.observe(time.monotonic() - started, handler)
        memory.failures.clear()
        telemetry.passes.inc(handler, "ok")


async def _failed(
    handler: str,
    body: kopf.Body,
    memo: kopf.Memo,
    config: OperatorSettings,
    exc: Exception,
    periodic: bool,
    where: dict[str, str],
) -> Exception | None:
    """Count, log and report a failed pass: the error to raise to kopf (``exc`` itself
    but for an API error, whose retry is scheduled: kopf's error for a change handler,
    None for a periodic pass, which backs off)."""
    telemetry: OperatorMetrics = memo.telemetry
    telemetry.passes.inc(handler, "failed")
    telemetry.failures.inc(handler, type(exc).__name__)
    if not isinstance(exc, KubeError):
        log.exception("%s pass failed: %s", handler, exc, extra=where)
        return exc
    failures = memo.deployments.of(_uid(body)).failures
    generation = int(body.metadata.get("generation") or 0)
    delay = failures.record(
        exc, generation, time.monotonic(), config.error_retry_seconds,
        config.error_retry_max_seconds,
    )  # fmt: skip
    await report_failure(memo.kube, body, failures, delay, _events(body), memo.clock)
    message = f"API request failed: {exc}; next attempt in {delay:g} s"
    log.error("%s pass failed: %s", handler, message, extra=where)
    if periodic:
        return None
    if failures.permanent:
        return kopf.PermanentError(message)
    return kopf.TemporaryError(message, delay=delay)


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
        # Events come from the operator alone (kopf.event: one per failure episode, per
        # transition). kopf would also post its own log lines about a deployment as Events
        # (older kopf releases always do, newer ones with posting.loggers): "failed temporarily"
        # at every retry. No log line reaches this level; kopf.event() ignores it.
        settings.posting.level = NO_LOG_EVENTS
        # The status schema is structural, so the API server would prune kopf's own
        # status fields: keep kopf's bookkeeping in annotations instead.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.persistence.finalizer = f"{GROUP}/kopf-finalizer"
        if getattr(memo, "kube", None) is None:
            memo.kube = Kube.connect(config.kube_host, timeout_seconds=config.api_timeout_seconds)
        if getattr(memo, "metrics", None) is None:
            memo.metrics = HttpMetricsReader(config.metrics_timeout_seconds)
        if getattr(memo, "clock", None) is None:
            memo.clock = time.time
        if getattr(memo, "telemetry", None) is None:
            memo.telemetry = OperatorMetrics()
        if config.metrics_port and getattr(memo, "metrics_server", None) is None:
            memo.metrics_server = await start_server(memo.telemetry, config.metrics_port)
            log.info("operator metrics on :%d/metrics", config.metrics_port)
        memo.deployments = Deployments()
        # Parsing and planning run here, not in the loop's default executor (kopf's).
        memo.executor = ThreadPoolExecutor(config.planner_threads, "exegpt-planner")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        # The passes in flight finish first: they use the client and the planner threads.
        deployments = getattr(memo, "deployments", None)
        if deployments is not None and not await deployments.drain(STOP_GRACE_SECONDS):
            log.warning(
                "stopping with %d pass(es) still running after %g s: they are cut short",
                deployments.in_flight, STOP_GRACE_SECONDS,
            )  # fmt: skip
        server = getattr(memo, "metrics_server", None)
        if server is not None:
            memo.metrics_server = None
            await server.cleanup()
        if isinstance(getattr(memo, "kube", None), Kube):
            await memo.kube.close()
        if getattr(memo, "executor", None) is not None:
            memo.executor.shutdown(wait=False, cancel_futures=True)

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
        memory = memo.deployments.of(_uid(body))
        if not memory.phased:  # once: later passes keep the phase (kopf passes a live body)
            memory.phased = True
            await asyncio.sleep(resync_phase(_uid(body), config.resync_seconds))
        await _pass("converge", body, memo, config, periodic=True)

    @kopf.on.event(*RESOURCE, id="forget", registry=registry)
    async def forget(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        if type == "DELETED" and getattr(memo, "deployments", None) is not None:
            memo.deployments.forget(_uid(body))
