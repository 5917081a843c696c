"""Rendering the chart with Helm's own engine (``helm-python-sdk``: Helm v4's Go SDK in a
wheel, no helm binary) and reading what it renders.

``render(variant)`` renders ``charts/exegpt`` with one of ``VARIANTS``' values as
``helm install exegpt charts/exegpt -n exegpt-system`` would, and returns every
manifest as a dict, with the template it came from.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "exegpt"
RELEASE = "exegpt"
NAMESPACE = "exegpt-system"

Obj = dict[str, Any]

# Values to render with: the defaults and variants that exercise every branch of the
# templates (cluster-wide and namespaced RBAC, leader election, pinned images,
# scheduling, and RBAC and service accounts left to the user).
VARIANTS: dict[str, Obj] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "pinned": {
        "image": {
            "repository": "registry.example/exegpt-operator",
            "digest": "sha256:" + "0" * 64,
            "pullPolicy": "Always",
        },
        "runtime": {"repository": "registry.example/exegpt-runtime", "tag": "0.1.0-cuda"},
        "imagePullSecrets": [{"name": "registry"}],
        "watchNamespaces": ["serving"],
        "profiler": {"allowedImages": ["registry.example/exegpt-runtime:0.1.0-cuda"]},
        "serviceAccount": {"name": "exegpt-controller", "annotations": {"owner": "ml-platform"}},
        "operator": {
            "resyncSeconds": 2.5,
            "planTimeLimitSeconds": 60,
            "metricsTimeoutSeconds": 2,
            "plannerThreads": 4,
            "apiTimeoutSeconds": 20,
            "errorRetrySeconds": 0.5,
            "errorRetryMaxSeconds": 120,
        },
        "resources": {"requests": {"cpu": 1, "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system"}],
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["system"]}
                            ]
                        },
                    }
                ]
            }
        },
        "priorityClassName": "system-cluster-critical",
        "podLabels": {"team": "ml-platform"},
        "podAnnotations": {"example.com/scrape": "false"},
    },
    "leader-election": {
        "replicaCount": 2,
        "operator": {"logFormat": "json"},
        "metrics": {"port": 9100, "podAnnotations": False, "service": True},
        "profiler": {"allowedImages": ["registry.example/exegpt-runtime:*"]},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
    },
    "leader-election-namespaced": {"replicaCount": 3, "watchNamespaces": ["team-a", "team-b"]},
    "bring-your-own-rbac": {
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing-operator"},
    },
}


@dataclass(frozen=True)
class Manifest:
    template: str  # e.g. templates/rbac.yaml
    body: Obj

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        ns = self.body["metadata"].get("namespace")
        return None if ns is None else str(ns)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name} ({self.template})"


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def chart() -> helm.Chart:
    """The loaded chart (one handle for the session)."""
    return _chart()


def values(variant: str) -> Obj:
    return copy.deepcopy(VARIANTS[variant])


def render_raw(
    overrides: Mapping[str, Any] | None = None, *, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Helm's output: template path -> rendered text (raises ``HelmValuesError`` for
    values the schema rejects, ``HelmRenderError`` for a template that fails)."""
    return chart().render(dict(overrides or {}), name=RELEASE, namespace=namespace, is_install=True)


@functools.cache
def render(variant: str) -> tuple[Manifest, ...]:
    """Every manifest the chart renders for ``VARIANTS[variant]``, in template order."""
    out: list[Manifest] = []
    for path, text in sorted(render_raw(values(variant)).items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        template = path.split("/", 1)[1]
        out += [Manifest(template, doc) for doc in yaml.safe_load_all(text) if doc]
    return tuple(out)


def notes(variant: str) -> str:
    return render_raw(values(variant)).get(f"{RELEASE}/templates/NOTES.txt", "")


def of_kind(manifests: tuple[Manifest, ...], *kinds: str) -> list[Manifest]:
    return [m for m in manifests if m.kind in kinds]


def operator_deployment(variant: str) -> Obj:
    (deployment,) = of_kind(render(variant), "Deployment")
    return deployment.body


def operator_container(variant: str) -> Obj:
    (container,) = operator_deployment(variant)["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, scalar) of a nested structure."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
    else:
        yield path, node
