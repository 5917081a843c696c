"""The chart renders, lints clean, validates against the official Kubernetes schemas,
meets the Pod Security Standards ``restricted`` profile, and runs the operator with the
settings its values describe."""

from __future__ import annotations

import tomllib
from typing import Any
from urllib.parse import urlparse

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from helmchart import (
    CHART,
    NAMESPACE,
    RELEASE,
    ROOT,
    VARIANTS,
    Manifest,
    env_of,
    notes,
    of_kind,
    operator_container,
    operator_deployment,
    render,
    values,
)

from exegpt.operator.podspec import pod_spec_of, restricted_violations
from exegpt.operator.settings import OperatorSettings

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest
# kubernetes-validate ships schemas for.
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering",
}  # fmt: skip
PEERING_GROUP = "kopf.dev"  # leader election's kinds: no official schema, checked below


# -- lint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_is_clean(variant: str) -> None:
    report = helm.lint(CHART, values(variant), strict=True, namespace=NAMESPACE)
    # Severity 1 is informational (an icon is recommended); 2 warnings, 3 errors.
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not findings, report


def test_lint_on_the_oldest_supported_kubernetes() -> None:
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["kubeVersion"] == f">={KUBE_VERSIONS[0]}.0-0"
    ok = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSIONS[0]}.0")
    assert not ok["errors"] and all(m["severity"] < 2 for m in ok["messages"]), ok


# -- what renders --------------------------------------------------------------------------


def kinds(variant: str) -> list[tuple[str, str | None]]:
    return sorted((m.kind, m.namespace) for m in render(variant))


def test_default_renders_cluster_wide() -> None:
    assert kinds("default") == sorted(
        [
            ("ClusterRole", None),  # the operator's
            ("ClusterRoleBinding", None),
            ("Deployment", NAMESPACE),
            ("NetworkPolicy", NAMESPACE),  # the operator's pod: metrics scrapes only
            ("ServiceAccount", NAMESPACE),  # the operator's
        ]
    )


def test_namespaced_renders_a_role_per_watched_namespace() -> None:
    # The discovery ClusterRole and its binding, then the operator and its account.
    expected: list[tuple[str, str | None]] = [("ClusterRole", None), ("ClusterRoleBinding", None)]
    expected += [("Deployment", NAMESPACE), ("ServiceAccount", NAMESPACE)]
    expected += [("NetworkPolicy", NAMESPACE)]
    for ns in ("team-a", "team-b"):
        expected += [("Role", ns), ("RoleBinding", ns)]  # the operator's
    assert kinds("namespaced") == sorted(expected)


