"""Small builders of ExeGPTDeployment bodies for tests.

``deployment(name="x", gpus=4)`` gives a valid manifest (a plain dict, as kopf or
``yaml.safe_load`` would hand it over); keyword overrides are applied to ``spec``
with dotted paths for nested fields: ``deployment(**{"hardware.gpus": 12})``, and a
value of ``DELETE`` removes the field.
"""

from __future__ import annotations

import contextlib
import copy
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

API_VERSION = "exegpt.dev/v1alpha1"
KIND = "ExeGPTDeployment"


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE: Any = _Delete()


def spec(**overrides: Any) -> dict[str, Any]:
    """A valid, small spec (OPT-13B on one 8-GPU A100 node, summarization, 3.1 s)."""
    body: dict[str, Any] = {
        "model": {"name": "opt-13b", "dtype": "float16"},
        "hardware": {"gpus": 8, "gpuType": "nvidia-a100-80gb", "gpusPerNode": 8},
        "workload": {"preset": "summarization"},
        "slo": {"latency": "3.1s"},
        "strategy": "Auto",
        "profiling": {"mode": "Analytic"},
    }
    for path, value in overrides.items():
        set_path(body, path, value)
    return body


def deployment(name: str = "x", namespace: str = "default", /, **overrides: Any) -> dict[str, Any]:
    """A valid ExeGPTDeployment manifest whose spec has ``overrides`` applied."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec(**overrides),
    }


def set_path(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or with ``DELETE`` remove) ``body[a][b][c]`` for the path ``"a.b.c"``."""
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = copy.deepcopy(value)
    return body


# -- worker pods and their metrics, for drift checks ------------------------------------------


def worker_pod(
    deployment: str, role: str, ordinal: int, *, ip: str | None = None, ready: bool = True
) -> dict[str, Any]:
    """A Pod of the deployment's ``role`` StatefulSet as the API server shows it once
    the kubelet runs it: labels, ``podIP`` and the Ready condition."""
    from exegpt.operator import names

    name = f"{names.statefulset(deployment, role)}-{ordinal}"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": names.labels(deployment, role)},
        "spec": {"containers": [{"name": role, "image": "registry.test/exegpt-runtime:test"}]},
        "status": {
            "phase": "Running",
            "podIP": ip or f"10.0.0.{ordinal + 1}",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def metrics_text(inputs: dict[int, int], outputs: dict[int, int]) -> str:
    """What a worker's ``GET /metrics`` answers after serving ``inputs`` ({prompt
    length: requests}) and ``outputs`` ({output length: requests}), rendered by the
    workers' own ``ServingMetrics``."""
    from exegpt.runner.metrics import ServingMetrics

    m = ServingMetrics()
    for length, n in inputs.items():
        for _ in range(n):
            m.admitted(length)
    for length, n in outputs.items():
        for _ in range(n):
            m.finished("length", length, 0.5)
    return m.render()


class FakeMetrics:
    """A ``MetricsReader`` answering per pod name from ``texts``; a pod it has no text
    for is unreachable. ``reads`` records the pods read."""

    def __init__(self, texts: dict[str, str] | None = None) -> None:
        self.texts: dict[str, str] = dict(texts or {})
        self.reads: list[tuple[str, str, str, int]] = []

    async def read(self, namespace: str, pod: str, ip: str, port: int) -> str:
        from exegpt.operator.metrics import MetricsError

        self.reads.append((namespace, pod, ip, port))
        if pod not in self.texts:
            raise MetricsError(f"GET http://{ip}:{port}/metrics: connection refused")
        return self.texts[pod]


@contextlib.contextmanager
def raw_server(answer: Callable[[socket.socket], None]) -> Iterator[int]:
    """A local TCP server (its port) that reads each connection's request and lets
    ``answer`` reply: a worker that does not speak HTTP, or speaks it too slowly."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn, contextlib.suppress(OSError):
                conn.recv(4096)
                answer(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        srv.close()
