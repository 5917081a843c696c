"""The StatefulSet around a worker pod: one per role of a plan, whatever the engine
(``builders`` for the own engine's workers, ``vllm_workers`` for vLLM's servers)."""

from __future__ import annotations

from typing import Any

from . import names

Obj = dict[str, Any]


def worker_statefulset(
    name: str,
    namespace: str,
    owner_refs: list[Obj],
    role: str,
    pods: int,
    plan_hash: str,
    pod: Obj,
    default_container: str,
) -> Obj:
    """StatefulSet ``<name>-<role>`` of ``pods`` copies of ``pod`` behind the headless
    Service. The plan hash annotates it and its pod template (a new plan rolls the pods),
    never its selector (which is immutable)."""
    labels = dict(sorted(names.labels(name, role).items()))
    hashed = {names.ANNOTATION_PLAN_HASH: plan_hash}
    template_annotations = {**hashed, "kubectl.kubernetes.io/default-container": default_container}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": names.statefulset(name, role),
            "namespace": namespace,
            "labels": labels,
            "annotations": hashed,
            "ownerReferences": owner_refs,
        },
        "spec": {
            "replicas": pods,
            "serviceName": names.headless_service(name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": dict(sorted(names.selector(name, role).items()))},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": dict(sorted(template_annotations.items())),
                },
                "spec": pod,
            },
        },
    }
