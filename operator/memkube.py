"""An in-memory API with ``kube.Kube``'s interface: stores objects by (kind,
namespace, name), records every call, and can fail the next writes with a given status.

It runs reconcile passes with no cluster: the replanning benchmark and the reconcile
unit tests use it. It plays no controllers: nothing sets a Job's or StatefulSet's
status unless its user does."""

from __future__ import annotations

import copy
from typing import Any

from .kube import Kind, KubeError

JSON = dict[str, Any]


class MemoryKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], JSON] = {}
        self.calls: list[tuple[str, str, str]] = []  # (verb, plural, name)
        self.fail_writes: list[int] = []  # statuses to answer the next writes with
        self._version = 0

    def _key(self, kind: Kind, ns: str, name: str) -> tuple[str, str, str]:
        return (kind.plural, ns, name)

    def _maybe_fail(self) -> None:
        if self.fail_writes:
            status = self.fail_writes.pop(0)
            raise KubeError(status, "Injected", "")

    def writes(self) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] in ("create", "patch", "delete")]

    async def get(self, kind: Kind, namespace: str, name: str) -> JSON | None:
        self.calls.append(("get", kind.plural, name))
        obj = self.objects.get(self._key(kind, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    async def list(
        self, kind: Kind, namespace: str, label_selector: str | None = None
    ) -> list[JSON]:
        """The objects of ``kind`` in ``namespace``; ``label_selector`` takes equality
        terms only (``a=b,c=d``)."""
        self.calls.append(("list", kind.plural, ""))
        wanted = dict(t.split("=", 1) for t in (label_selector or "").split(",") if t)
        return [
            copy.deepcopy(o)
            for (plural, ns, _), o in sorted(self.objects.items())
            if plural == kind.plural
            and ns == namespace
            and wanted.items() <= ((o.get("metadata") or {}).get("labels") or {}).items()
        ]

    async def create(self, kind: Kind, namespace: str, body: JSON) -> JSON:
        self.calls.append(("create", kind.plural, body["metadata"]["name"]))
        self._maybe_fail()
        key = self._key(kind, namespace, body["metadata"]["name"])
        if key in self.objects:
            raise KubeError(409, "AlreadyExists", "")
        self._version += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self._version)
        obj["metadata"].setdefault("uid", f"uid-{self._version}")
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: JSON, subresource: str | None = None
    ) -> JSON:
        self.calls.append(("patch", kind.plural + (f"/{subresource}" if subresource else ""), name))
        self._maybe_fail()
        key = self._key(kind, namespace, name)
        if key not in self.objects:
            raise KubeError(404, "NotFound", "")
        self._version += 1
        obj = _merge(self.objects[key], patch)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.objects[key] = obj
        return copy.deepcopy(obj)

    async def delete(
        self, kind: Kind, namespace: str, name: str, propagation: str | None = None
    ) -> None:
        self.calls.append(("delete", kind.plural, name))
        self._maybe_fail()
        self.objects.pop(self._key(kind, namespace, name), None)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out
