"""The operator test harness: a Kubernetes API emulator over HTTP, the controllers the
tests play, a request log, failure injection, and the operator run in-process.

``Emulator`` is kmock's ``KubernetesEmulator`` (a real HTTP server that stores objects
in memory and streams watches) with the parts of the API server's behaviour the
operator relies on added: ``uid``, ``resourceVersion``, ``generation`` and
``creationTimestamp``; ``generateName``; replace (``PUT``) with resourceVersion
preconditions; JSON patches answered 422 when a ``test`` operation fails; the status
subresource (writes to ``/status`` change only the status, writes to the object never
change it); label selectors on lists and watches; ``kind`` on list responses; and
failures injected in front of the store (``fail``). Resource requests are answered from
the store directly, by key (kmock's own dispatch matches each request against its whole
request log, so its cost grew with every request served), and stored versions are never
changed in place, so reads share them instead of copying. It still runs no controllers and no
garbage collector: ``Cluster`` offers what the tests do in their place.

``Cluster`` is what a test talks to: objects through the HTTP API (so watches see the
changes), the Job and StatefulSet controllers' status updates, the request log
(``calls``, ``writes_since``, ``api_usage``), and ``wait_for``.

``Operator`` runs a kopf registry in the test's event loop against the emulator and
can be stopped, killed and started again within one test.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import copy
import dataclasses
import datetime
import functools
import inspect
import itertools
import json
import logging
import re
import secrets
import time
import uuid
import warnings
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import jsonschema  # type: ignore[import-untyped]
import kmock
import kopf
import kubernetes
import yaml
from kmock._internal import parsing as _kmock_parsing

JSON = dict[str, Any]
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "exegpt.dev_exegptdeployments.yaml"
NAMESPACE = "default"

EXEGPT = "exegpt.dev/v1alpha1"
JOBS = "batch/v1"
APPS = "apps/v1"
CORE = "v1"

HARNESS_HEADER = "X-Exegpt-Harness"
"""Requests the harness itself makes carry this header; the request log tells them apart
from the operator's."""

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- kmock's path parsing, fixed for the Namespace kind --------------------------------------


def _parse_path(path: str) -> Any:
    """kmock reads ``/api/v1/namespaces[/NAME]`` as the start of a namespaced path; it is
    the cluster-scoped Namespace kind (kopf lists and watches it)."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"] and parts[2:3] == ["namespaces"] and len(parts) <= 5:
        # /api/v1/namespaces, /api/v1/namespaces/NAME, /api/v1/namespaces/NAME/status
        name = parts[3] if len(parts) >= 4 else None
        sub = parts[4] if len(parts) == 5 else None
        if len(parts) != 5 or sub in ("status", "finalize"):
            return _kmock_parsing.ParsedPath("", "v1", "namespaces", None, name, sub)
    return _original_parse_path(path)


_original_parse_path = _kmock_parsing.parse_path
_kmock_parsing.parse_path = _parse_path


# -- the request log ---------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One API request, as RBAC sees it: ``verb`` on ``group``/``resource``."""

    id: int
    method: str
    group: str
    version: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    verb: str
    by_harness: bool = field(default=False, compare=False)
    body: Any = field(default=None, compare=False, repr=False)
    status: int | None = field(default=None, compare=False)
    """The response's HTTP status (None while the request is in flight)."""

    @property
    def rbac(self) -> tuple[str, str, str]:
        """``(apiGroup, resource[/subresource], verb)`` as a Role's rule names it."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return (self.group, resource, self.verb)

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 400

    def __str__(self) -> str:
        gv = f"{self.group}/{self.version}" if self.group else self.version
        where = "/".join(p for p in (self.namespace, self.name) if p)
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {gv} {self.resource}{sub} {where}".rstrip()


def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
    if method == "GET":
        if params.get("watch") in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def call_of(request: kmock.Request) -> Call | None:
    """The API call a request is, or None for discovery and other non-resource paths."""
    res = request.resource
    if res is None or res.plural is None or res.version is None or res.group is None:
        return None
    method = str(request.method.value).upper()
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Call(
        id=request.id,
        method=method,
        group=res.group,
        version=res.version,
        resource=res.plural,
        subresource=request.subresource,
        namespace=request.namespace,
        name=request.name,
        verb=_verb(method, request.name, request.params),
        by_harness=HARNESS_HEADER.lower() in headers,
        body=request.data,
    )


_DISPATCHING: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar(
    "harness_dispatching", default=None
)
"""The request kmock's generic dispatch is matching, in the task that answers it."""


class RequestLog:
    """kmock's request log (``Emulator._requests``), keeping the last ``keep`` requests
    (every one when ``keep`` is None, as tests want).

    ``len()`` counts every request served: kmock numbers each request by it, and a
    position in the log (``Cluster.mark``) is such a number. Iteration yields the
    requests kept, and ``since`` those from a position on; ``first`` is the position of
    the oldest one kept. A long run (a benchmark) bounds the log so that the emulator's
    memory, and its garbage collector's pauses with it, stay flat. While kmock's generic
    dispatch matches a request (``Emulator._dispatch``), iteration in the task answering
    it yields that request alone."""

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.keep = keep
        self.first = 0
        self._kept: collections.deque[kmock.Request] = collections.deque()
        self.dropped: Callable[[kmock.Request], None] = lambda _: None
        """Called with each request the log lets go of."""

    def append(self, request: kmock.Request) -> None:
        self._kept.append(request)
        if self.keep is not None and len(self._kept) > self.keep:
            self.first += 1
            self.dropped(self._kept.popleft())

    def __len__(self) -> int:
        return self.first + len(self._kept)

    def __iter__(self) -> Iterator[kmock.Request]:
        dispatching = _DISPATCHING.get()
        if dispatching is not None:  # kmock matching one request (Emulator._dispatch)
            return iter((dispatching,))
        return iter(self._kept)

    def since(self, position: int) -> list[kmock.Request]:
        """The requests from ``position`` on; a LookupError if some of them are no longer
        kept (the measurement would miss requests)."""
        if position < self.first:
            raise LookupError(
                f"the request log keeps the last {self.keep} requests (from {self.first} "
                f"on): those from {position} on are gone"
            )
        return list(itertools.islice(self._kept, position - self.first, None))


# -- failure injection ---------------------------------------------------------------------


_REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass
class Fault:
    """Answer the next ``times`` operator requests that match with ``status``.

    ``resource`` is a plural, or ``plural/subresource`` (``exegptdeployments/status``);
    ``verb`` an RBAC verb (``create``, ``update``, ``patch``, ``delete``, ``get``...) or
    ``"write"`` for any of the writes. By default the request fails before the store
    sees it; ``applied=True`` stores the write and then answers the error, as when a
    response is lost on the way back.
    """

    verb: str
    resource: str
    status: int = 500
    times: int = 1
    name: str | None = None
    applied: bool = False
    delay: float = 0.0
    """Seconds the answer is held back (a hung or slow server); with ``status`` 0 the
    request is then answered as usual."""
    hits: list[Call] = field(default_factory=list)

    def matches(self, call: Call) -> bool:
        if call.by_harness or len(self.hits) >= self.times:
            return False
        verb_ok = call.is_write if self.verb == "write" else call.verb == self.verb
        return verb_ok and call.rbac[1] == self.resource and self.name in (None, call.name)

    @property
    def exhausted(self) -> bool:
        return len(self.hits) >= self.times

    def clear(self) -> None:
        """Answer no more requests."""
        self.times = len(self.hits)

    def error(self, call: Call) -> kmock.KubernetesError:
        reason = _REASONS.get(self.status, "InjectedFailure")
        message = {
            409: f'Operation cannot be fulfilled on {call.resource} "{call.name}": the object '
            "has been modified; please apply your changes to the latest version and try again",
        }.get(self.status, f"injected failure: {self.status} {reason} on {call}")
        return kmock.KubernetesError(status=self.status, reason=reason, message=message)


