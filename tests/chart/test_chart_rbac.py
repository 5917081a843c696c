"""The chart's RBAC grants the operator exactly what it uses, and nothing to anyone else
(profiling Jobs get a Role per Job from the operator): evaluated from the rendered Roles,
ClusterRoles and bindings (as the API server would), and checked against
``tests/operator/api_usage.json``, the (apiGroup, resource, verb) triples the operator's
tests record."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helmchart import CHART, NAMESPACE, VARIANTS, Manifest, env_of, operator_container, render

from exegpt.operator.settings import OperatorSettings

API_USAGE = Path(__file__).resolve().parents[1] / "operator" / "api_usage.json"

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)

# Calls the chart grants that no operator test makes, with the reason.
UNRECORDED: dict[Triple, str] = {
    ("exegpt.dev", "exegptdeployments/finalizers", "update"): "no request uses it: the "
    "OwnerReferencesPermissionEnforcement admission plugin (OpenShift's default) requires "
    "it of whoever sets blockOwnerDeletion: true in an ownerReference to a deployment",
    ("", "configmaps", "update"): "no request uses it: each profiling Job's Role grants "
    "update on its ConfigMap, and RBAC lets the operator grant only what it holds",
    **{
        ("kopf.dev", "clusterkopfpeerings", verb): "leader election cluster-wide; the "
        "operator's tests run it namespaced, where kopf uses kopfpeerings instead"
        for verb in ("list", "watch", "patch")
    },
}

# Cluster-scoped resources: only a ClusterRoleBinding grants access to them.
CLUSTER_SCOPED = {
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("kopf.dev", "clusterkopfpeerings"),
}
# kopf lists and watches namespaces only to follow a list of namespaces to watch
# (kopf/_core/reactor/observation.py): cluster-wide it needs none.
NAMESPACE_DISCOVERY = {("", "namespaces", "list"), ("", "namespaces", "watch")}
# Leader election (replicaCount > 1): kopf's peering kind in the operator's scope.
PEERING_VERBS = ("list", "watch", "patch")
PEERING = {
    ("kopf.dev", r, v) for r in ("kopfpeerings", "clusterkopfpeerings") for v in PEERING_VERBS
}


def peering_triples(settings: OperatorSettings) -> set[Triple]:
    if not settings.peering:
        return set()
    resource = "clusterkopfpeerings" if settings.cluster_wide else "kopfpeerings"
    return {("kopf.dev", resource, verb) for verb in PEERING_VERBS}


@dataclass(frozen=True, order=True)
class Grant:
    scope: str  # a namespace, or "*" for every namespace and the cluster-scoped objects
    group: str
    resource: str
    verb: str

    @property
    def triple(self) -> Triple:
        return (self.group, self.resource, self.verb)


def recorded_usage() -> set[Triple]:
    if not API_USAGE.is_file():
        pytest.skip(f"{API_USAGE} is absent: the operator's tests have not recorded its API use")
    calls = json.loads(API_USAGE.read_text())["calls"]
    return {(c["apiGroup"], c["resource"], c["verb"]) for c in calls}


def grants(manifests: Iterable[Manifest], namespace: str, service_account: str) -> set[Grant]:
    """What the bindings among ``manifests`` grant the service account, as RBAC
    evaluates it: a ClusterRoleBinding grants its ClusterRole everywhere, a RoleBinding
    grants its Role or ClusterRole in the binding's namespace only."""
    manifests = list(manifests)
    rules = {(m.kind, m.namespace, m.name): m.body.get("rules") or [] for m in manifests}
    out: set[Grant] = set()
    for m in manifests:
        if m.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = m.body.get("subjects") or []
        me = {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
        if me not in subjects:
            continue
        ref = m.body["roleRef"]
        key = (ref["kind"], None if ref["kind"] == "ClusterRole" else m.namespace, ref["name"])
        assert key in rules, f"{m} refers to {ref['kind']} {ref['name']}, which is not rendered"
        scope = "*" if m.kind == "ClusterRoleBinding" else str(m.namespace)
        for rule in rules[key]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add(Grant(scope, group, resource, verb))
    return out


def settings_of(variant: str) -> OperatorSettings:
    env = env_of(operator_container(variant))
    return OperatorSettings.from_env({k: v for k, v in env.items() if k.startswith("EXEGPT_")})


def operator_account(variant: str) -> tuple[str, str]:
    pod = next(m for m in render(variant) if m.kind == "Deployment").body["spec"]["template"]
    return NAMESPACE, pod["spec"]["serviceAccountName"]


RBAC_VARIANTS = sorted(v for v in VARIANTS if v != "bring-your-own-rbac")


# -- no wildcards, every rule explained ----------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_wildcards(variant: str) -> None:
    for m in render(variant):
        for i, rule in enumerate(m.body.get("rules") or []):
            assert "nonResourceURLs" not in rule, m
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(field) or []), (m, i, field)


