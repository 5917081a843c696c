"""The parts every pod template the operator creates shares: the Pod Security Standards
``restricted`` security contexts (plus a read-only root filesystem), the volumes and
mounts, probes, downward-API environment and placement; and ``restricted_violations``,
which checks a pod spec against the same rules.

Everything here is a pure function returning plain dicts as the Kubernetes API takes
them, with maps and lists in a fixed order, so equal inputs give byte-identical output.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

from exegpt.planner.workerplan import PLAN_HASH_KEY as PLAN_HASH_KEY
from exegpt.planner.workerplan import PLAN_KEY as PLAN_KEY

from .spec import ExeGPTDeploymentSpec, HardwareSpec, WeightsSpec

Obj = dict[str, Any]

# The numeric user and group every container runs as (non-root; numeric, so the
# kubelet can verify runAsNonRoot without reading the image's /etc/passwd).
RUN_AS = 10001

# Paths inside the containers.
PLAN_DIR = "/etc/exegpt/plan"
PLAN_FILE = posixpath.join(PLAN_DIR, PLAN_KEY)
WEIGHTS_DIR = "/weights"  # the weights PVC's root, read-only
CACHE_DIR = "/tmp"  # writable: $HOME and every cache live here
SHM_DIR = "/dev/shm"

# Volume names.
VOLUME_PLAN = "plan"
VOLUME_WEIGHTS = "weights"
VOLUME_CACHE = "cache"
VOLUME_SHM = "dshm"

CACHE_SIZE = "20Gi"
SHM_SIZE = "16Gi"
HTTP = "http"  # the name of the container port, probes and Services use it
RENDEZVOUS = "rendezvous"  # HTTP + workerplan.RENDEZVOUS_PORT_OFFSET: where a replica meets

# -- security contexts ---------------------------------------------------------------------


def restricted_pod_security() -> Obj:
    """Pod ``securityContext`` of the ``restricted`` profile, with a numeric non-root
    user, group and fsGroup (``OnRootMismatch``: large weight volumes are not walked on
    every start)."""
    return {
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "runAsGroup": RUN_AS,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> Obj:
    """Container ``securityContext`` of the ``restricted`` profile plus a read-only root
    filesystem (writable paths are emptyDir volumes)."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


# -- volumes -------------------------------------------------------------------------------


def weights_directory(weights: WeightsSpec) -> str:
    """Where the weights directory ``weights.path`` of the PVC appears in a container."""
    return posixpath.normpath(posixpath.join(WEIGHTS_DIR, weights.path.lstrip("/")))


