"""The operator process: a kopf registry with the handlers, run against a cluster."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import kopf

from .handlers import register
from .settings import OperatorSettings

Flag = asyncio.Future[Any] | asyncio.Event | Future[Any] | threading.Event


def create_registry(config: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, config)
    return registry


async def run(
    config: OperatorSettings,
    *,
    registry: kopf.OperatorRegistry | None = None,
    memo: kopf.Memo | None = None,
    stop_flag: Flag | None = None,
    ready_flag: Flag | None = None,
) -> None:
    """Run until ``stop_flag`` is set (or forever). ``memo.kube`` may carry a preset
    API client (tests); otherwise one is made from the settings or kubeconfig."""
    await kopf.operator(
        registry=registry or create_registry(config),
        clusterwide=config.cluster_wide,
        namespaces=list(config.namespaces),
        standalone=not config.peering,
        liveness_endpoint=config.liveness_endpoint or None,
        memo=memo if memo is not None else kopf.Memo(),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )
