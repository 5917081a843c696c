"""Write a measured profile into its ConfigMap, from inside the cluster.

The profiling Job runs under a service account of its own, which the operator allows
to get, update and patch its one ConfigMap ``exegpt-profile-<key>`` (created empty by the
operator before the Job), the operator's profile cache: data key ``profile.json`` holds
the profile's JSON. It is created when missing and allowed (run by hand), or replaced.
"""

from __future__ import annotations

from typing import Any, Protocol

from exegpt.planner.profilekeys import (
    ANNOTATION_PROFILE_KEY,
    PROFILE_DATA_KEY,
    profile_labels,
)

from .errors import RunnerError

# A ConfigMap holds at most 1 MiB, metadata included.
MAX_DATA_BYTES = 1_000_000


class ConfigMapError(RunnerError):
    """The profile could not be written to its ConfigMap."""


class ConfigMapApi(Protocol):
    """The calls of ``kubernetes.client.CoreV1Api`` the writer makes."""

    def create_namespaced_config_map(self, namespace: str, body: Any) -> Any: ...

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any: ...

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> Any: ...


def configmap_body(
    name: str, namespace: str, profile_json: str, profile_key: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": profile_labels(profile_key),
            "annotations": {ANNOTATION_PROFILE_KEY: profile_key},
        },
        "data": {PROFILE_DATA_KEY: profile_json},
    }


def in_cluster_api() -> ConfigMapApi:
    """A ``CoreV1Api`` with the pod's service account (or, outside a cluster, the
    current kubeconfig context)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError) as exc:
            raise ConfigMapError(
                "no in-cluster service account and no usable kubeconfig: cannot reach the "
                f"Kubernetes API ({exc})"
            ) from None
    api: ConfigMapApi = client.CoreV1Api()
    return api


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _explain(exc: Exception, action: str, namespace: str, name: str) -> ConfigMapError:
    status = _status(exc)
    reason = getattr(exc, "reason", None) or str(exc)
    if status == 403:
        return ConfigMapError(
            f"forbidden to {action} ConfigMap {namespace}/{name}: the Job's service account "
            f"needs get and update on configmaps/{name} in namespace {namespace} (the "
            "operator creates the ConfigMap and a Role granting them for each Job; run by "
            "hand, create as well)"
        )
    if status == 404 and action == "create":
        return ConfigMapError(f"namespace {namespace} does not exist")
    return ConfigMapError(f"cannot {action} ConfigMap {namespace}/{name}: {status or ''} {reason}")


def _resource_version(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else getattr(obj, "metadata", None)
    if meta is None:
        return None
    if isinstance(meta, dict):
        value = meta.get("resourceVersion")
    else:
        value = getattr(meta, "resource_version", None)
    return str(value) if value else None


def check_access(name: str, namespace: str, *, api: ConfigMapApi | None = None) -> ConfigMapApi:
    """Fail early, before profiling, when the ConfigMap cannot be read (a missing one is
    fine: it is created at the end). Returns the API to write with."""
    api = api or in_cluster_api()
    try:
        api.read_namespaced_config_map(name, namespace)
    except Exception as exc:
        if _status(exc) != 404:
            raise _explain(exc, "read", namespace, name) from None
    return api


def write_profile(
    profile_json: str,
    name: str,
    namespace: str,
    profile_key: str,
    *,
    api: ConfigMapApi | None = None,
) -> str:
    """Create ConfigMap ``namespace/name`` holding the profile, or replace it when it
    exists. Returns ``"created"`` or ``"replaced"``."""
    size = len(profile_json.encode())
    if size > MAX_DATA_BYTES:
        raise ConfigMapError(
            f"the profile is {size} bytes, more than a ConfigMap holds ({MAX_DATA_BYTES}); "
            "profile with fewer TP degrees or a coarser grid"
        )
    body = configmap_body(name, namespace, profile_json, profile_key)
    api = api or in_cluster_api()
    refused: Exception | None = None
    try:
        api.create_namespaced_config_map(namespace, body)
        return "created"
    except Exception as exc:  # kubernetes.client.ApiException, or a transport error
        # 409: it exists; 403: this account may only update it (the operator made it).
        if _status(exc) not in (403, 409):
            raise _explain(exc, "create", namespace, name) from None
        refused = exc if _status(exc) == 403 else None
    try:
        existing = api.read_namespaced_config_map(name, namespace)
        version = _resource_version(existing)
        if version:
            body["metadata"]["resourceVersion"] = version
        api.replace_namespaced_config_map(name, namespace, body)
    except Exception as exc:
        if refused is not None and _status(exc) == 404:
            raise _explain(refused, "create", namespace, name) from None
        raise _explain(exc, "update", namespace, name) from None
    return "replaced"
