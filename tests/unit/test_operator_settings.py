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