# -- the emulator ---------------------------------------------------------------------------


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (the API server's ``application/merge-patch+json``;
    strategic merge patches are applied the same way: lists are replaced whole)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


_SELECTOR_RE = re.compile(
    r"^\s*(?P<neg>!)?(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Whether ``labels`` match a label selector string (equality- and set-based)."""
    if not selector:
        return True
    # Split on commas outside parentheses.
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for part in parts:
        m = _SELECTOR_RE.match(part)
        if m is None:
            raise ValueError(f"unsupported label selector: {part!r}")
        key = m["key"]
        if m["setop"]:
            values = {v.strip() for v in m["values"].split(",")}
            ok = labels.get(key) in values if m["setop"] == "in" else labels.get(key) not in values
        elif m["op"]:
            ok = labels.get(key) == m["value"] if m["op"] != "!=" else labels.get(key) != m["value"]
        else:
            ok = key in labels
        if m["neg"]:
            ok = not ok if not m["op"] and not m["setop"] else ok
        if not ok:
            return False
    return True


def _prune(value: Any, schema: Mapping[str, Any]) -> None:
    """Drop, in place, the object fields a structural schema does not declare."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in list(value):
            if props is not None and key in props:
                _prune(value[key], props[key])
            elif isinstance(extra, Mapping):
                _prune(value[key], extra)
            elif props is not None:
                del value[key]
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _prune(item, schema["items"])


_MISSING = object()


@functools.lru_cache(maxsize=8)
def _validator(schema_json: str) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(json.loads(schema_json))


def _at(value: Any, path: Iterable[Any]) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return value


def _spec_part(body: Mapping[str, Any]) -> JSON:
    return {k: v for k, v in body.items() if k not in ("metadata", "status")}


_SERVERS = {
    kmock.action.LIST: "_serve_list",
    kmock.action.WATCH: "_serve_watch",
    kmock.action.FETCH: "_serve_fetch",
    kmock.action.CREATE: "_serve_create",
    kmock.action.UPDATE: "_serve_update",
    kmock.action.DELETE: "_serve_delete",
}
"""The Emulator's method that answers each action on a resource."""

_SERVER_META = ("uid", "creationTimestamp", "generation", "resourceVersion", "deletionTimestamp")


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviours listed in the module's docstring."""

    faults: list[Fault] = attrs.field(factory=list, init=False)
    statuses: dict[int, int] = attrs.field(factory=dict, init=False)
    in_flight: int = attrs.field(default=0, init=False)  # requests being answered, not watches
    custom_resources: set[kmock.resource] = attrs.field(factory=set, init=False)
    schemas: dict[kmock.resource, JSON] = attrs.field(factory=dict, init=False)
    validate: bool = attrs.field(default=True, init=False)  # custom resources' schemas
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _version: int = attrs.field(default=0, init=False)
    # The store's keys by resource (lists and watches read one kind, not every object).
    _keys: dict[kmock.resource, dict[tuple[str | None, str], None]] = attrs.field(
        factory=dict, init=False
    )
    _indexed: int = attrs.field(default=-1, init=False)
    keep_requests: int | None = None
    """The request log keeps the last this many requests (None: all)."""
    keep_versions: int | None = None
    """Each object keeps its last this many versions (None: all; at least 2, so that a
    deleted object keeps its last state)."""
    keep_events: int | None = None
    """The store keeps the newest this many Events (None: all), as an API server drops
    them after its ``--event-ttl`` (an hour by default)."""
    _events: collections.deque[tuple[Any, str | None, str]] = attrs.field(
        factory=collections.deque, init=False
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.keep_versions is not None and self.keep_versions < 2:
            raise ValueError(f"keep_versions must be at least 2, not {self.keep_versions}")
        log = RequestLog(self.keep_requests)
        log.dropped = self._forget
        self._requests = log  # type: ignore[assignment]
        # Replace (PUT) is answered like a patch: with the stored object.
        self.fallback[kmock.method.PUT] << self._serve_update

    @property
    def request_log(self) -> RequestLog:
        return self._requests  # type: ignore[return-value]

    def _remember(self, obj: Any, version: JSON) -> None:
        """Add ``version`` to ``obj``'s history, keeping the last ``keep_versions``."""
        obj.history.append(version)
        if self.keep_versions is not None and len(obj.history) > self.keep_versions:
            del obj.history[: len(obj.history) - self.keep_versions]

    def versions_kept(self) -> int:
        """Stored versions (and deletion markers) over every object."""
        return sum(len(obj.history) for obj in self._objects.values())

    @property
    def resource_version(self) -> str:
        return str(self._version)

    def _next_version(self) -> str:
        self._version = next(self._versions)
        return str(self._version)

    def _has_status(self, res: kmock.resource) -> bool:
        return res in self.resources and "status" in self.resources[res].subresources

    async def _publish(self, res: kmock.resource, kind: str, body: JSON) -> None:
        # ``body`` is a stored version: never changed in place once stored.
        await self._buses[res].put({"type": kind, "object": body})

    def _keys_of(self, res: kmock.resource) -> Iterable[tuple[str | None, str]]:
        """The (namespace, name) keys stored for ``res``, deleted ones included."""
        if self._indexed != len(self._objects):  # objects added (or removed) since
            self._keys = {}
            for r, ns, name in self._objects:
                self._keys.setdefault(r, {})[(ns, name)] = None
            self._indexed = len(self._objects)
        return self._keys.get(res, {})

    def _live(self, res: kmock.resource | None, ns: str | None, name: str | None) -> Any:
        """The stored object at a key, or None (absent or deleted)."""
        key = (res, ns, name or "")
        if res is None or key not in self._objects:
            return None
        obj = self._objects[key]
        return None if obj.deleted else obj

    def _get_resources(self) -> list[kmock.resource]:
        found = set(kmock.KubernetesScaffold._get_resources(self))
        self._keys_of(kmock.resource("", "v1", "namespaces"))  # refresh the index
        return list(found | set(self._keys))

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """Answer a resource request from the store (kmock's generic dispatch for the
        rest: discovery, and requests no handler here takes)."""
        method = str(request.method.value).upper()
        server = "_serve_update" if method == "PUT" else _SERVERS.get(request.action)
        if server is None or (method == "POST" and request.name):
            return await self._dispatch(request)
        response: aiohttp.web.StreamResponse = await kmock.Response(payload=getattr(self, server))(
            request
        )
        return response

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        obj = self._live(request.resource, request.namespace, request.name)
        if obj is None:
            raise kmock.KubernetesError(
                status=404,
                reason="NotFound",
                message=f'{request.resource} "{request.name}" not found',
            )
        return obj.raw

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        meta = (request.data or {}).get("metadata") or {}
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name", ""))
        return self._objects[key].last.raw

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        # The last state, also of an object deleted by this write (its finalizers removed).
        return self._objects[(request.resource, request.namespace, request.name or "")].last.raw

    async def _serve_delete(self, request: kmock.Request) -> kmock.Payload:
        return self._objects[(request.resource, request.namespace, request.name or "")].last.raw

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        watch = request.action == kmock.action.WATCH
        self.in_flight += not watch
        try:
            response = await self._respond(request)
        except kmock.KubernetesError as exc:
            self._answered(request, exc.status)
            raise
        except Exception:
            self._answered(request, 500)
            raise
        finally:
            self.in_flight -= not watch
        self._answered(request, response.status)
        # Answered: the log keeps the request, not the server's connection objects.
        object.__setattr__(request, "_raw_request", None)
        return response

    async def _dispatch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        """kmock's generic dispatch (discovery, and requests no handler here takes),
        with the request log showing it this request alone: kmock finds a reaction by
        filtering every request in the log to see whether the reaction's view holds this
        one, a cost that grew with every request served (seconds per discovery request
        after a few minutes of a benchmark). The emulator's reactions filter by the
        request's own fields, never by its position in the log, so the answer is the
        same."""
        token = _DISPATCHING.set(request)
        try:
            response: aiohttp.web.StreamResponse = await kmock.RawHandler._handle(self, request)
        finally:
            _DISPATCHING.reset(token)
        return response

    def _forget(self, request: kmock.Request) -> None:
        """The log let go of ``request``: its status goes too."""
        self.statuses.pop(request.id, None)

    def _answered(self, request: kmock.Request, status: int) -> None:
        if request.id >= self.request_log.first:  # else the log no longer keeps it
            self.statuses[request.id] = status

    async def _respond(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        call = call_of(request)
        if call is None:
            return await self._dispatch(request)
        fault = next((f for f in self.faults if f.matches(call)), None)
        if fault is not None:
            fault.hits.append(dataclasses.replace(call, status=fault.status))
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status == 0:
                fault = None  # slow, then answered
            elif not fault.applied:
                raise fault.error(call)
        if call.verb in ("create", "update", "patch", "delete"):
            async with self._lock:
                await self._write(request, call)
        if fault is not None:
            raise fault.error(call)
        return await self._serve(request)

    async def _write(self, request: kmock.Request, call: Call) -> None:
        res = request.resource
        assert res is not None
        data = request.data
        if call.verb == "create":
            await self._create(res, call, data)
            return
        key = (res, call.namespace, call.name or "")
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesError(
                status=404,
                reason="NotFound",
                message=f'{call.resource} "{call.name}" not found',
            )
        obj = self._objects[key]
        old: JSON = copy.deepcopy(obj.raw)
        meta = old.setdefault("metadata", {})
        if call.verb == "delete":
            if meta.get("deletionTimestamp"):
                return
            if meta.get("finalizers"):
                meta["deletionTimestamp"] = now_iso()
                meta["resourceVersion"] = self._next_version()
                self._remember(obj, old)
                await self._publish(res, "MODIFIED", old)
            else:
                meta["resourceVersion"] = self._next_version()
                self._remember(obj, old)
                obj.delete()
                await self._publish(res, "DELETED", old)
            return
        new = self._updated(call, request, old, data)
        self._admit(res, new, old)
        if new == old:
            return  # a no-op write: no new resourceVersion, no event (as the API server)
        new_meta = new["metadata"]
        if _spec_part(new) != _spec_part(old):
            new_meta["generation"] = int(meta.get("generation", 1)) + 1
        new_meta["resourceVersion"] = self._next_version()
        self._remember(obj, new)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            obj.delete()
            await self._publish(res, "DELETED", new)
        else:
            await self._publish(res, "MODIFIED", new)

    async def _create(self, res: kmock.resource, call: Call, data: Any) -> None:
        if not isinstance(data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="no object")
        meta = data.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="metadata.name: Required value"
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if call.namespace is not None:
            meta["namespace"] = call.namespace
        key = (res, call.namespace, meta["name"])
        if key in self._objects and not self._objects[key].deleted:
            raise kmock.KubernetesError(
                status=409,
                reason="AlreadyExists",
                message=f'{call.resource} "{meta["name"]}" already exists',
            )
        body: JSON = copy.deepcopy(data)
        if self._has_status(res):
            body.pop("status", None)
        self._admit(res, body)
        body["metadata"].pop("deletionTimestamp", None)
        body["metadata"].update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_version(),
            generation=1,
            creationTimestamp=now_iso(),
        )
        if key in self._objects:
            self._remember(self._objects[key], body)
        else:
            fresh = self._indexed == len(self._objects)
            self._objects[key] = body
            if fresh:  # keep the index current without a rebuild
                self._keys.setdefault(res, {})[(call.namespace, meta["name"])] = None
                self._indexed += 1
            if res.plural == "events" and self.keep_events is not None:
                self._expire_events(key)
        await self._publish(res, "ADDED", body)

    def _expire_events(self, key: tuple[Any, str | None, str]) -> None:
        """Remember a new Event; drop the oldest beyond ``keep_events`` from the store."""
        assert self.keep_events is not None
        self._events.append(key)
        while len(self._events) > self.keep_events:
            old = self._events.popleft()
            if old not in self._objects:
                continue
            fresh = self._indexed == len(self._objects)
            del self._objects[old]
            self._keys.get(old[0], {}).pop((old[1], old[2]), None)
            if fresh:
                self._indexed -= 1

    def _updated(self, call: Call, request: kmock.Request, old: JSON, data: Any) -> JSON:
        """The object after an update or patch (not stored yet)."""
        current = old["metadata"].get("resourceVersion")
        content_type = {k.lower(): v for k, v in request.headers.items()}.get("content-type", "")
        if call.verb == "patch" and "json-patch" in content_type:
            try:
                patched = jsonpatch.apply_patch(old, data, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc
        elif call.verb == "patch" and "apply-patch" in content_type:
            raise kmock.KubernetesError(
                status=415, reason="UnsupportedMediaType", message="server-side apply"
            )
        elif call.verb == "patch":
            wanted = (data or {}).get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != current:
                raise self._conflict(call)
            patched = _merge_patch(old, data or {})
        else:  # update (PUT)
            if not isinstance(data, dict):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="no object")
            wanted = data.get("metadata", {}).get("resourceVersion")
            if wanted is None and call.rbac[1].split("/")[0] in {
                r.plural for r in self.custom_resources
            }:
                raise kmock.KubernetesError(
                    status=422,
                    reason="Invalid",
                    message="metadata.resourceVersion: Invalid value: 0x0: must be specified "
                    "for an update",
                )
            if wanted is not None and wanted != current:
                raise self._conflict(call)
            patched = copy.deepcopy(data)

        res = request.resource
        assert res is not None
        if call.subresource == "status":
            new = copy.deepcopy(old)
            if patched.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = patched["status"]
        elif call.subresource:
            raise kmock.KubernetesError(
                status=404, reason="NotFound", message=f"subresource {call.subresource}"
            )
        else:
            new = patched
            if self._has_status(res):
                new.pop("status", None)
                if "status" in old:
                    new["status"] = old["status"]
        meta = new.setdefault("metadata", {})
        for key in _SERVER_META:
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        meta["name"] = old["metadata"].get("name")
        if "namespace" in old["metadata"]:
            meta["namespace"] = old["metadata"]["namespace"]
        return new

    def _admit(self, res: kmock.resource, body: JSON, old: JSON | None = None) -> None:
        """What the API server does with a custom resource's structural schema: drop the
        fields the schema does not declare (kopf's and the ``kubernetes`` client's requests
        do not ask for strict field validation), then reject a body that does not validate
        (422), except where an update leaves an invalid value as it was (validation
        ratcheting). CEL rules and defaults are not applied."""
        schema = self.schemas.get(res)
        if schema is None or not self.validate:
            return
        _prune(body, schema)
        errors = sorted(
            (
                e
                for e in _validator(json.dumps(schema, sort_keys=True)).iter_errors(body)
                if old is None or _at(old, e.path) != _at(body, e.path)
            ),
            key=lambda e: list(e.path),
        )
        if errors:
            kind = self.resources[res].kind if res in self.resources else res.plural
            name = body.get("metadata", {}).get("name")
            causes = "; ".join(
                f"{'.'.join(str(p) for p in e.path) or '(object)'}: Invalid value: "
                f"{json.dumps(e.instance)[:80]}: {e.message[:200]}"
                for e in errors
            )
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message=f'{kind}.{res.group} "{name}" is invalid: {causes}',
            )

    @staticmethod
    def _conflict(call: Call) -> kmock.KubernetesError:
        return kmock.KubernetesError(
            status=409,
            reason="Conflict",
            message=f'Operation cannot be fulfilled on {call.resource} "{call.name}": the '
            "object has been modified; please apply your changes to the latest version and "
            "try again",
        )

    def _selected(self, request: kmock.Request) -> list[JSON]:
        """Live objects a list or watch request selects (namespace, name, labels): the
        stored versions themselves, not copies (they are never changed in place)."""
        selector = request.params.get("labelSelector")
        res = request.resource
        out: list[JSON] = []
        if res is None:
            return out
        for ns, name in list(self._keys_of(res)):
            if request.namespace is not None and ns != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            obj = self._objects[(res, ns, name)]
            if obj.deleted:
                continue
            raw = obj.raw
            if selector_matches(selector, raw.get("metadata", {}).get("labels") or {}):
                out.append(raw)
        return out

    async def _serve_list(self, request: kmock.Request) -> kmock.Payload:
        res = request.resource
        if res is None or not (res in self.resources or self._keys_of(res)):
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._selected(request)
        kind = self.resources[res].kind if res in self.resources else None
        api_version = f"{res.group}/{res.version}" if res.group else str(res.version)
        return {
            "apiVersion": api_version,
            "kind": f"{kind or 'Object'}List",
            "metadata": {"resourceVersion": self.resource_version},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[kmock.Payload]:
        yield b""  # send the headers now: the stream is open even if nothing happens
        res = request.resource
        assert res is not None
        selector = request.params.get("labelSelector")
        bus = self._buses[res]
        async with self._lock:  # no change can slip between the listing and the stream
            existing = self._selected(request)
            marker = await bus.mark()
        try:
            for raw in existing:
                yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if selector_matches(selector, meta.get("labels") or {}):
                    yield event
        finally:
            with contextlib.suppress(Exception):
                await bus.unmark(marker)


# -- the cluster a test talks to ---------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def minimal_crd() -> JSON:
    """The ExeGPTDeployment CRD as far as discovery and storage need it."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "exegptdeployments.exegpt.dev"},
        "spec": {
            "group": "exegpt.dev",
            "names": {
                "kind": "ExeGPTDeployment",
                "listKind": "ExeGPTDeploymentList",
                "plural": "exegptdeployments",
                "singular": "exegptdeployment",
                "shortNames": ["exegpt"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def load_crd() -> JSON:
    """The generated CRD from ``crds/`` (a minimal one until it is generated)."""
    if CRD_PATH.exists():
        crd = yaml.safe_load(CRD_PATH.read_text())
        assert isinstance(crd, dict)
        return crd
    return minimal_crd()


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def path_of(
    api_version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    group, version = _split(api_version)
    out = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        out += f"/namespaces/{namespace}"
    out += f"/{plural}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Cluster:
    """The emulated cluster as a test sees it. Every write goes through the HTTP API
    (watches see it) and is marked as the harness's own in the request log."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    @property
    def url(self) -> str:
        return str(self.emulator.url).rstrip("/")

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client for the emulator (call it through ``asyncio.to_thread``:
        the emulator serves in this event loop)."""
        return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=self.url))

    # -- bootstrap --------------------------------------------------------------------------

    async def bootstrap(self, crds: Iterable[JSON] = ()) -> None:
        """Discovery of the built-in kinds, namespace ``default``, and the given CRDs."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # kmock's importlib use
            self.emulator.resources.load_bundled()
        await self.create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        )
        for crd in crds:
            await self.register_crd(crd)

    async def register_crd(self, crd: JSON) -> None:
        """Store a CRD object and serve its kind in discovery (the emulator does not derive
        discovery from CRD objects)."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            res = kmock.resource(spec["group"], version["name"], names["plural"])
            self.emulator.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular"),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set((version.get("subresources") or {}).keys()),
            )
            self.emulator.custom_resources.add(res)
            schema = (version.get("schema") or {}).get("openAPIV3Schema")
            if schema is not None:
                self.emulator.schemas[res] = schema
        await self.create(crd)

    @contextlib.contextmanager
    def unvalidated(self) -> Iterator[None]:
        """Store custom resources as they are, as if their CRD had no schema (one that
        an older CRD let in): ``with cluster.unvalidated(): await cluster.create(...)``."""
        self.emulator.validate = False
        try:
            yield
        finally:
            self.emulator.validate = True

    # -- plain API access --------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {HARNESS_HEADER: "1", "Content-Type": content_type}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        async with self.emulator.request(method, path, **kwargs) as rsp:
            text = await rsp.text()
            payload = json.loads(text) if text else None
            if rsp.status >= 400:
                raise ApiError(rsp.status, payload)
            return payload

    def plural_of(self, api_version: str, kind: str) -> str:
        group, version = _split(api_version)
        for res in self.emulator.resources:
            info = self.emulator.resources[res]
            if (res.group, res.version, info.kind) == (group, version, kind) and res.plural:
                return res.plural
        raise KeyError(f"no resource of kind {kind} in {api_version}")

    def _namespaced(self, api_version: str, plural: str) -> bool:
        group, version = _split(api_version)
        res = kmock.resource(group, version, plural)
        return not (
            res in self.emulator.resources and self.emulator.resources[res].namespaced is False
        )

    async def create(self, body: JSON) -> JSON:
        api_version, kind = body["apiVersion"], body["kind"]
        plural = self.plural_of(api_version, kind)
        ns = body.get("metadata", {}).get("namespace")
        ns = ns or NAMESPACE if self._namespaced(api_version, plural) else None
        out: JSON = await self.request("POST", path_of(api_version, plural, ns), body)
        return out

    async def get(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> JSON | None:
        try:
            out: JSON = await self.request("GET", path_of(api_version, plural, namespace, name))
            return out
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def patch(
        self,
        api_version: str,
        plural: str,
        namespace: str | None,
        name: str,
        patch: JSON,
        *,
        subresource: str | None = None,
    ) -> JSON:
        out: JSON = await self.request(
            "PATCH",
            path_of(api_version, plural, namespace, name, subresource),
            patch,
            "application/merge-patch+json",
        )
        return out

    async def delete(self, api_version: str, plural: str, namespace: str | None, name: str) -> None:
        await self.request("DELETE", path_of(api_version, plural, namespace, name))

    # Read the store directly (no request, nothing in the log).
    def stored(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> JSON | None:
        group, version = _split(api_version)
        key = (kmock.resource(group, version, plural), namespace, name)
        if key not in self.emulator.objects:
            return None
        obj = self.emulator.objects[key]
        return None if obj.deleted else copy.deepcopy(obj.raw)

    def peek(
        self, api_version: str, plural: str, namespace: str | None, name: str
    ) -> Mapping[str, Any] | None:
        """The stored object itself, not a copy: to read, never to change (a poll of many
        objects, as a benchmark's, costs no deep copies)."""
        group, version = _split(api_version)
        obj = self.emulator._live(kmock.resource(group, version, plural), namespace, name)
        return None if obj is None else obj.raw

    def stored_all(
        self, api_version: str, plural: str, namespace: str | None = NAMESPACE
    ) -> list[JSON]:
        group, version = _split(api_version)
        res = kmock.resource(group, version, plural)
        return sorted(
            (
                copy.deepcopy(obj.raw)
                for (r, ns, _), obj in self.emulator.objects.items()
                if r == res and not obj.deleted and (namespace is None or ns == namespace)
            ),
            key=lambda o: str(o["metadata"]["name"]),
        )

    # -- ExeGPTDeployments ----------------------------------------------------------------------

    def deployment(self, name: str, namespace: str = NAMESPACE) -> JSON | None:
        return self.stored(EXEGPT, "exegptdeployments", namespace, name)

    async def patch_deployment(self, name: str, patch: JSON, namespace: str = NAMESPACE) -> JSON:
        return await self.patch(EXEGPT, "exegptdeployments", namespace, name, patch)

    def jobs(self, namespace: str = NAMESPACE) -> list[JSON]:
        return self.stored_all(JOBS, "jobs", namespace)

    def statefulsets(self, namespace: str = NAMESPACE) -> list[JSON]:
        return self.stored_all(APPS, "statefulsets", namespace)

    def services(self, namespace: str = NAMESPACE) -> list[JSON]:
        return self.stored_all(CORE, "services", namespace)

    def configmaps(self, namespace: str = NAMESPACE) -> list[JSON]:
        return self.stored_all(CORE, "configmaps", namespace)

    # -- the controllers the emulator does not run ----------------------------------------------

    async def set_job_succeeded(self, namespace: str, name: str) -> JSON:
        """What the Job controller writes when the Job's pod exits 0."""
        ts = now_iso()
        status = {
            "active": 0,
            "ready": 0,
            "succeeded": 1,
            "startTime": ts,
            "completionTime": ts,
            "conditions": [
                _condition("SuccessCriteriaMet", "CompletionsReached", ts),
                _condition("Complete", "CompletionsReached", ts),
            ],
        }
        return await self.patch(
            JOBS, "jobs", namespace, name, {"status": status}, subresource="status"
        )

    async def set_job_failed(
        self, namespace: str, name: str, reason: str = "BackoffLimitExceeded"
    ) -> JSON:
        """What the Job controller writes when the Job's pods failed past its backoff limit
        (``DeadlineExceeded`` for a Job past its ``activeDeadlineSeconds``)."""
        ts = now_iso()
        job = self.stored(JOBS, "jobs", namespace, name) or {}
        limit = int(job.get("spec", {}).get("backoffLimit", 0) or 0)
        status = {
            "active": 0,
            "ready": 0,
            "failed": limit + 1,
            "startTime": ts,
            "conditions": [
                _condition("FailureTarget", reason, ts),
                _condition("Failed", reason, ts),
            ],
        }
        return await self.patch(
            JOBS, "jobs", namespace, name, {"status": status}, subresource="status"
        )

    async def set_statefulset_ready(self, namespace: str, name: str) -> JSON:
        """What the StatefulSet controller writes once every replica is updated and ready."""
        sts = self.stored(APPS, "statefulsets", namespace, name)
        if sts is None:
            raise KeyError(f"no StatefulSet {namespace}/{name}")
        replicas = int(sts.get("spec", {}).get("replicas", 1))
        revision = f"{name}-{sts['metadata']['resourceVersion']}"
        status = {
            "observedGeneration": sts["metadata"].get("generation", 1),
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "currentReplicas": replicas,
            "updatedReplicas": replicas,
            "currentRevision": revision,
            "updateRevision": revision,
        }
        return await self.patch(
            APPS, "statefulsets", namespace, name, {"status": status}, subresource="status"
        )

    async def write_profile_configmap(
        self,
        namespace: str,
        name: str,
        profile_json: str,
        *,
        key: str = "profile.json",
        labels: Mapping[str, str] | None = None,
    ) -> JSON:
        """What the profiling Job's container does when it finishes: store the profile."""
        existing = self.stored(CORE, "configmaps", namespace, name)
        if existing is not None:
            return await self.patch(
                CORE, "configmaps", namespace, name, {"data": {key: profile_json}}
            )
        body: JSON = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
            "data": {key: profile_json},
        }
        return await self.create(body)

    # -- the request log ----------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the request log; ``calls(since=mark)`` lists what came after."""
        return len(self.emulator._requests)

    def calls(self, since: int = 0, *, include_harness: bool = False) -> list[Call]:
        """API calls (discovery excluded) since a mark, the operator's only by default."""
        out = []
        for request in self.emulator.request_log.since(since):
            call = call_of(request)
            if call is not None and (include_harness or not call.by_harness):
                out.append(dataclasses.replace(call, status=self.emulator.statuses.get(call.id)))
        return out

    def writes_since(self, since: int = 0) -> list[Call]:
        return [c for c in self.calls(since) if c.is_write]

    def api_usage(self, since: int = 0) -> set[tuple[str, str, str]]:
        """The ``(apiGroup, resource, verb)`` triples the operator used."""
        return {c.rbac for c in self.calls(since)}

    # -- failures -------------------------------------------------------------------------------

    def fail(
        self,
        verb: str,
        resource: str,
        *,
        status: int = 500,
        times: int = 1,
        name: str | None = None,
        applied: bool = False,
        delay: float = 0.0,
    ) -> Fault:
        """Answer the operator's next ``times`` matching requests with ``status``
        (see ``Fault``; ``delay`` holds each answer back that long, and ``status=0`` then
        answers as usual); returns the fault, whose ``hits`` lists the requests it answered."""
        fault = Fault(verb, resource, status, times, name, applied, delay)
        self.emulator.faults.append(fault)
        return fault

    # -- waiting -----------------------------------------------------------------------------------

    async def wait_for(
        self,
        condition: Callable[[], T | Awaitable[T | None] | None],
        *,
        timeout: float = 10.0,
        interval: float = 0.01,
        what: str = "",
    ) -> T:
        """Poll ``condition`` (sync or async) until it returns something truthy; return it.

        Fails with ``what`` (or the condition's source) after ``timeout`` seconds of loop
        time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            if loop.time() >= deadline:
                label = what or _source(condition)
                raise AssertionError(f"timed out after {timeout}s waiting for {label}")
            await asyncio.sleep(interval)

    async def wait_idle(self, quiet: float = 0.05, timeout: float = 5.0) -> None:
        """Wait until no request (watches aside) has been in flight for ``quiet`` seconds:
        after an operator stops, a request its threads had already started lands first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle_since: float | None = None
        seen = self.mark()
        while loop.time() < deadline:
            now = loop.time()
            if self.emulator.in_flight or self.mark() != seen:
                idle_since, seen = None, self.mark()
            elif idle_since is None:
                idle_since = now
            elif now - idle_since >= quiet:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"requests still in flight after {timeout}s")

    async def wait_for_call(
        self,
        verb: str,
        resource: str,
        *,
        since: int = 0,
        name: str | None = None,
        timeout: float = 10.0,
    ) -> Call:
        """Wait until the operator has made a matching request (after ``since``)."""

        def found() -> Call | None:
            return next(
                (
                    c
                    for c in self.calls(since)
                    if c.verb == verb and c.rbac[1] == resource and name in (None, c.name)
                ),
                None,
            )

        return await self.wait_for(found, timeout=timeout, what=f"{verb} {resource} {name or ''}")


