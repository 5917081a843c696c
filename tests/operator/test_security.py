"""Least exposure on the emulated API: each deployment's NetworkPolicy (the rendezvous
port only from its own worker pods, the API from what ``spec.runner.allowFrom`` allows
and the operator), the API token handed to the workers from a Secret, and profiler
images restricted to an allow-list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from builders import deployment
from harness import NAMESPACE, Cluster, Operator, condition, is_condition, measured_profile

from exegpt.operator import names
from exegpt.operator.podspec import restricted_violations

pytestmark = pytest.mark.asyncio

OPERATOR_LABELS = ("app.kubernetes.io/name=exegpt", "app.kubernetes.io/component=operator")


def policy(cluster: Cluster, name: str = "x") -> dict[str, Any] | None:
    return cluster.stored("networking.k8s.io/v1", "networkpolicies", NAMESPACE, f"{name}-workers")


async def test_workers_get_a_network_policy_that_follows_allow_from(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    await start_operator(operator_namespace="exegpt-system", operator_pod_selector=OPERATOR_LABELS)
    gateway = {"podLabels": {"app": "gateway"}, "namespaceLabels": {"team": "edge"}}
    body = deployment("x", strategy="RoundRobin", **{"runner.allowFrom": [gateway]})
    await cluster.create(body)
    await cluster.wait_for(lambda: policy(cluster) is not None)
    p = policy(cluster)
    assert p is not None
    own = {"matchLabels": {names.LABEL_DEPLOYMENT: "x"}}
    assert p["spec"]["podSelector"] == own
    assert p["spec"]["policyTypes"] == ["Ingress"]
    assert p["metadata"]["ownerReferences"][0]["name"] == "x"
    rendezvous, api = p["spec"]["ingress"]
    # Every port (the rendezvous port 8001 among them) only from the deployment's pods.
    assert rendezvous == {"from": [{"podSelector": own}]}
    # The API port from the gateway and the operator only.
    assert api["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert api["from"] == [
        {
            "podSelector": {"matchLabels": {"app": "gateway"}},
            "namespaceSelector": {"matchLabels": {"team": "edge"}},
        },
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "operator",
                    "app.kubernetes.io/name": "exegpt",
                }
            },
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "exegpt-system"}},
        },
    ]
    # The worker pods carry the label the policy selects.
    await cluster.wait_for(lambda: cluster.statefulsets())
    for sts in cluster.statefulsets():
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert labels[names.LABEL_DEPLOYMENT] == "x"

    # allowFrom: [] leaves only the operator; the policy is patched in place.
    await cluster.patch_deployment("x", {"spec": {"runner": {"allowFrom": []}}})
    await cluster.wait_for(lambda: len((policy(cluster) or {})["spec"]["ingress"][1]["from"]) == 1)


async def test_without_any_peer_the_api_rule_is_left_out(
    cluster: Cluster, operator: Operator
) -> None:
    """An ingress rule with no ``from`` admits every source: with no peer at all (no
    allowFrom peers, no operator selector) there must be no API rule."""
    await cluster.create(deployment("x", strategy="RoundRobin", **{"runner.allowFrom": []}))
    await cluster.wait_for(lambda: policy(cluster) is not None)
    p = policy(cluster)
    assert p is not None
    assert len(p["spec"]["ingress"]) == 1
    assert all(rule.get("from") for rule in p["spec"]["ingress"])


async def test_absent_allow_from_admits_the_namespace(cluster: Cluster, operator: Operator) -> None:
    await cluster.create(deployment("x", strategy="RoundRobin"))
    await cluster.wait_for(lambda: policy(cluster) is not None)
    p = policy(cluster)
    assert p is not None
    assert p["spec"]["ingress"][1]["from"] == [{"podSelector": {"matchLabels": {}}}]


async def test_the_api_token_comes_from_the_named_secret(
    cluster: Cluster, operator: Operator
) -> None:
    secret = {"name": "x-api", "key": "bearer"}
    await cluster.create(deployment("x", strategy="RoundRobin", **{"runner.apiKeySecret": secret}))
    await cluster.wait_for(lambda: cluster.statefulsets())
    for sts in cluster.statefulsets():
        pod = sts["spec"]["template"]["spec"]
        assert restricted_violations(pod) == []
        (container,) = pod["containers"]
        (token,) = [e for e in container["env"] if e["name"] == "EXEGPT_API_TOKEN"]
        assert token["valueFrom"]["secretKeyRef"] == {**secret, "optional": False}
        assert "value" not in token  # never the token itself in the manifest


async def test_a_profiler_image_outside_the_allow_list_gets_no_job(
    cluster: Cluster, start_operator: Callable[..., Awaitable[Operator]]
) -> None:
    await start_operator(allowed_profiler_images=("registry.test/*",))
    body = deployment(
        "x", **{"profiling.mode": "Measured", "profiling.image": "evil.example/miner:1"}
    )
    await cluster.create(body)
    await cluster.wait_for(
        lambda: (
            (condition(cluster.deployment("x"), "Profiled") or {}).get("reason")
            == "ImageNotAllowed"
        )
    )
    x = cluster.deployment("x")
    profiled = condition(x, "Profiled")
    assert profiled is not None
    assert "evil.example/miner:1" in profiled["message"]
    assert "spec.profiling.image" in profiled["message"]
    assert is_condition(x, "Degraded")
    assert cluster.jobs() == []

    # An allowed image: the Job starts.
    await cluster.patch_deployment(
        "x", {"spec": {"profiling": {"image": "registry.test/exegpt-runtime:2"}}}
    )
    await cluster.wait_for(lambda: cluster.jobs())
    (job,) = cluster.jobs()
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.test/exegpt-runtime:2"


async def test_a_profiling_job_may_write_only_its_own_configmap(
    cluster: Cluster, operator: Operator
) -> None:
    body = deployment("x", **{"profiling.mode": "Measured"})
    await cluster.create(body)
    [job] = await cluster.wait_for(cluster.jobs)
    job_name = job["metadata"]["name"]
    key, _ = measured_profile(body["spec"])
    cm_name = names.profile_configmap(key)
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == job_name  # an account of its own

    rbac = "rbac.authorization.k8s.io/v1"
    await cluster.wait_for(lambda: cluster.stored(rbac, "rolebindings", NAMESPACE, job_name))
    role = cluster.stored(rbac, "roles", NAMESPACE, job_name)
    binding = cluster.stored(rbac, "rolebindings", NAMESPACE, job_name)
    account = cluster.stored("v1", "serviceaccounts", NAMESPACE, job_name)
    assert role is not None and binding is not None and account is not None
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [cm_name],
            "verbs": ["get", "update", "patch"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": job_name,
    }  # fmt: skip
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": job_name, "namespace": NAMESPACE}
    ]
    for obj in (role, binding, account):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Job", job_name, job["metadata"]["uid"],
        )  # fmt: skip
    # The ConfigMap the Job may update exists before it runs (RBAC cannot limit create
    # to a name), empty until the profile is written.
    cm = cluster.stored("v1", "configmaps", NAMESPACE, cm_name)
    assert cm is not None and not (cm.get("data") or {})
