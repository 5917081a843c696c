"""A small async client for the few kinds the operator touches.

It speaks plain JSON dicts (as manifests are written) over ``aiohttp`` on the event
loop, with the connection settings (server, credentials, CA) of the ``kubernetes``
package's configuration: no thread is held by a request, so a hung call of one
deployment cannot starve the others. Every call has a total deadline
(``timeout_seconds``, retries included), however slowly the server answers, and
transient failures (5xx, 429, 409 on nothing, timeouts, connection errors, garbage
answers) are retried a bounded number of times within it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import kubernetes

from .answers import TooLarge, read_limited
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
TIMEOUT_SECONDS = 10.0
MAX_ANSWER_BYTES = 64 << 20  # a list of every Job in a busy namespace fits


def is_transient(status: int) -> bool:
    """Whether a failed request may succeed when repeated: no answer (0: a timeout, a
    connection error, an answer that is not HTTP or not JSON), 409 Conflict, 429 and
    5xx. The rest (400, 403 Forbidden, 404 on a write, 422 Invalid) fail again until
    something else changes."""
    return status == 0 or status == 409 or status in TRANSIENT or status >= 500


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

    def __init__(
        self,
        api_client: Any,
        *,
        retries: int = 4,
        backoff_seconds: float = 0.05,
        timeout_seconds: float = TIMEOUT_SECONDS,
    ) -> None:
        self.api = api_client
        self.config: Any = api_client.configuration
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def connect(cls, host: str | None = None, *, timeout_seconds: float = TIMEOUT_SECONDS) -> Kube:
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
        return cls(kubernetes.client.ApiClient(config), timeout_seconds=timeout_seconds)

    # -- transport ---------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | bool:
        c = self.config
        if not str(c.host).startswith("https"):
            return False
        context = ssl.create_default_context(cafile=c.ssl_ca_cert or None)
        if c.cert_file:
            context.load_cert_chain(c.cert_file, c.key_file or None)
        if not c.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=0),
                timeout=aiohttp.ClientTimeout(total=self.timeout_seconds),
            )
            self._session_loop = loop
        return self._session

    async def close(self) -> None:
        """Close the connections (the operator's cleanup)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # Asked per request: a projected service account token is refreshed by the hook.
        for auth in self.config.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[str(auth["key"])] = str(auth["value"])
        return headers

    async def _attempt(
        self, method: str, url: str, body: Any, content_type: str, query: list[tuple[str, str]]
    ) -> tuple[int, str, str]:
        data = json.dumps(body).encode() if body is not None else None
        async with self._client().request(
            method, url, data=data, params=query or None, headers=self._headers(content_type),
            proxy=self.config.proxy or None,
        ) as resp:  # fmt: skip
            try:
                raw = await read_limited(resp, MAX_ANSWER_BYTES)
            except TooLarge as exc:
                raise KubeError(0, "AnswerTooLarge", f"{method} {url}: {exc}") from None
            return resp.status, str(resp.reason or ""), raw.decode()

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> JSON | None:
        url = str(self.config.host).rstrip("/") + path
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._with_retries(method, url, body, content_type, query or [])
        except TimeoutError:
            raise KubeError(
                0, "Timeout", f"{method} {path}: no answer within {self.timeout_seconds:g} s"
            ) from None

    async def _with_retries(
        self, method: str, url: str, body: Any, content_type: str, query: list[tuple[str, str]]
    ) -> JSON | None:
        attempt = 0
        while True:
            try:
                status, reason, text = await self._attempt(method, url, body, content_type, query)
                if status < 300:
                    out = json.loads(text) if text else None
                    if out is not None and not isinstance(out, dict):
                        raise KubeError(0, "BadAnswer", f"{method} {url}: not a JSON object")
                    return out
                error = KubeError(status, reason, text)
            except (aiohttp.ClientError, ValueError) as exc:  # incl. not HTTP, not JSON
                error = KubeError(0, "ConnectionError", f"{method} {url}: {exc!r}"[:500])
            except KubeError as exc:
                error = exc
            if (error.status not in TRANSIENT and error.status != 0) or attempt >= self.retries:
                raise error
            attempt += 1
            await asyncio.sleep(self.backoff_seconds * 2 ** (attempt - 1))

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
