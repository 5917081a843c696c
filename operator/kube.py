"""A small async client for the few kinds the operator touches.

It speaks plain JSON dicts (as manifests are written) through the ``kubernetes``
package's transport, off the event loop (``asyncio.to_thread``), and retries
transient failures (5xx, 429, connection errors) a bounded number of times.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes
import urllib3

from .spec import GROUP, PLURAL, VERSION

JSON = dict[str, Any]


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        out = f"{base}/namespaces/{namespace}/{self.plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out


CONFIGMAP = Kind("", "v1", "configmaps")
SERVICE = Kind("", "v1", "services")
JOB = Kind("batch", "v1", "jobs")
STATEFULSET = Kind("apps", "v1", "statefulsets")
POD = Kind("", "v1", "pods")
NETWORKPOLICY = Kind("networking.k8s.io", "v1", "networkpolicies")
SERVICEACCOUNT = Kind("", "v1", "serviceaccounts")
ROLE = Kind("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDING = Kind("rbac.authorization.k8s.io", "v1", "rolebindings")
EXEGPT = Kind(GROUP, VERSION, PLURAL)


class KubeError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"{status} {reason}: {body[:300]}")
        self.status = status
        self.reason = reason
        self.body = body


TRANSIENT = {429, 500, 502, 503, 504}


class Api(Protocol):
    """What a reconcile pass needs of the API server (``Kube``, or ``MemoryKube``)."""

    async def get(self, kind: Kind, namespace: str, name: str) -> JSON | None: ...

    async def list(
        self, kind: Kind, namespace: str, label_selector: str | None = None
    ) -> list[JSON]: ...

    async def create(self, kind: Kind, namespace: str, body: JSON) -> JSON: ...

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: JSON, subresource: str | None = None
    ) -> JSON: ...

    async def delete(
        self, kind: Kind, namespace: str, name: str, propagation: str | None = None
    ) -> None: ...


class Kube:
    """The operator's API access; one per process, shared through kopf's memo."""

    def __init__(self, api_client: Any, *, retries: int = 4, backoff_seconds: float = 0.05) -> None:
        self.api = api_client
        self.retries = retries
        self.backoff_seconds = backoff_seconds

    @classmethod
    def connect(cls, host: str | None = None) -> Kube:
        """An API client for ``host``, else the in-cluster service account, else the
        current kubeconfig context."""
        if host:
            config = kubernetes.client.Configuration(host=host)
        else:
            config = kubernetes.client.Configuration()
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
        return cls(kubernetes.client.ApiClient(config))

    # -- transport ---------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> JSON | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, hdrs, payload, post = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body,
            auth_settings=["BearerToken"], query_params=query or None,
        )  # fmt: skip
        attempt = 0
        while True:
            try:
                resp = self.api.call_api(m, url, header_params=hdrs, body=payload, post_params=post)
                resp.read()
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if attempt >= self.retries:
                    raise KubeError(0, "ConnectionError", str(exc)) from exc
            else:
                status = int(resp.status)
                text = resp.data.decode() if isinstance(resp.data, bytes) else str(resp.data or "")
                if status < 300:
                    return json.loads(text) if text else None
                if status not in TRANSIENT or attempt >= self.retries:
                    raise KubeError(status, str(resp.reason), text)
            attempt += 1
            time.sleep(self.backoff_seconds * 2 ** (attempt - 1))

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> JSON | None:
        return await asyncio.to_thread(self._call, method, path, body, content_type, query)

    # -- verbs ---------------------------------------------------------------------------
    async def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        try:
            return await self._request("GET", kind.path(namespace, name))
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: Kind, namespace: str, label_selector: str | None = None
    ) -> list[JSON]:
        query = [("labelSelector", label_selector)] if label_selector else None
        out = await self._request("GET", kind.path(namespace), query=query)
        items = (out or {}).get("items") or []
        return [i for i in items if isinstance(i, dict)]

    async def create(self, kind: Kind, namespace: str, body: JSON) -> JSON:
        return await self._request("POST", kind.path(namespace), body) or body

    async def replace(self, kind: Kind, namespace: str, name: str, body: JSON) -> JSON:
        return await self._request("PUT", kind.path(namespace, name), body) or body

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: JSON, subresource: str | None = None
    ) -> JSON:
        out = await self._request(
            "PATCH", kind.path(namespace, name, subresource), patch,
            "application/merge-patch+json",
        )  # fmt: skip
        return out or {}

    async def delete(
        self, kind: Kind, namespace: str, name: str, propagation: str | None = None
    ) -> None:
        """Delete ``name``; ``propagation`` (Background, Foreground, Orphan) says what
        becomes of its dependents (a Job's pods)."""
        query = [("propagationPolicy", propagation)] if propagation else None
        try:
            await self._request("DELETE", kind.path(namespace, name), query=query)
        except KubeError as exc:
            if exc.status != 404:
                raise
