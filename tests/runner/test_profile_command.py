"""``exegpt profile``: the command line, the profile it writes, and writing it into the
profiling Job's ConfigMap (against a fake API object)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

import exegpt.runner.configmap as configmap_module
from exegpt.cli import main
from exegpt.operator import names
from exegpt.planner.profile import Profile
from exegpt.planner.profilekeys import PROFILE_DATA_KEY
from exegpt.runner.configmap import ConfigMapError, check_access, configmap_body, write_profile

TINY = json.dumps(
    {"name": "opt-tiny", "numLayers": 2, "hiddenSize": 32, "numHeads": 4, "ffnSize": 64,
     "vocabSize": 128, "maxPositions": 64}
)  # fmt: skip
QUICK = ["--quick", "--max-batch", "4", "--max-length", "32", "--repeats", "2", "--threads", "1"]


class FakeApi:
    """The ConfigMap calls of CoreV1Api, over a dict; ``fail`` maps a call to the HTTP
    status it answers with."""

    def __init__(self, fail: dict[str, int] | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[str] = []
        self.fail = fail or {}
        self.version = 0

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if call in self.fail:
            raise ApiException(status=self.fail[call], reason="Forbidden")

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> Any:
        self._check("create")
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.version += 1
        meta = {**body["metadata"], "resourceVersion": str(self.version)}
        self.objects[key] = {**body, "metadata": meta}
        return self.objects[key]

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        self._check("read")
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="NotFound")
        return self.objects[(namespace, name)]

    def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> Any:
        self._check("replace")
        current = self.objects[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        self.objects[(namespace, name)] = body
        return body


KEY = "opt-tiny-cpu-0123456789ab"


def test_configmap_is_what_the_operator_reads() -> None:
    body = configmap_body("exegpt-profile-" + KEY, "ns", "{}", KEY)
    assert PROFILE_DATA_KEY in body["data"]
    labels = body["metadata"]["labels"]
    assert labels == names.profile_labels(KEY)
    assert body["metadata"]["annotations"] == {names.ANNOTATION_PROFILE_KEY: KEY}


def test_create_then_replace() -> None:
    api = FakeApi()
    assert write_profile('{"a": 1}', "cm", "ns", KEY, api=api) == "created"
    assert write_profile('{"a": 2}', "cm", "ns", KEY, api=api) == "replaced"
    assert api.calls == ["create", "create", "read", "replace"]
    assert api.objects[("ns", "cm")]["data"][PROFILE_DATA_KEY] == '{"a": 2}'


def test_forbidden_is_explained() -> None:
    with pytest.raises(ConfigMapError, match="forbidden to create ConfigMap ns/cm") as info:
        write_profile("{}", "cm", "ns", KEY, api=FakeApi({"create": 403}))
    assert "service account" in str(info.value) and "configmaps" in str(info.value)
    api = FakeApi({"replace": 403})
    write_profile("{}", "cm", "ns", KEY, api=api)
    assert check_access("cm", "ns", api=api) is api
    assert check_access("other", "ns", api=api) is api  # missing: created later
    with pytest.raises(ConfigMapError, match="forbidden to update"):
        write_profile("{}", "cm", "ns", KEY, api=api)


def test_too_large() -> None:
    with pytest.raises(ConfigMapError, match="more than a ConfigMap holds"):
        write_profile("x" * 1_100_000, "cm", "ns", KEY, api=FakeApi())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_profile_to_stdout_and_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = _run(
        capsys, "profile", "--architecture-json", TINY, "--gpu-type", "cpu", "--dtype",
        "float32", *QUICK,
    )  # fmt: skip
    assert rc == 0, err
    profile = Profile.from_json(out)
    assert profile.provenance.source == "measured"
    assert "profiling opt-tiny" in err
    target = tmp_path / "p.json"
    rc, out, err = _run(
        capsys, "profile", "--architecture-json", TINY, "--gpu-type", "cpu", *QUICK,
        "--dtype", "float32", "--tensor-parallel", "1,2", "--comm", "analytic", "-o", str(target),
    )  # fmt: skip
    assert rc == 0 and out == "", err
    assert Profile.load(target).tp_degrees == [1, 2]


def test_profile_into_configmap(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api = FakeApi()
    monkeypatch.setattr(configmap_module, "in_cluster_api", lambda: api)
    monkeypatch.setenv("POD_NAMESPACE", "team")
    args = ["profile", "--architecture-json", TINY, "--gpu-type", "cpu", "--dtype", "float32",
            *QUICK]  # fmt: skip
    rc, out, err = _run(capsys, *args, "--configmap", "exegpt-profile-x")
    assert rc == 0 and out == "", err
    stored = api.objects[("team", "exegpt-profile-x")]["data"][PROFILE_DATA_KEY]
    profile = Profile.from_json(stored)
    assert "is not named after this profile's key" in err  # "x" is not its key
    name = names.profile_configmap(profile.key)
    rc, _, err = _run(capsys, *args, "--configmap", name)
    assert rc == 0 and "is not named" not in err and f"created ConfigMap team/{name}" in err

    # a service account that may not read ConfigMaps fails before profiling
    monkeypatch.setattr(configmap_module, "in_cluster_api", lambda: FakeApi({"read": 403}))
    rc, out, err = _run(capsys, *args, "--configmap", name)
    assert rc == 1 and out == ""
    assert err.startswith("error: exegpt profile: forbidden to read ConfigMap")
    # one that may read but not create fails at the end
    monkeypatch.setattr(configmap_module, "in_cluster_api", lambda: FakeApi({"create": 403}))
    rc, out, err = _run(capsys, *args, "--configmap", name)
    assert rc == 1 and out == ""
    assert err.splitlines()[-1].startswith("error: exegpt profile: forbidden to create ConfigMap")


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "profile", "--model", "nope", "--gpu-type", "cpu")
    assert rc == 2 and "unknown model 'nope'" in err
    rc, _, err = _run(capsys, "profile", "--gpu-type", "cpu")
    assert rc == 2 and "--model" in err
    rc, _, err = _run(capsys, "profile", "--model", "opt-13b", "--gpu-type", "cpu",
                      "--tensor-parallel", "0")  # fmt: skip
    assert rc == 2 and "positive" in err
    rc, _, err = _run(capsys, "profile", "--architecture-json", "{", "--gpu-type", "cpu")
    assert rc == 2 and "--architecture-json" in err


def test_failures_exit_one(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(capsys, "profile", "--model", "opt-13b", "--gpu-type", "nvidia-a100-80gb",
                        "--device", "cpu")  # fmt: skip
    assert rc == 1 and out == ""
    assert err.startswith("error: exegpt profile: profiling on the CPU cannot measure")
    rc, _, err = _run(capsys, "profile", "--architecture-json", TINY, "--gpu-type", "cpu",
                      "--configmap", "cm")  # fmt: skip
    assert rc == 1 and "--namespace" in err


def test_operator_arguments_parse() -> None:
    """The arguments the operator's profiling Job passes are the command's."""
    from builders import spec

    from exegpt.cli import build_parser
    from exegpt.operator.builders import profile_args
    from exegpt.operator.spec import ExeGPTDeploymentSpec

    for changes in ({}, {"model.weights": {"pvc": "models", "path": "/opt-13b"}}):
        s = ExeGPTDeploymentSpec.model_validate(spec(**changes))
        args = build_parser().parse_args(profile_args("ns", s, KEY, 3600))
        assert args.model == "opt-13b" and args.gpu_type == "nvidia-a100-80gb"
        assert args.tensor_parallel == (1, 2, 4, 8) and args.max_seconds == 3240
        assert (args.configmap, args.namespace) == (names.profile_configmap(KEY), "ns")
        assert (args.weights is not None) == bool(changes)


def test_a_job_that_may_only_update_replaces_the_configmap_the_operator_made() -> None:
    api = FakeApi({"create": 403})
    api.objects[("ns", "cm")] = {"metadata": {"name": "cm", "resourceVersion": "1"}}
    assert write_profile('{"a": 1}', "cm", "ns", KEY, api=api) == "replaced"
    assert api.objects[("ns", "cm")]["data"][PROFILE_DATA_KEY] == '{"a": 1}'