def test_every_rule_says_why_it_exists() -> None:
    for template in sorted((CHART / "templates").glob("*")):
        lines = template.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.match(r"\s*- apiGroups:", line):
                assert lines[i - 1].lstrip().startswith("#"), f"{template.name}:{i + 1}: {line}"


# -- the operator --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", RBAC_VARIANTS)
def test_operator_may_make_every_recorded_call(variant: str) -> None:
    used = recorded_usage()
    settings = settings_of(variant)
    granted = grants(render(variant), *operator_account(variant))
    scopes = ["*"] if settings.cluster_wide else list(settings.namespaces)
    missing: list[str] = []
    for triple in sorted(used | peering_triples(settings)):
        if settings.cluster_wide and triple in NAMESPACE_DISCOVERY:
            continue
        if triple in PEERING and triple not in peering_triples(settings):
            continue  # one replica: no leader election
        cluster_scoped = triple[:2] in CLUSTER_SCOPED
        for scope in ["*"] if cluster_scoped else scopes:
            if Grant(scope, *triple) not in granted:
                missing.append(f"{triple} in {scope}")
    assert not missing, f"the operator's RBAC lacks: {missing}"


@pytest.mark.parametrize("variant", RBAC_VARIANTS)
def test_operator_is_granted_only_what_it_uses(variant: str) -> None:
    allowed = recorded_usage() | set(UNRECORDED)
    settings = settings_of(variant)
    granted = grants(render(variant), *operator_account(variant))
    assert granted
    extra = sorted(g for g in granted if g.triple not in allowed)
    assert not extra, f"granted but never used: {extra}"
    peering = {g.triple for g in granted if g.triple in PEERING}
    assert peering == peering_triples(settings)
    if settings.cluster_wide:
        assert not [g for g in granted if g.triple in NAMESPACE_DISCOVERY]
        assert {g.scope for g in granted} == {"*"}
    else:
        # Namespaced resources only in the watched namespaces.
        wide = [g for g in granted if g.scope == "*" and g.triple[:2] not in CLUSTER_SCOPED]
        assert not wide, f"granted in every namespace: {wide}"
        assert {g.scope for g in granted} == {"*", *settings.namespaces}


# -- the profiler --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_only_the_operator_is_granted_anything(variant: str) -> None:
    """Profiling Jobs get their access from the operator, per Job and per ConfigMap
    (builders.build_profiler_access); the chart binds nothing to any other account."""
    for m in render(variant):
        if m.kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        for subject in m.body.get("subjects") or []:
            assert (subject["kind"], subject["namespace"]) == ("ServiceAccount", NAMESPACE), m
            assert subject["name"] == operator_account(variant)[1], m


def test_the_operator_may_grant_what_a_profiling_job_needs() -> None:
    """A Role may only grant what its creator holds: the operator holds every verb the
    Jobs' Roles grant, on ConfigMaps, wherever it creates Jobs."""
    from exegpt.operator import builders

    (_, role, _) = builders.build_profiler_access("ns", "k-0123456789ab", "job-1", "uid-1")
    for variant in RBAC_VARIANTS:
        settings = settings_of(variant)
        granted = grants(render(variant), *operator_account(variant))
        scopes = ["*"] if settings.cluster_wide else list(settings.namespaces)
        for rule in role["rules"]:
            for verb in rule["verbs"]:
                for scope in scopes:
                    assert Grant(scope, "", "configmaps", verb) in granted, (variant, verb)


def test_bring_your_own_rbac_renders_no_rbac() -> None:
    kinds = {m.kind for m in render("bring-your-own-rbac")}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    assert "ServiceAccount" not in kinds