def _condition(type_: str, reason: str, ts: str) -> JSON:
    return {
        "type": type_,
        "status": "True",
        "reason": reason,
        "message": "",
        "lastProbeTime": ts,
        "lastTransitionTime": ts,
    }


def _source(fn: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(fn).strip()
    except (OSError, TypeError):
        return repr(fn)


@contextlib.asynccontextmanager
async def running_cluster(
    crds: Iterable[JSON] | None = None,
    *,
    keep_requests: int | None = None,
    keep_versions: int | None = None,
    keep_events: int | None = None,
) -> AsyncIterator[Cluster]:
    """An emulated cluster serving on a local port in the running event loop; a long
    run bounds what it keeps (``Emulator.keep_requests``, ``keep_versions``,
    ``keep_events``)."""
    emulator = Emulator(
        keep_requests=keep_requests, keep_versions=keep_versions, keep_events=keep_events
    )
    async with emulator, kmock.Server(emulator):
        cluster = Cluster(emulator)
        await cluster.bootstrap([load_crd()] if crds is None else crds)
        yield cluster


# -- the operator in-process ---------------------------------------------------------------------


def tune_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for tests: react at once, reconnect fast, exit fast."""
    settings.queueing.idle_timeout = 1.0
    settings.queueing.exit_timeout = 0.5
    settings.queueing.error_delays = [0.05, 0.1, 0.2]
    settings.watching.reconnect_backoff = 0.05
    settings.persistence.consistency_timeout = 1.0
    # A graceful stop lets a timer finish the pass it is in (else kopf leaves it running
    # orphaned, and its writes would land after the stop).
    settings.background.instant_exit_timeout = 5.0


_SUCCEEDED = re.compile(r"^(?:Handler|Timer|Daemon|Activity) '(?P<id>[^']+)' succeeded")


class HandlerRuns(logging.Handler):
    """Counts the successful runs of each kopf handler per object, from kopf's log:
    ``runs[(handler id, object name)]``. A pass the API cannot see (one that reads and
    writes nothing) is still seen here."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.runs: collections.Counter[tuple[str, str]] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = _SUCCEEDED.match(record.getMessage())
        if m is not None:
            ref = getattr(record, "k8s_ref", None) or {}
            self.runs[(m["id"], str(ref.get("name", "")))] += 1


def _close_clients(memo: kopf.Memo) -> None:
    """Close the ``kubernetes`` clients in a memo (directly or as a wrapper's ``.api``)."""
    for value in list(memo.values()):
        client = getattr(value, "api", value)
        if isinstance(client, kubernetes.client.ApiClient):
            client.close()  # type: ignore[no-untyped-call]


_KOPF_DIR = str(Path(kopf.__file__).parent)
_KOPF_DAEMONS = str(Path(kopf.__file__).parent / "_core" / "engines" / "daemons.py")


def _code_file(task: object) -> str:
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    return str(getattr(code, "co_filename", ""))


# Which operator made each task: with two operators in one loop (tests of leader
# election), one stopping must neither wait for nor cancel the other's tasks. A task
# factory reads the operator from the creating context, which every task it starts
# inherits.
_OWNER: contextvars.ContextVar[object | None] = contextvars.ContextVar("_OWNER", default=None)
_OWNERS: weakref.WeakKeyDictionary[asyncio.Task[Any], object] = weakref.WeakKeyDictionary()


def _track_owners(loop: asyncio.AbstractEventLoop) -> None:
    previous = loop.get_task_factory()
    if getattr(previous, "_exegpt_owners", False):
        return

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        owner = _OWNER.get()
        if owner is not None:
            _OWNERS[task] = owner
        return task

    factory._exegpt_owners = True  # type: ignore[attr-defined]
    loop.set_task_factory(factory)


class _NotOperatorTasks(Collection[asyncio.Task[Any]]):
    """Every task but kopf's own (the emulator's connections, pytest's fixtures, the
    test), kopf's timer tasks, which ``Operator`` stops itself, and the tasks of
    another operator running in the same loop."""

    def __init__(self, owner: object = None) -> None:
        self.owner = owner

    def __contains__(self, task: object) -> bool:
        path = _code_file(task)
        if isinstance(task, asyncio.Task) and _OWNERS.get(task, self.owner) is not self.owner:
            return True
        return not path.startswith(_KOPF_DIR) or path == _KOPF_DAEMONS

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(())

    def __len__(self) -> int:
        return 0


async def _cancel_timers(owner: object = None) -> None:
    """Cancel kopf's timer tasks left running: a watch event processed while the operator
    stops can start a timer after kopf has stopped the others (kopf would wait 5 s for
    it, then cancel it). Only ``owner``'s, where tasks are tracked (``_track_owners``)."""
    tasks = [
        t
        for t in asyncio.all_tasks()
        if _code_file(t) == _KOPF_DAEMONS and not t.done() and _OWNERS.get(t, owner) is owner
    ]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Operator:
    """A kopf operator run as a task in the test's event loop against the emulator.

    ``registry_factory`` makes a fresh registry per start (a restarted operator is a new
    process); the harness adds a login handler pointing kopf at the emulator, and starts
    kopf with its delays tuned for tests (``tune_kopf``; the registry's startup handlers
    may change other settings).
    ``memo_factory`` makes the memo kopf hands to handlers (``memo.kube`` etc.).
    """

    def __init__(
        self,
        cluster: Cluster,
        registry_factory: Callable[[], kopf.OperatorRegistry],
        *,
        memo_factory: Callable[[], kopf.Memo] | None = None,
        namespaces: Iterable[str] = (NAMESPACE,),
    ) -> None:
        self.cluster = cluster
        self.registry_factory = registry_factory
        self.memo_factory = memo_factory or kopf.Memo
        self.namespaces = list(namespaces)
        self.task: asyncio.Task[None] | None = None
        self.stop_flag: asyncio.Event | None = None
        self.memo: kopf.Memo | None = None
        self.starts = 0
        self.config: Any = None  # the operator's own settings, where it has any
        self.handler_runs = HandlerRuns()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def _registry(self) -> kopf.OperatorRegistry:
        registry = self.registry_factory()
        url = self.cluster.url

        @kopf.on.login(registry=registry)
        def harness_login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=url, insecure=True, priority=1_000_000)

        return registry

    async def start(self, timeout: float = 10.0) -> None:
        if self.running:
            raise RuntimeError("the operator is already running")
        settings = kopf.OperatorSettings()
        tune_kopf(settings)
        kopf_log = logging.getLogger("kopf")
        if self.handler_runs not in kopf_log.handlers:
            kopf_log.addHandler(self.handler_runs)
        if not kopf_log.isEnabledFor(logging.INFO):
            kopf_log.setLevel(logging.INFO)
        self.stop_flag = asyncio.Event()
        ready = asyncio.Event()
        self.memo = self.memo_factory()
        self.starts += 1
        self.task = asyncio.create_task(
            self._run(settings, self.stop_flag, ready, self.memo), name=f"operator-{self.starts}"
        )
        waiter = asyncio.ensure_future(ready.wait())
        done, _ = await asyncio.wait(
            {waiter, self.task}, timeout=timeout, return_when="FIRST_COMPLETED"
        )
        waiter.cancel()
        if self.task in done:
            self.task.result()  # raises what the operator failed with
            raise RuntimeError("the operator exited during startup")
        if not done:
            await self.kill()
            raise AssertionError(f"the operator was not ready after {timeout}s")

    async def _run(
        self,
        settings: kopf.OperatorSettings,
        stop_flag: asyncio.Event,
        ready: asyncio.Event,
        memo: kopf.Memo,
    ) -> None:
        """``kopf.operator()``, except that only kopf's own tasks are taken for the
        operator's (kopf waits 5 s on exit for every task started after it, then cancels
        it: the emulator's connections and pytest's fixture tasks are not its own)."""
        _track_owners(asyncio.get_running_loop())
        _OWNER.set(self)
        ignored = _NotOperatorTasks(self)
        tasks = await kopf.spawn_tasks(
            registry=self._registry(),
            settings=settings,
            clusterwide=False,
            namespaces=self.namespaces,
            standalone=True,
            stop_flag=stop_flag,
            ready_flag=ready,
            memo=memo,
            liveness_endpoint=None,
        )
        try:
            await kopf.run_tasks(tasks, ignored=ignored)
        finally:
            await _cancel_timers(self)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop gracefully (as on SIGTERM) and wait for the operator to exit."""
        if self.task is None:
            return
        assert self.stop_flag is not None
        self.stop_flag.set()
        task, self.task = self.task, None
        try:
            await asyncio.wait_for(task, timeout)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        await self.cluster.wait_idle()
        if self.memo is not None:
            _close_clients(self.memo)
        logging.getLogger("kopf").removeHandler(self.handler_runs)

    async def kill(self) -> None:
        """Stop at once, mid-whatever (as a crash or SIGKILL would)."""
        if self.task is None:
            return
        task, self.task = self.task, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.cluster.wait_idle()
        logging.getLogger("kopf").removeHandler(self.handler_runs)

    def runs(self, handler: str, name: str) -> int:
        """Successful runs so far of kopf handler ``handler`` (its id) for object ``name``."""
        return self.handler_runs.runs[(handler, name)]

    async def wait_runs(
        self, handler: str, name: str, count: int = 1, *, timeout: float = 10.0
    ) -> None:
        """Wait for ``count`` more successful runs of ``handler`` for ``name``."""
        target = self.runs(handler, name) + count
        await self.cluster.wait_for(
            lambda: self.runs(handler, name) >= target,
            timeout=timeout,
            what=f"{count} run(s) of handler {handler!r} for {name!r}",
        )

    async def settle(
        self, name: str, *, handler: str = "converge", passes: int = 2, timeout: float = 10.0
    ) -> None:
        """Wait until ``passes`` consecutive runs of ``handler`` (the periodic pass) for
        ``name`` make no write; fail if the operator still writes after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            mark = self.cluster.mark()
            await self.wait_runs(handler, name, passes, timeout=timeout)
            writes = self.cluster.writes_since(mark)
            if not writes:
                return
            if loop.time() >= deadline:
                listed = "\n  ".join(str(c) for c in writes)
                raise AssertionError(f"the operator still writes after {timeout}s:\n  {listed}")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Operator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# -- the ExeGPT operator ------------------------------------------------------------------------