def scratch_volumes(weights: WeightsSpec | None) -> tuple[list[Obj], list[Obj]]:
    """Volumes and mounts every pod has: a memory-backed ``/dev/shm`` (NCCL and
    dataloaders), a writable ``/tmp`` (``$HOME`` and caches) and, when ``weights`` is
    given, its PVC read-only at ``WEIGHTS_DIR``. Sorted by name."""
    volumes: list[Obj] = [
        {"name": VOLUME_CACHE, "emptyDir": {"sizeLimit": CACHE_SIZE}},
        {"name": VOLUME_SHM, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    mounts: list[Obj] = [
        {"name": VOLUME_CACHE, "mountPath": CACHE_DIR},
        {"name": VOLUME_SHM, "mountPath": SHM_DIR},
    ]
    if weights is not None:
        volumes.append(
            {
                "name": VOLUME_WEIGHTS,
                "persistentVolumeClaim": {"claimName": weights.pvc, "readOnly": True},
            }
        )
        mounts.append({"name": VOLUME_WEIGHTS, "mountPath": WEIGHTS_DIR, "readOnly": True})
    return _by_name(volumes), _by_name(mounts)


def plan_volume(configmap: str) -> tuple[Obj, Obj]:
    """The plan ConfigMap as a read-only volume at ``PLAN_DIR``, and its mount."""
    volume = {"name": VOLUME_PLAN, "configMap": {"name": configmap, "defaultMode": 0o444}}
    mount = {"name": VOLUME_PLAN, "mountPath": PLAN_DIR, "readOnly": True}
    return volume, mount


def _by_name(items: list[Obj]) -> list[Obj]:
    return sorted(items, key=lambda item: str(item["name"]))


# -- environment, probes, placement --------------------------------------------------------


def base_env(extra: Mapping[str, str] | None = None) -> list[Obj]:
    """``POD_NAME`` and ``POD_NAMESPACE`` from the downward API, ``HOME`` on the writable
    cache volume, plus ``extra``; sorted by name."""
    env: list[Obj] = [
        {"name": "HOME", "value": CACHE_DIR},
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
    ]
    env += [{"name": k, "value": v} for k, v in (extra or {}).items()]
    return _by_name(env)


def _field_env(name: str, field_path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def http_probes() -> Obj:
    """Readiness (``/readyz``), liveness (``/healthz``) and a startup probe that allows
    30 minutes for loading a model before liveness applies; all on the ``http`` port."""

    def get(path: str, period: int, failures: int) -> Obj:
        return {
            "failureThreshold": failures,
            "httpGet": {"path": path, "port": HTTP},
            "periodSeconds": period,
            "timeoutSeconds": 5,
        }

    return {
        "livenessProbe": get("/healthz", 10, 3),
        "readinessProbe": get("/readyz", 5, 3),
        "startupProbe": get("/healthz", 10, 180),
    }


def placement(hardware: HardwareSpec) -> Obj:
    """``nodeSelector`` (keys sorted) and ``tolerations`` (as given) from the spec;
    empty ones are left out."""
    out: Obj = {}
    if hardware.node_selector:
        out["nodeSelector"] = dict(sorted(hardware.node_selector.items()))
    if hardware.tolerations:
        out["tolerations"] = [t.to_k8s() for t in hardware.tolerations]
    return out


def gpu_resources(gpus: int, cpu_per_gpu: int = 2, memory_gib_per_gpu: int = 8) -> Obj:
    """``gpus`` NVIDIA GPUs (requests equal limits, as extended resources require) and
    modest CPU and memory requests that scale with them."""
    return {
        "limits": {"nvidia.com/gpu": str(gpus)},
        "requests": {
            "cpu": str(cpu_per_gpu * gpus),
            "memory": f"{memory_gib_per_gpu * gpus}Gi",
            "nvidia.com/gpu": str(gpus),
        },
    }


# -- the checker ---------------------------------------------------------------------------

_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_syncookies",
    }
)
_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
_SECCOMP_OK = frozenset({"RuntimeDefault", "Localhost"})


def pod_spec_of(manifest: Mapping[str, Any]) -> Obj | None:
    """The pod spec inside a Pod, a workload (Job, StatefulSet, Deployment, DaemonSet,
    ReplicaSet) or a CronJob; ``None`` for anything else."""
    spec = manifest.get("spec") or {}
    kind = manifest.get("kind")
    if kind == "Pod":
        return dict(spec)
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if isinstance(template, Mapping) and isinstance(template.get("spec"), Mapping):
        return dict(template["spec"])
    return None


def restricted_violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every way ``pod_spec`` falls short of the Pod Security Standards ``restricted``
    profile (which includes ``baseline``), plus this project's rule that every container
    has a read-only root filesystem; one ``path: problem`` line each, empty when it
    complies."""
    out: list[str] = []
    pod_sc: Mapping[str, Any] = pod_spec.get("securityContext") or {}
    containers = list(_containers(pod_spec))
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            out.append(f"{field}: host namespaces are not allowed")
    out += _security_context_violations("securityContext", pod_sc)
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    for i, volume in enumerate(pod_spec.get("volumes") or []):
        kinds = sorted(set(volume) - {"name"})
        bad = [k for k in kinds if k not in RESTRICTED_VOLUME_TYPES]
        if bad:
            out.append(
                f"volumes[{i}] ({volume.get('name')}): volume type {', '.join(bad)} is not "
                "allowed (use configMap, emptyDir, persistentVolumeClaim, secret, ...)"
            )
    non_root_pod = pod_sc.get("runAsNonRoot") is True
    seccomp_pod = (pod_sc.get("seccompProfile") or {}).get("type") in _SECCOMP_OK
    if not containers:
        out.append("containers: a pod needs at least one container")
    for path, container in containers:
        sc: Mapping[str, Any] = container.get("securityContext") or {}
        out += _security_context_violations(f"{path}.securityContext", sc)
        out += _container_violations(path, container, sc, non_root_pod, seccomp_pod)
    return out


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key in _CONTAINER_LISTS:
        for i, container in enumerate(pod_spec.get(key) or []):
            yield f"{key}[{i}] ({container.get('name')})", container


def _security_context_violations(path: str, sc: Mapping[str, Any]) -> list[str]:
    """The rules that apply alike to a pod's and a container's security context."""
    out: list[str] = []
    if sc.get("runAsUser") == 0:
        out.append(f"{path}.runAsUser: 0 (root) is not allowed")
    if sc.get("runAsNonRoot") is False:
        out.append(f"{path}.runAsNonRoot: must not be false")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append(f"{path}.seccompProfile.type: Unconfined is not allowed")
    if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append(f"{path}.appArmorProfile.type: Unconfined is not allowed")
    if (sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append(f"{path}.windowsOptions.hostProcess: host processes are not allowed")
    selinux: Mapping[str, Any] = sc.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in _SELINUX_TYPES:
        out.append(f"{path}.seLinuxOptions.type: {selinux.get('type')} is not allowed")
    for field in ("user", "role"):
        if selinux.get(field):
            out.append(f"{path}.seLinuxOptions.{field}: must not be set")
    return out


def _container_violations(
    path: str,
    container: Mapping[str, Any],
    sc: Mapping[str, Any],
    non_root_pod: bool,
    seccomp_pod: bool,
) -> list[str]:
    """The rules that apply to one container only."""
    out: list[str] = []
    if sc.get("privileged"):
        out.append(f"{path}.securityContext.privileged: privileged containers are not allowed")
    if sc.get("allowPrivilegeEscalation") is not False:
        out.append(f"{path}.securityContext.allowPrivilegeEscalation: must be false")
    if not non_root_pod and sc.get("runAsNonRoot") is not True:
        out.append(f"{path}.securityContext.runAsNonRoot: must be true (here or on the pod)")
    seccomp = (sc.get("seccompProfile") or {}).get("type")
    if not seccomp_pod and seccomp not in _SECCOMP_OK:
        out.append(
            f"{path}.securityContext.seccompProfile.type: must be RuntimeDefault or "
            "Localhost (here or on the pod)"
        )
    caps: Mapping[str, Any] = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        out.append(f"{path}.securityContext.capabilities.drop: must include ALL")
    added = [c for c in caps.get("add") or [] if c != "NET_BIND_SERVICE"]
    if added:
        out.append(f"{path}.securityContext.capabilities.add: {', '.join(added)} not allowed")
    if sc.get("procMount", "Default") != "Default":
        out.append(f"{path}.securityContext.procMount: must be Default")
    if sc.get("readOnlyRootFilesystem") is not True:
        out.append(f"{path}.securityContext.readOnlyRootFilesystem: must be true")
    for port in container.get("ports") or []:
        if port.get("hostPort"):
            out.append(f"{path}.ports: hostPort {port['hostPort']} is not allowed")
    return out


API_TOKEN_ENV = "EXEGPT_API_TOKEN"
"""The workers' variable holding the bearer token /v1/* requires (runner/auth.py)."""


def api_token_env(spec: ExeGPTDeploymentSpec, variable: str = API_TOKEN_ENV) -> list[Obj]:
    """The container ``env`` entries that hand the workers ``spec.runner.apiKeySecret``
    in ``variable`` (``VLLM_API_KEY`` for a vLLM server; none without a Secret). A
    missing Secret keeps the pods from starting (CreateContainerConfigError) rather than
    serving without the token."""
    ref = spec.runner.api_key_secret
    if ref is None:
        return []
    return [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key, "optional": False}},
        }
    ]
