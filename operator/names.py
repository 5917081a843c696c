"""Deterministic names, labels and annotations of everything the operator creates.

Every child's name derives from the deployment's name or the profile's content key,
so a reconcile repeated after a crash finds what an earlier one created instead of
creating it again.
"""

from __future__ import annotations

import hashlib
import re

from .spec import GROUP as GROUP

# Labels (values <= 63 characters).
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_PROFILE = f"{GROUP}/profile"  # the profile key's digest
LABEL_ATTEMPT = f"{GROUP}/attempt"

APP = "exegpt"
MANAGER = "exegpt-operator"

# Annotations.
ANNOTATION_PLAN_HASH = f"{GROUP}/plan-hash"
ANNOTATION_PROFILE_KEY = f"{GROUP}/profile-key"

# Components.
WORKER = "worker"  # RoundRobin: one StatefulSet, a pod per pipeline stage
ENCODER = "encoder"  # WorkloadAware
DECODER = "decoder"  # WorkloadAware
PROFILER = "profiler"
PLAN = "plan"
PEERS = "peers"  # the headless Service the pods find each other by
API = "api"  # the Service clients send requests to
ROUTER = "router"  # WorkloadAware on vLLM: vllm-router in front of prefill and decode

# Kubernetes names the operator derives from a deployment's name must stay valid:
# StatefulSet pods add "-<ordinal>" and a controller-revision-hash label of the
# StatefulSet's name plus 11 characters must fit in 63.
MAX_DEPLOYMENT_NAME = 40


def _digest(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def profile_digest(profile_key: str) -> str:
    """The last 12 hex digits of a profile key (its content hash)."""
    tail = profile_key.rsplit("-", 1)[-1]
    return tail if re.fullmatch(r"[0-9a-f]{12}", tail) else _digest(profile_key)


def profile_configmap(profile_key: str) -> str:
    """The ConfigMap that caches a profile; shared by every deployment in the
    namespace with the same model, GPU type, dtype and profiler version."""
    return f"exegpt-profile-{profile_key}"[:253].rstrip("-")


def profile_job(profile_key: str, attempt: int) -> str:
    """The profiling Job of ``attempt`` (1, 2, ...) for a profile key."""
    return f"exegpt-profile-{profile_digest(profile_key)}-{attempt}"


def plan_configmap(deployment: str) -> str:
    return f"{deployment}-plan"


def statefulset(deployment: str, component: str) -> str:
    return f"{deployment}-{component}"


def headless_service(deployment: str) -> str:
    """The headless Service pipeline stages and encoder/decoder pods find each other by."""
    return f"{deployment}-stages"


def client_service(deployment: str) -> str:
    """The Service clients send requests to; its URL is ``status.endpoint``."""
    return deployment


def endpoint(deployment: str, namespace: str, port: int) -> str:
    return f"http://{client_service(deployment)}.{namespace}.svc:{port}"


def labels(deployment: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP,
        LABEL_INSTANCE: deployment,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_DEPLOYMENT: deployment,
    }


def selector(deployment: str, component: str) -> dict[str, str]:
    """The immutable selector of a StatefulSet or Service (a subset of ``labels``)."""
    return {LABEL_INSTANCE: deployment, LABEL_COMPONENT: component}


def profile_labels(profile_key: str) -> dict[str, str]:
    return {
        LABEL_NAME: APP,
        LABEL_COMPONENT: PROFILER,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_PROFILE: profile_digest(profile_key),
    }
