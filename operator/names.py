"""Deterministic names, labels and annotations of everything the operator creates.

Every child's name derives from the deployment's name or the profile's content key,
so a reconcile repeated after a crash finds what an earlier one created instead of
creating it again.
"""

from __future__ import annotations

from exegpt.planner.profilekeys import (
    ANNOTATION_PROFILE_KEY as ANNOTATION_PROFILE_KEY,
)
from exegpt.planner.profilekeys import APP as APP
from exegpt.planner.profilekeys import GROUP as GROUP
from exegpt.planner.profilekeys import LABEL_COMPONENT as LABEL_COMPONENT
from exegpt.planner.profilekeys import LABEL_MANAGED_BY as LABEL_MANAGED_BY
from exegpt.planner.profilekeys import LABEL_NAME as LABEL_NAME
from exegpt.planner.profilekeys import LABEL_PROFILE as LABEL_PROFILE
from exegpt.planner.profilekeys import MANAGER as MANAGER
from exegpt.planner.profilekeys import PROFILER as PROFILER
from exegpt.planner.profilekeys import profile_digest as profile_digest
from exegpt.planner.profilekeys import profile_labels as profile_labels

# Labels (values <= 63 characters); the profile's are shared with the profiling Job.
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_DEPLOYMENT = f"{GROUP}/deployment"
LABEL_ATTEMPT = f"{GROUP}/attempt"

# Annotations.
ANNOTATION_PLAN_HASH = f"{GROUP}/plan-hash"
# On a profile ConfigMap once profiling gave up: the failure, attempts and last Job.
ANNOTATION_PROFILING_FAILED = f"{GROUP}/profiling-failed"
ANNOTATION_PROFILING_ATTEMPTS = f"{GROUP}/profiling-attempts"
ANNOTATION_PROFILING_LAST_JOB = f"{GROUP}/profiling-last-job"

# Components.
WORKER = "worker"  # RoundRobin: one StatefulSet, a pod per pipeline stage
ENCODER = "encoder"  # WorkloadAware
DECODER = "decoder"  # WorkloadAware
PLAN = "plan"
PEERS = "peers"  # the headless Service the pods find each other by
API = "api"  # the Service clients send requests to
ROUTER = "router"  # WorkloadAware on vLLM: vllm-router in front of prefill and decode
NODES_SUFFIX = "-n"  # vLLM servers spanning nodes: the pods of node ranks 1.. (nodes_of)

# Kubernetes names the operator derives from a deployment's name must stay valid:
# StatefulSet pods add "-<ordinal>" and a controller-revision-hash label of the
# StatefulSet's name plus 11 characters must fit in 63.
MAX_DEPLOYMENT_NAME = 40


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


def nodes_of(component: str) -> str:
    """The component whose pods run node ranks 1 .. nnodes-1 of ``component``'s vLLM
    servers when they span nodes (``worker-n``, ``encoder-n``, ``decoder-n``: short
    enough for the name limit above); ``component``'s own pods are node rank 0."""
    return f"{component}{NODES_SUFFIX}"


def headless_service(deployment: str) -> str:
    """The headless Service pipeline stages and encoder/decoder pods find each other by."""
    return f"{deployment}-stages"


def network_policy(deployment: str) -> str:
    """The NetworkPolicy that admits traffic to the deployment's worker pods."""
    return f"{deployment}-workers"


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


def owned_selector(deployment: str) -> str:
    """A label selector for every child the operator labels for ``deployment``."""
    return f"{LABEL_DEPLOYMENT}={deployment},{LABEL_MANAGED_BY}={MANAGER}"


def selector(deployment: str, component: str) -> dict[str, str]:
    """The immutable selector of a StatefulSet or Service (a subset of ``labels``)."""
    return {LABEL_INSTANCE: deployment, LABEL_COMPONENT: component}