def test_bring_your_own_rbac_renders_only_the_operator() -> None:
    assert kinds("bring-your-own-rbac") == [
        ("Deployment", NAMESPACE),
        ("NetworkPolicy", NAMESPACE),
    ]
    pod = operator_deployment("bring-your-own-rbac")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-operator"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_objects_are_labelled_and_placed(variant: str) -> None:
    for m in render(variant):
        labels = m.body["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, m
        assert labels["app.kubernetes.io/managed-by"] == "Helm", m
        assert labels["app.kubernetes.io/component"] == "operator", m
        assert (m.namespace is None) == (m.kind in CLUSTER_SCOPED), m


def test_names_are_unique() -> None:
    for variant in VARIANTS:
        keys = [(m.kind, m.namespace, m.name) for m in render(variant)]
        assert len(keys) == len(set(keys)), variant


def test_notes_say_where_it_watches() -> None:
    assert "watching every namespace" in notes("default")
    assert "the namespaces team-a, team-b" in notes("namespaced")
    assert "kubectl apply --server-side -f crds/" in notes("default")
    assert "registry.example/exegpt-runtime:0.1.0-cuda" in notes("pinned")


# -- official schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_match_the_kubernetes_schemas(variant: str, version: str) -> None:
    for m in render(variant):
        if m.body["apiVersion"].startswith(PEERING_GROUP + "/"):
            continue
        validate(m, version)


@pytest.mark.parametrize("variant", ["leader-election", "leader-election-namespaced"])
def test_peering_objects_are_served_by_the_peering_crd(variant: str) -> None:
    manifests = render(variant)
    (crd,) = [m.body for m in manifests if m.kind == "CustomResourceDefinition"]
    peers = [m for m in manifests if m.body["apiVersion"].startswith(PEERING_GROUP + "/")]
    namespaces = VARIANTS[variant].get("watchNamespaces")
    assert sorted(str(m.namespace) for m in peers) == sorted(namespaces or ["None"])
    for m in peers:
        assert m.body["apiVersion"] == f"{crd['spec']['group']}/v1"
        assert m.kind == crd["spec"]["names"]["kind"]
        assert crd["spec"]["scope"] == ("Namespaced" if namespaces else "Cluster")
    env = env_of(operator_container(variant))
    assert env["EXEGPT_PEERING"] == "true"
    assert {m.name for m in peers} == {env["EXEGPT_PEERING_NAME"]}
    deployment = operator_deployment(variant)["spec"]
    assert deployment["replicas"] == VARIANTS[variant]["replicaCount"]
    assert deployment["strategy"]["type"] == "RollingUpdate"


def test_one_replica_runs_without_peering() -> None:
    manifests = render("default")
    assert not [m for m in manifests if m.kind == "CustomResourceDefinition"]
    assert env_of(operator_container("default"))["EXEGPT_PEERING"] == "false"
    deployment = operator_deployment("default")["spec"]
    assert (deployment["replicas"], deployment["strategy"]["type"]) == (1, "Recreate")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_chart_never_sets_the_test_seam(variant: str) -> None:
    env = env_of(operator_container(variant))
    assert "EXEGPT_KUBE_HOST" not in env and "EXEGPT_KUBE_INSECURE" not in env


def test_metrics_port_policy_and_service() -> None:
    container = operator_container("leader-election")
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert port["containerPort"] == 9100
    assert env_of(container)["EXEGPT_METRICS_PORT"] == "9100"
    assert env_of(container)["EXEGPT_LOG_FORMAT"] == "json"
    assert env_of(container)["EXEGPT_ALLOWED_PROFILER_IMAGES"] == (
        "registry.example/exegpt-runtime:*"
    )
    manifests = render("leader-election")
    (policy,) = [m.body for m in manifests if m.kind == "NetworkPolicy"]
    pod_labels = operator_deployment("leader-election")["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 9100, "protocol": "TCP"}]
    assert rule["from"] == VARIANTS["leader-election"]["networkPolicy"]["metricsFrom"]
    (service,) = [m.body for m in manifests if m.kind == "Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # No scrape annotations when turned off.
    annotations = operator_deployment("leader-election")["spec"]["template"]["metadata"]
    assert "prometheus.io/scrape" not in (annotations.get("annotations") or {})


def validate(m: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(m.body, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        pytest.fail(f"{m}: invalid for Kubernetes {version} at {where}: {exc.message}")


# -- pod security --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_template_is_restricted(variant: str) -> None:
    pods = [(m, pod_spec_of(m.body)) for m in render(variant)]
    templates = [(m, p) for m, p in pods if p is not None]
    assert templates, "the chart renders no pod template"
    for m, pod in templates:
        assert restricted_violations(pod) == [], m
        # Writing is possible only where an emptyDir is mounted.
        empty_dirs = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {v["mountPath"]: v["name"] for v in container.get("volumeMounts") or []}
            assert mounts.get("/tmp") in empty_dirs, m


# -- the operator's Deployment ---------------------------------------------------------------


def test_operator_deployment_runs_one_operator() -> None:
    deployment = operator_deployment("default")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = operator_container("default")
    assert [*container["command"], *container["args"]] == ["exegpt", "operator"]
    assert env_of(container)["EXEGPT_PEERING"] == "false"


def test_liveness_probe_is_on_kopfs_health_endpoint() -> None:
    container = operator_container("default")
    endpoint = urlparse(env_of(container)["EXEGPT_LIVENESS_ENDPOINT"])
    probe = container["livenessProbe"]["httpGet"]
    (port,) = [p for p in container["ports"] if p["name"] == probe["port"]]
    assert (endpoint.hostname, endpoint.port, endpoint.path) == (
        "0.0.0.0",
        port["containerPort"],
        probe["path"],
    )
    assert probe["path"] == "/healthz"


def test_operator_has_requests_and_limits() -> None:
    for variant in VARIANTS:
        resources = operator_container(variant)["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), variant
        assert "memory" in resources["limits"], variant


def settings_of(variant: str) -> OperatorSettings:
    """The settings the operator would start with: its environment, read by the
    operator's own parser (a bad or unknown value raises)."""
    env = env_of(operator_container(variant))
    exegpt_env = {k: v for k, v in env.items() if k.startswith("EXEGPT_")}
    known = {"EXEGPT_" + name.upper() for name in OperatorSettings.model_fields}
    assert set(exegpt_env) <= known, f"unknown settings: {set(exegpt_env) - known}"
    return OperatorSettings.from_env(exegpt_env)


# Settings the chart sets from the release, or turns on, where the operator's own
# defaults (a process started by hand) leave them off.
FROM_THE_RELEASE = {
    "metrics_port": 9090,
    "operator_namespace": NAMESPACE,
    "operator_pod_selector": (
        "app.kubernetes.io/name=exegpt",
        f"app.kubernetes.io/instance={RELEASE}",
        "app.kubernetes.io/component=operator",
    ),
}


def test_default_settings_are_the_operators_defaults() -> None:
    settings = settings_of("default")
    expected = OperatorSettings().model_copy(update=FROM_THE_RELEASE)
    assert settings == expected, "the chart's defaults drifted from settings.py"
    assert settings.cluster_wide
    assert settings.kube_host is None and not settings.kube_insecure


def test_settings_follow_the_values() -> None:
    settings = settings_of("pinned")
    assert settings.namespaces == ("serving",)
    assert settings.runtime_image == "registry.example/exegpt-runtime:0.1.0-cuda"
    assert settings.allowed_profiler_images == ("registry.example/exegpt-runtime:0.1.0-cuda",)
    assert (settings.resync_seconds, settings.plan_time_limit_seconds) == (2.5, 60.0)
    assert settings.metrics_timeout_seconds == 2.0
    assert settings.planner_threads == 4
    assert settings.api_timeout_seconds == 20.0
    assert (settings.error_retry_seconds, settings.error_retry_max_seconds) == (0.5, 120.0)
    assert settings_of("namespaced").namespaces == ("team-a", "team-b")


def test_images() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    default = operator_container("default")
    assert default["image"] == f"ghcr.io/exegpt/exegpt-operator:{app_version}"
    assert OperatorSettings().runtime_image == f"ghcr.io/exegpt/exegpt-runtime:{app_version}"
    pinned = operator_container("pinned")
    assert pinned["image"] == "registry.example/exegpt-operator@sha256:" + "0" * 64
    assert pinned["imagePullPolicy"] == "Always"
    pod = operator_deployment("pinned")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]


def test_app_version_is_the_package_version() -> None:
    pyproject: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["appVersion"] == pyproject["project"]["version"]


def test_scheduling_values_reach_the_pod() -> None:
    pod = operator_deployment("pinned")["spec"]["template"]
    pinned = VARIANTS["pinned"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod["spec"][key] == pinned[key], key
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
    scrape["prometheus.io/path"] = "/metrics"
    assert pod["metadata"]["annotations"] == {**scrape, **pinned["podAnnotations"]}
    (sa,) = [m for m in of_kind(render("pinned"), "ServiceAccount") if m.namespace == NAMESPACE]
    assert sa.name == "exegpt-controller"
    assert sa.body["metadata"]["annotations"] == {"owner": "ml-platform"}