def test_settings(**overrides: Any) -> Any:
    """``OperatorSettings`` for tests: namespace ``default``, no health endpoint, passes
    every 0.1 s, no wait between profiling attempts."""
    from exegpt.operator.settings import OperatorSettings

    values: dict[str, Any] = {
        "namespaces": (NAMESPACE,),
        "liveness_endpoint": None,
        "resync_seconds": 0.1,
        "retry_backoff_seconds": 0.0,
        "retry_backoff_max_seconds": 0.0,
        "error_retry_seconds": 0.1,
        "error_retry_max_seconds": 1.0,
        "plan_time_limit_seconds": 20.0,
        "runtime_image": "registry.test/exegpt-runtime:test",
    }
    values.update(overrides)
    return OperatorSettings(**values)


def exegpt_operator(
    cluster: Cluster,
    *,
    metrics: Any = None,
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> Operator:
    """The ExeGPT operator (``exegpt.operator.app.create_registry``) against ``cluster``,
    its API client preset in ``memo.kube``; ``metrics`` (a ``MetricsReader``) and
    ``clock`` replace the workers' HTTP metrics and the wall clock when given."""
    from exegpt.operator.app import create_registry
    from exegpt.operator.kube import Kube

    config = test_settings(**settings)

    def memo() -> kopf.Memo:
        # The client's own retries of 5xx answers, with short waits between them.
        return kopf.Memo(
            kube=Kube(
                cluster.api_client(),
                retries=4,
                backoff_seconds=0.005,
                timeout_seconds=config.api_timeout_seconds,
            ),
            metrics=metrics,
            clock=clock,
        )

    def registry() -> kopf.OperatorRegistry:
        return create_registry(config)

    operator = Operator(cluster, registry, memo_factory=memo, namespaces=config.namespaces)
    operator.config = config
    return operator


def condition(body: Mapping[str, Any] | None, type_: str) -> JSON | None:
    """The condition ``type_`` of an ExeGPTDeployment's status, if any."""
    for cond in ((body or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None


def measured_profile(spec_body: Mapping[str, Any]) -> tuple[str, str]:
    """``(profile key, profile JSON)`` that a profiling Job for ``spec_body`` writes (the
    analytic profile, labelled as measured by the profiler's version)."""
    from exegpt.operator.request import plan_request
    from exegpt.operator.spec import parse_spec
    from exegpt.planner.analytic import analytic_profile
    from exegpt.planner.profile import MEASURED_PROFILER_VERSION, Profile

    request = plan_request(parse_spec(spec_body))
    arch, gpu = request.architecture, request.gpu
    degrees = arch.tensor_parallel_degrees(limit=min(request.gpus_per_node, request.gpus))
    analytic = analytic_profile(arch, gpu, request.dtype, degrees)
    provenance = analytic.provenance.model_copy(
        update={"source": "measured", "profiler_version": MEASURED_PROFILER_VERSION}
    )
    profile = Profile.model_validate({**analytic.model_dump(), "provenance": provenance})
    return profile.key, profile.to_json()


def is_condition(body: Mapping[str, Any] | None, type_: str, status: str = "True") -> bool:
    cond = condition(body, type_)
    return cond is not None and cond.get("status") == status


class Clock:
    """The operator's clock, moved by the test (kopf's own timers keep real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def ready_worker_pods(cluster: Cluster, name: str) -> None:
    """Play the StatefulSet controller and the kubelet for every worker pod of
    deployment ``name``: its StatefulSets ready, each pod created with a ready status
    (the drift checks read the replica drivers' ``/metrics``)."""
    from builders import worker_pod

    for sts in cluster.statefulsets():
        await cluster.set_statefulset_ready(NAMESPACE, sts["metadata"]["name"])
        role = sts["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in range(sts["spec"]["replicas"]):
            pod = worker_pod(name, role, o)
            await cluster.create(pod)
            await cluster.patch(
                CORE, "pods", NAMESPACE, pod["metadata"]["name"], {"status": pod["status"]},
                subresource="status",
            )  # fmt: skip


def rendered(cluster: Cluster, name: str = "x") -> bool:
    """Whether the operator has written every worker StatefulSet of the plan recorded in
    the deployment's status (as many as ``expected_roles`` says, whatever the planner
    chose) and both Services."""
    plan = ((cluster.deployment(name) or {}).get("status") or {}).get("plan")
    if not plan:
        return False
    return len(cluster.statefulsets()) == len(expected_roles(plan)) and len(cluster.services()) == 2


def expected_roles(plan: Mapping[str, Any], gpus_per_node: int = 8) -> dict[str, tuple[int, int]]:
    """``{role: (pods, GPUs per pod)}`` a recorded plan (``status.plan``) runs on nodes of
    ``gpus_per_node`` GPUs, derived from the plan's own fields. On the own engine,
    RoundRobin (and a Static or Continuous plan) runs ``worker`` pods, one per pipeline
    stage of each replica, each with ``tensorParallel`` GPUs; WorkloadAware runs
    ``encoder`` pods (``encodeStages`` per replica, ``encodeTensorParallel`` GPUs) and
    ``decoder`` pods (``pipelineStages`` per replica, ``tensorParallel`` GPUs). On vLLM a
    server on one node is one pod: ``worker`` pods (one per replica) with every GPU of
    the replica, or for WorkloadAware ``encoder`` (prefill) and ``decoder`` pods, one
    each per replica, and one ``router`` pod (no GPU) in front of them; a server over
    ``n`` whole nodes adds ``n - 1`` pods per replica in ``<role>-n``, every pod with a
    node's GPUs."""
    replicas = int(plan["replicas"])
    if plan.get("engine") == "vLLM":
        if plan["strategy"] == "WorkloadAware":
            servers = {"encoder": plan["encodeGpus"], "decoder": plan["decodeGpus"]}
        else:
            servers = {"worker": plan["tensorParallel"] * plan["pipelineStages"]}
        out: dict[str, tuple[int, int]] = {}
        for role, gpus in servers.items():
            nodes = gpus // gpus_per_node if gpus > gpus_per_node else 1
            out[role] = (replicas, gpus // nodes)
            if nodes > 1:
                out[f"{role}-n"] = (replicas * (nodes - 1), gpus // nodes)
        if plan["strategy"] == "WorkloadAware":
            out["router"] = (1, 0)
        return out
    if plan["strategy"] != "WorkloadAware":
        return {"worker": (replicas * plan["pipelineStages"], plan["tensorParallel"])}
    return {
        "encoder": (replicas * plan["encodeStages"], plan["encodeTensorParallel"]),
        "decoder": (replicas * plan["pipelineStages"], plan["tensorParallel"]),
    }


# -- what the operator deploys for one manifest ------------------------------------------------


@dataclass(frozen=True)
class Deployed:
    """What the operator wrote for one ExeGPTDeployment once it planned and rendered
    its workers: the deployment's status, the plan ConfigMap's data as stored
    (``plan.json`` and ``plan-hash``) and the worker StatefulSets."""

    status: JSON
    plan_json: str
    plan_hash: str
    statefulsets: list[JSON]

    def statefulset(self, role: str) -> JSON:
        for sts in self.statefulsets:
            component = sts["metadata"]["labels"]["app.kubernetes.io/component"]
            if component == role:
                return sts
        raise KeyError(role)


async def deploy(manifest: Mapping[str, Any], *, timeout: float = 120.0) -> Deployed:
    """Apply ``manifest`` to a fresh emulated cluster with the operator running, and
    wait until it has planned and written the plan ConfigMap and every worker
    StatefulSet of its plan; what it wrote."""
    body = copy.deepcopy(dict(manifest))
    body.setdefault("metadata", {})["namespace"] = NAMESPACE
    name = str(body["metadata"]["name"])
    async with running_cluster() as cluster:
        operator = exegpt_operator(cluster)
        await operator.start()
        try:
            await cluster.create(body)

            def written() -> Deployed | None:
                status = (cluster.deployment(name) or {}).get("status") or {}
                plan = status.get("plan")
                cm = cluster.stored(CORE, "configmaps", NAMESPACE, f"{name}-plan")
                sets = cluster.statefulsets()
                per_node = int((body["spec"].get("hardware") or {}).get("gpusPerNode", 8))
                if not plan or cm is None or len(sets) != len(expected_roles(plan, per_node)):
                    return None
                data = cm["data"]
                if not plan.get("hash") or data["plan-hash"] != plan["hash"]:
                    return None
                return Deployed(status, data["plan.json"], data["plan-hash"], sets)

            return await cluster.wait_for(written, timeout=timeout, what=f"{name} deployed")
        finally:
            await operator.stop()


def deployed(manifest: Mapping[str, Any], *, timeout: float = 120.0) -> Deployed:
    """:func:`deploy` for a test outside an event loop."""
    return asyncio.run(deploy(manifest, timeout=timeout))
