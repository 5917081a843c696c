"""Operator settings from the environment."""

from __future__ import annotations

import pytest

from exegpt.operator.settings import OperatorSettings


def test_defaults_are_cluster_wide_without_peering() -> None:
    s = OperatorSettings.from_env({})
    assert s.cluster_wide
    assert not s.peering
    assert s.liveness_endpoint and s.liveness_endpoint.endswith("/healthz")


def test_environment_variables_set_fields() -> None:
    s = OperatorSettings.from_env(
        {"EXEGPT_NAMESPACES": "team-a, team-b", "EXEGPT_RESYNC_SECONDS": "2.5",
         "EXEGPT_PEERING": "true", "EXEGPT_LIVENESS_ENDPOINT": "",
         "EXEGPT_METRICS_TIMEOUT_SECONDS": "1.5"}
    )  # fmt: skip
    assert s.namespaces == ("team-a", "team-b")
    assert not s.cluster_wide
    assert s.resync_seconds == 2.5
    assert s.peering
    assert s.liveness_endpoint is None
    assert s.metrics_timeout_seconds == 1.5


def test_flags_override_the_environment() -> None:
    s = OperatorSettings.from_env({"EXEGPT_NAMESPACES": "a"}, namespaces=("b",))
    assert s.namespaces == ("b",)


def test_a_bad_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="EXEGPT_RESYNC_SECONDS"):
        OperatorSettings.from_env({"EXEGPT_RESYNC_SECONDS": "soon"})
    with pytest.raises(ValueError, match="EXEGPT_METRICS_TIMEOUT_SECONDS"):
        OperatorSettings.from_env({"EXEGPT_METRICS_TIMEOUT_SECONDS": "0"})


def test_kube_host_is_a_test_only_seam() -> None:
    with pytest.raises(ValueError, match="tests only") as info:
        OperatorSettings.from_env({"EXEGPT_KUBE_HOST": "http://127.0.0.1:1"})
    assert "EXEGPT_KUBE_INSECURE" in str(info.value)
    s = OperatorSettings.from_env(
        {"EXEGPT_KUBE_HOST": "http://127.0.0.1:1", "EXEGPT_KUBE_INSECURE": "true"}
    )
    assert s.kube_host == "http://127.0.0.1:1" and s.kube_insecure


def test_observability_and_exposure_settings() -> None:
    s = OperatorSettings.from_env(
        {"EXEGPT_LOG_FORMAT": "json", "EXEGPT_METRICS_PORT": "9090",
         "EXEGPT_ALLOWED_PROFILER_IMAGES": "reg.example/runtime:*, reg.example/pinned:1",
         "EXEGPT_OPERATOR_NAMESPACE": "exegpt-system",
         "EXEGPT_OPERATOR_POD_SELECTOR": "app=exegpt,component=operator"}
    )  # fmt: skip
    assert (s.log_format, s.metrics_port) == ("json", 9090)
    assert s.profiler_image_allowed("reg.example/runtime:0.2")
    assert s.profiler_image_allowed("reg.example/pinned:1")
    assert not s.profiler_image_allowed("reg.example/pinned:2")
    assert not s.profiler_image_allowed("evil.example/runtime:0.2")
    assert OperatorSettings().profiler_image_allowed("anything:1")  # no list: any
    assert s.operator_pod_labels == {"app": "exegpt", "component": "operator"}
    with pytest.raises(ValueError, match="EXEGPT_LOG_FORMAT"):
        OperatorSettings.from_env({"EXEGPT_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="key=value"):
        OperatorSettings.from_env({"EXEGPT_OPERATOR_POD_SELECTOR": "exegpt"})
