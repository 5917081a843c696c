"""The manifests of the operator's children: names, counts and GPUs follow the plan,
output is deterministic, the plan hash moves exactly when what the workers run moves,
ownership, and every pod template meets the ``restricted`` Pod Security Standard."""

from __future__ import annotations

import copy
import functools
import json
import posixpath
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import spec as spec_dict

from exegpt.operator import builders, names, plandoc
from exegpt.operator.podspec import (
    CACHE_DIR,
    PLAN_FILE,
    SHM_DIR,
    pod_spec_of,
    restricted_container_security,
    restricted_pod_security,
    restricted_violations,
)
from exegpt.operator.request import plan_request
from exegpt.operator.spec import ExeGPTDeploymentSpec, parse_manifest, parse_spec
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.architecture import Architecture
from exegpt.planner.kvcapacity import KvCapacity, kv_capacity
from exegpt.planner.moments import Moments
from exegpt.planner.plan import ExecutionConfig, Plan, Prediction, SearchStats
from exegpt.planner.profile import MEASURED_PROFILER_VERSION, measured_profile_key, profile_key
from exegpt.planner.scheduler import schedule
from exegpt.planner.workerplan import HASHED_FIELDS, WorkerPlan, canonical_json
from exegpt.planner.workload_presets import get_workload
from exegpt.planner.workload_spec import workload_spec_example

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAME, NS, IMAGE = "chat", "serving", "registry.example/exegpt-runtime:1.0"
META = {"name": NAME, "namespace": NS, "uid": "0b7c5e8e-1111-2222-3333-444455556666"}
OWNER = builders.owner_reference(META)

# -- small builders ------------------------------------------------------------------------


def make_spec(**overrides: Any) -> ExeGPTDeploymentSpec:
    return parse_spec(spec_dict(**overrides))


def make_plan(config: ExecutionConfig, throughput: float = 10.0, **plan: Any) -> Plan:
    predicted = Prediction(
        throughput_qps=throughput,
        throughput_tps=throughput * 30,
        latency_s=2.5,
        e2e_p99_s=3.0,
        memory_per_gpu_bytes=40 * 2**30,
        decode_batch=128.0,
        feasible=True,
    )
    fields: dict[str, Any] = {"latency_bound_s": 3.1, **plan}
    return Plan(
        strategy=config.strategy,
        config=config,
        predicted=predicted,
        search=SearchStats(seconds=0.5, evaluated=100, space=1000),
        **fields,
    )


RR = ExecutionConfig(
    strategy="RoundRobin", replicas=2, pipeline_stages=3, tensor_parallel=2, decode_batch=256
)
WAA = ExecutionConfig(
    strategy="WorkloadAware",
    replicas=2,
    encode_stages=2,
    encode_tp=1,
    encode_gpus=2,
    pipeline_stages=2,
    tensor_parallel=2,
    decode_gpus=4,
    decode_batch=384,
)


@functools.cache
def example(file: str = "opt-13b-summarization.yaml") -> tuple[ExeGPTDeploymentSpec, Plan]:
    """An example manifest's spec and the plan the scheduler makes for it (cached)."""
    spec = parse_manifest(yaml.safe_load((EXAMPLES / file).read_text())).spec
    request = plan_request(spec)
    plan = schedule(request, analytic_profile(request.architecture, request.gpu))
    assert isinstance(plan, Plan)
    return spec, plan


def render(spec: ExeGPTDeploymentSpec, plan: Plan, image: str = IMAGE) -> list[dict[str, Any]]:
    """Every child of one deployment, as the reconciler renders them."""
    doc = plandoc.plan_document(NAME, spec, plan)
    digest = plandoc.plan_hash(doc)
    return [
        builders.build_plan_configmap(NAME, NS, OWNER, doc, digest),
        *builders.build_workers(NAME, NS, OWNER, spec, doc, digest, image),
        builders.build_headless_service(NAME, NS, OWNER),
        builders.build_client_service(NAME, NS, OWNER, spec, plan),
    ]


def workers(spec: ExeGPTDeploymentSpec, plan: Plan, image: str = IMAGE) -> list[dict[str, Any]]:
    doc = plandoc.plan_document(NAME, spec, plan, image)
    return builders.build_workers(NAME, NS, OWNER, spec, doc, plandoc.plan_hash(doc), image)


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def gpus(c: dict[str, Any]) -> int:
    res = c["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"]
    return int(res["limits"]["nvidia.com/gpu"])


def plan_hash_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][names.ANNOTATION_PLAN_HASH])


def profile_job(spec: ExeGPTDeploymentSpec | None = None, attempt: int = 1) -> dict[str, Any]:
    spec = spec or make_spec(
        **{
            "hardware.nodeSelector": {"pool": "gpu", "accelerator": "a100"},
            "hardware.tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    )
    key = profile_key(
        spec.model.resolved_architecture(),
        spec.hardware.gpu_type,
        spec.model.dtype,
        MEASURED_PROFILER_VERSION,
    )
    return builders.build_profile_job(NS, spec, key, attempt, IMAGE, "exegpt-profiler", 7200.0)


# -- ownerReference ------------------------------------------------------------------------


def test_owner_reference_from_body_or_metadata() -> None:
    expected = {
        "apiVersion": "exegpt.dev/v1alpha1",
        "kind": "ExeGPTDeployment",
        "name": NAME,
        "uid": META["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert builders.owner_reference(META) == expected
    assert builders.owner_reference({"metadata": META, "spec": {}}) == expected
    with pytest.raises(ValueError, match="uid"):
        builders.owner_reference({"name": NAME})


def test_every_child_of_a_deployment_is_owned_by_it() -> None:
    spec, plan = example()
    for obj in render(spec, plan):
        assert obj["metadata"]["ownerReferences"] == [OWNER], obj["metadata"]["name"]
        assert obj["metadata"]["namespace"] == NS
        assert obj["metadata"]["labels"][names.LABEL_INSTANCE] == NAME
    # a body passed as the owner gives the same reference
    cm = builders.build_plan_configmap(
        NAME, NS, {"metadata": META}, plandoc.plan_document(NAME, spec, plan), "h"
    )
    assert cm["metadata"]["ownerReferences"] == [OWNER]


# -- the plan document and its hash --------------------------------------------------------


def test_plan_document_holds_what_the_workers_need() -> None:
    spec = make_spec(**{"model.weights": {"pvc": "models", "path": "/opt-13b"}})
    plan = make_plan(RR)
    doc = plandoc.plan_document(NAME, spec, plan).document()
    assert doc["apiVersion"] == "exegpt.dev/v1alpha1"
    assert doc["kind"] == "WorkerPlan"
    assert doc["deployment"] == NAME
    assert doc["model"]["name"] == "opt-13b"
    assert doc["model"]["dtype"] == "float16"
    assert doc["model"]["weights"] == {
        "pvc": "models",
        "path": "/opt-13b",
        "directory": "/weights/opt-13b",
    }
    assert doc["model"]["architecture"]["numLayers"] == 40  # by alias
    assert Architecture.model_validate(doc["model"]["architecture"]) == (
        spec.model.resolved_architecture()
    )
    assert ExecutionConfig.model_validate(doc["config"]) == RR
    assert doc["strategy"] == "RoundRobin"
    assert doc["engine"] == "ExeGPT"
    moments = Moments.of(plan_request(spec).workload, spec.model.resolved_architecture())
    capacity = kv_capacity(RR, moments, "ExeGPT", plan.predicted.decode_batch)
    assert KvCapacity.model_validate(doc["capacity"]) == capacity
    assert doc["predicted"]["throughput_qps"] == 10.0
    assert doc["predicted"]["decode_batch"] == 128.0  # the steady batch, as predicted
    assert doc["latencyBoundSeconds"] == 3.1
    assert doc["runner"] == {"image": None, "port": 8000}
    worker = doc["topology"]["roles"]["worker"]
    assert worker == {"statefulSet": "chat-worker", "pods": 6, "stages": 3, "gpusPerPod": 2}
    assert doc["topology"]["service"] == names.headless_service(NAME)
    summarization = get_workload("summarization")
    assert doc["limits"] == {
        "maxInputTokens": summarization.input.max,
        "maxOutputTokens": summarization.output.max,
    }
    json.dumps(doc, allow_nan=False)  # plain JSON


def test_plan_document_of_an_explicit_architecture() -> None:
    spec = parse_manifest(yaml.safe_load((EXAMPLES / "custom-architecture.yaml").read_text())).spec
    doc = plandoc.plan_document(NAME, spec, make_plan(RR)).document()
    assert doc["model"]["name"] == "mistral-7b"
    assert doc["model"]["architecture"]["numKvHeads"] == 8
    assert doc["model"]["weights"] is None


def test_plan_hash_moves_with_what_the_workers_run() -> None:
    spec, plan = make_spec(), make_plan(RR)
    base = plandoc.plan_hash(plandoc.plan_document(NAME, spec, plan))
    assert len(base) == 16 and int(base, 16) >= 0
    changed = {
        "config": (spec, make_plan(RR.model_copy(update={"decode_batch": 512}))),
        "strategy": (spec, make_plan(WAA)),
        "dtype": (make_spec(**{"model.dtype": "bfloat16"}), plan),
        "weights": (make_spec(**{"model.weights": {"pvc": "models"}}), plan),
        "model": (make_spec(**{"model.name": "llama-2-7b"}), plan),
        "image": (make_spec(**{"runner.image": "other:2"}), plan),
        "port": (make_spec(**{"runner.port": 9000}), plan),
    }
    for what, (s, p) in changed.items():
        assert plandoc.plan_hash(plandoc.plan_document(NAME, s, p)) != base, what
    assert plandoc.plan_hash(plandoc.plan_document(NAME, spec, plan, image="x:1")) != base


def test_plan_document_limits_are_the_workloads_maxima() -> None:
    custom = workload_spec_example()  # input max 512, output max 160
    histogram = {
        "input": {"histogram": {"edges": [1, 100, 300], "weights": [1, 2]}},
        "output": {"histogram": {"lengths": [70, 5], "weights": [1, 1]}},
    }
    cases = {
        "normal": (custom, 512, 160),
        "histogram": (histogram, 299, 70),  # bins are [edge, next edge)
        "preset": ({"preset": "chat"}, None, None),
    }
    for what, (workload, max_in, max_out) in cases.items():
        spec = make_spec(workload=workload)
        resolved = plan_request(spec).workload  # what the planner plans with
        limits = plandoc.plan_document(NAME, spec, make_plan(RR)).document()["limits"]
        assert limits == {
            "maxInputTokens": resolved.input.max,
            "maxOutputTokens": resolved.output.max,
        }, what
        assert all(type(v) is int for v in limits.values()), what
        if max_in is not None:
            assert (limits["maxInputTokens"], limits["maxOutputTokens"]) == (max_in, max_out)


def test_plan_hash_moves_with_the_longest_input_or_output_only() -> None:
    custom = workload_spec_example()
    plan = make_plan(RR)

    def digest(**overrides: Any) -> str:
        workload = copy.deepcopy(custom)
        for path, value in overrides.items():
            side, field = path.split("_")
            workload[side][field] = value
        return plandoc.plan_hash(plandoc.plan_document(NAME, make_spec(workload=workload), plan))

    base = digest()
    assert digest(input_max=1024) != base
    assert digest(output_max=320) != base
    # the same maxima (and the same plan): the workers run the same thing
    assert digest(input_mean=300) == base
    assert digest(output_std=20) == base


def test_plan_hash_ignores_predictions_bound_and_search() -> None:
    spec = make_spec()
    base = plandoc.plan_hash(plandoc.plan_document(NAME, spec, make_plan(RR)))
    other = make_plan(RR, throughput=99.0, latency_bound_s=5.0, reason="another sentence")
    other = other.model_copy(update={"search": SearchStats(seconds=9, evaluated=1, space=2)})
    doc = plandoc.plan_document(NAME, spec, other)
    assert plandoc.plan_hash(doc) == base
    assert set(HASHED_FIELDS) | {"predicted", "latencyBoundSeconds"} == set(doc.document())


def test_a_document_read_back_keeps_the_plan_and_takes_the_deployments_part() -> None:
    """A pass that does not plan again renders from the ConfigMap's document: the
    planner's part stays as it is, the spec's part (image, weights, port) follows it."""
    spec, plan = make_spec(), make_plan(WAA)
    doc = plandoc.plan_document(NAME, spec, plan, IMAGE)
    read = WorkerPlan.from_json(doc.canonical_json())
    assert plandoc.plan_document(NAME, spec, read, IMAGE).canonical_json() == doc.canonical_json()
    moved = make_spec(**{"runner.port": 9000, "model.weights": {"pvc": "models"}})
    again = plandoc.plan_document(NAME, moved, read, "other:2")
    planned = ("strategy", "engine", "config", "limits", "capacity", "predicted")
    assert {k: getattr(again, k) for k in planned} == {k: getattr(doc, k) for k in planned}
    assert again.latencyBoundSeconds == doc.latencyBoundSeconds
    assert (again.runner.port, again.runner.image) == (9000, "other:2")
    assert again.model.weights is not None and again.hash() != doc.hash()


def test_worker_plan_errors_name_the_field() -> None:
    doc = plandoc.plan_document(NAME, make_spec(), make_plan(RR)).document()
    with pytest.raises(ValueError, match="limits"):
        WorkerPlan.parse({k: v for k, v in doc.items() if k != "limits"})
    with pytest.raises(ValueError, match="expected WorkerPlan"):
        WorkerPlan.parse({**doc, "kind": "Plan"})
    with pytest.raises(ValueError, match="not JSON"):
        WorkerPlan.from_json(b"\xff{")
    kv = doc["capacity"]
    wrong = {**doc, "capacity": {**kv, "block_size": 7, "tokens": 7 * kv["blocks"]}}
    with pytest.raises(ValueError, match=r"capacity\.block_size 7 is not maxInputTokens"):
        WorkerPlan.parse(wrong)
    fewer = {**doc, "capacity": {**kv, "sequences": kv["sequences"] - 1}}
    with pytest.raises(ValueError, match=r"capacity\.sequences .* is not the .* sequences"):
        WorkerPlan.parse(fewer)


@pytest.mark.parametrize("strategy", ["Static", "Continuous"])
def test_a_baseline_plan_runs_as_round_robin_does(strategy: str) -> None:
    """An Auto plan may be a baseline (docs/scheduler.md): on the own engine it runs
    ``worker`` pods, one per pipeline stage of each replica, like RoundRobin."""
    config = ExecutionConfig(
        strategy=strategy, replicas=2, tensor_parallel=2, pipeline_stages=2, micro_batches=2,
        encode_batch=8, decode_batch=8,
    )  # fmt: skip
    plan = make_plan(config)
    doc = plandoc.plan_document(NAME, make_spec(), plan)
    assert doc.strategy == strategy
    assert plandoc.roles(plan) == [(names.WORKER, 4, 2, 2)]


# -- the plan ConfigMap --------------------------------------------------------------------


def test_plan_configmap() -> None:
    spec, plan = make_spec(), make_plan(WAA)
    doc = plandoc.plan_document(NAME, spec, plan)
    digest = plandoc.plan_hash(doc)
    cm = builders.build_plan_configmap(NAME, NS, OWNER, doc, digest)
    assert cm["kind"] == "ConfigMap" and cm["apiVersion"] == "v1"
    assert cm["metadata"]["name"] == names.plan_configmap(NAME)
    assert cm["metadata"]["labels"] == names.labels(NAME, names.PLAN)
    assert cm["metadata"]["annotations"] == {names.ANNOTATION_PLAN_HASH: digest}
    assert json.loads(cm["data"]["plan.json"]) == doc.document()
    assert cm["data"]["plan.json"] == canonical_json(doc.document()) == doc.canonical_json()
    # what a worker reads back is the document, byte for byte
    assert WorkerPlan.from_json(cm["data"]["plan.json"]) == doc
    assert WorkerPlan.from_json(cm["data"]["plan.json"]).canonical_json() == cm["data"]["plan.json"]
    assert cm["data"]["plan-hash"] == digest
    # the ConfigMap's own name is accepted for the deployment's; a mismatch is not
    named = builders.build_plan_configmap(names.plan_configmap(NAME), NS, OWNER, doc, digest)
    assert named == cm
    with pytest.raises(ValueError, match="other"):
        builders.build_plan_configmap("other", NS, OWNER, doc, digest)


# -- workers -------------------------------------------------------------------------------


def test_roundrobin_one_statefulset_of_replicas_times_stages() -> None:
    spec = make_spec(**{"runner.port": 8080})
    plan = make_plan(RR)
    (sts,) = workers(spec, plan)
    assert sts["apiVersion"] == "apps/v1" and sts["kind"] == "StatefulSet"
    assert sts["metadata"]["name"] == names.statefulset(NAME, names.WORKER) == "chat-worker"
    assert sts["spec"]["replicas"] == 2 * 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert sts["spec"]["serviceName"] == names.headless_service(NAME)
    assert sts["spec"]["selector"] == {"matchLabels": names.selector(NAME, names.WORKER)}
    assert sts["spec"]["template"]["metadata"]["labels"] == names.labels(NAME, names.WORKER)
    c = container(sts)
    assert gpus(c) == 2
    assert c["image"] == IMAGE
    assert [*c["command"], *c["args"]] == [
        "exegpt",
        "serve",
        "--plan",
        PLAN_FILE,
        "--role",
        "worker",
        "--port",
        "8080",
    ]
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "rendezvous", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60


def test_workload_aware_encoder_and_decoder_statefulsets() -> None:
    enc, dec = workers(make_spec(), make_plan(WAA))
    assert enc["metadata"]["name"] == "chat-encoder" and dec["metadata"]["name"] == "chat-decoder"
    assert (enc["spec"]["replicas"], gpus(container(enc))) == (2 * 2, 1)
    assert (dec["spec"]["replicas"], gpus(container(dec))) == (2 * 2, 2)
    assert "encoder" in container(enc)["args"] and "decoder" in container(dec)["args"]
    for sts, role in ((enc, names.ENCODER), (dec, names.DECODER)):
        assert sts["spec"]["selector"]["matchLabels"] == names.selector(NAME, role)
        assert sts["spec"]["serviceName"] == names.headless_service(NAME)


def test_scheduled_example_uses_the_plans_gpus() -> None:
    for file in ("opt-13b-summarization.yaml", "custom-architecture.yaml"):
        spec, plan = example(file)
        sets = workers(spec, plan)
        total = sum(s["spec"]["replicas"] * gpus(container(s)) for s in sets)
        assert total == plan.config.total_gpus <= spec.hardware.gpus


def test_worker_pod_environment_volumes_and_placement() -> None:
    spec = make_spec(
        **{
            "model.weights": {"pvc": "models", "path": "/opt-13b"},
            "hardware.nodeSelector": {"pool": "gpu"},
            "hardware.tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    )
    (sts,) = workers(spec, make_plan(RR))
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["EXEGPT_PEERS_SERVICE"]["value"] == names.headless_service(NAME)
    assert env["EXEGPT_PLAN_HASH"]["value"] == plan_hash_of(sts)
    assert env["HOME"]["value"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["plan"]["configMap"]["name"] == names.plan_configmap(NAME)
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in volumes["cache"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/exegpt/plan"]["readOnly"] is True
    assert mounts["/weights"]["readOnly"] is True
    assert {"/dev/shm", "/tmp"} <= set(mounts)
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["automountServiceAccountToken"] is False
    # without weights there is no weights volume
    (plain,) = workers(make_spec(), make_plan(RR))
    assert "weights" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}
    assert "nodeSelector" not in plain["spec"]["template"]["spec"]


RR_2X2_TP2 = ExecutionConfig(
    strategy="RoundRobin", replicas=2, pipeline_stages=2, tensor_parallel=2, decode_batch=256
)


@pytest.mark.parametrize("config", [RR_2X2_TP2, WAA], ids=lambda c: c.strategy)
def test_worker_pod_templates_agree_with_the_plan_document(config: ExecutionConfig) -> None:
    """Every worker StatefulSet, read against the plan document it is rendered with (as
    the reconciler renders it): what runs, how many pods, GPUs, probes, security,
    writable paths, environment, and the request limits the workers read."""
    port = 8080
    spec = make_spec(workload=workload_spec_example(), **{"runner.port": port})
    plan = make_plan(config)
    doc = plandoc.plan_document(NAME, spec, plan, IMAGE)
    digest = plandoc.plan_hash(doc)
    cm = builders.build_plan_configmap(NAME, NS, OWNER, doc, digest)
    sets = builders.build_workers(NAME, NS, OWNER, spec, doc, digest, IMAGE)

    rendered = json.loads(cm["data"]["plan.json"])
    workload = plan_request(spec).workload
    assert (
        rendered["limits"]
        == {
            "maxInputTokens": workload.input.max,
            "maxOutputTokens": workload.output.max,
        }
        == {"maxInputTokens": 512, "maxOutputTokens": 160}
    )
    assert cm["data"]["plan-hash"] == digest == WorkerPlan.parse(rendered).hash()

    topology = doc.document()["topology"]
    expected_roles = ["worker"] if plan.strategy == "RoundRobin" else ["encoder", "decoder"]
    assert list(topology["roles"]) == expected_roles
    assert [s["metadata"]["name"] for s in sets] == [
        topology["roles"][role]["statefulSet"] for role in expected_roles
    ]
    for sts, role in zip(sets, expected_roles, strict=True):
        planned = topology["roles"][role]
        assert sts["spec"]["replicas"] == planned["pods"], role
        assert sts["spec"]["serviceName"] == topology["service"], role
        pod = sts["spec"]["template"]["spec"]
        c = container(sts)
        assert c["name"] == role
        assert c["image"] == doc.runner.image == IMAGE
        assert c["command"] == ["exegpt"]
        assert c["args"] == [
            "serve", "--plan", PLAN_FILE, "--role", role, "--port", str(port)
        ]  # fmt: skip
        assert topology["planFile"] == PLAN_FILE
        assert gpus(c) == planned["gpusPerPod"], role
        assert c["ports"] == [
            {"name": "http", "containerPort": port, "protocol": "TCP"},
            {"name": "rendezvous", "containerPort": port + 1, "protocol": "TCP"},
        ]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["startupProbe"]["httpGet"]["port"] == "http"
        assert restricted_violations(pod) == [], role
        env = {e["name"]: e for e in c["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}
        }
        assert env["EXEGPT_PEERS_SERVICE"]["value"] == topology["service"]
        assert env["EXEGPT_PLAN_HASH"]["value"] == digest
        assert env["HOME"]["value"] == CACHE_DIR
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        cache, shm = volumes[mounts[CACHE_DIR]["name"]], volumes[mounts[SHM_DIR]["name"]]
        assert "emptyDir" in cache and not mounts[CACHE_DIR].get("readOnly", False)
        assert shm["emptyDir"]["medium"] == "Memory"
        plan_mount = mounts[posixpath.dirname(PLAN_FILE)]
        assert plan_mount["readOnly"] is True
        assert volumes[plan_mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    total = sum(s["spec"]["replicas"] * gpus(container(s)) for s in sets)
    assert total == plan.config.total_gpus


def test_same_inputs_render_byte_identical_manifests() -> None:
    spec, plan = example()
    first = render(spec, plan)
    again = render(copy.deepcopy(spec), plan.model_copy(deep=True))
    assert json.dumps(first) == json.dumps(again)
    assert yaml.safe_dump_all(first, sort_keys=False) == yaml.safe_dump_all(again, sort_keys=False)
    assert json.dumps(profile_job()) == json.dumps(profile_job())


def test_changed_plan_rolls_the_pods_but_keeps_the_selector() -> None:
    spec = make_spec()
    (before,) = workers(spec, make_plan(RR))
    (after,) = workers(spec, make_plan(RR.model_copy(update={"decode_batch": 512})))
    assert plan_hash_of(before) != plan_hash_of(after)
    assert plan_hash_of(before["spec"]["template"]) != plan_hash_of(after["spec"]["template"])
    assert plan_hash_of(after) == plan_hash_of(after["spec"]["template"])
    assert before["spec"]["selector"] == after["spec"]["selector"]
    for value in before["spec"]["selector"]["matchLabels"].values():
        assert plan_hash_of(before) not in value


def test_unchanged_plan_with_other_predictions_renders_identical_workers() -> None:
    spec = make_spec()
    first = workers(spec, make_plan(RR, throughput=10.0))
    second = workers(spec, make_plan(RR, throughput=11.5, latency_bound_s=4.0))
    assert json.dumps(first) == json.dumps(second)


# -- Services ------------------------------------------------------------------------------


def test_headless_service_selects_every_pod_of_the_deployment() -> None:
    svc = builders.build_headless_service(NAME, NS, OWNER)
    assert svc["metadata"]["name"] == names.headless_service(NAME)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    selector = svc["spec"]["selector"]
    assert selector[names.LABEL_INSTANCE] == NAME
    assert names.LABEL_COMPONENT not in selector
    for plan in (make_plan(RR), make_plan(WAA)):
        for sts in workers(make_spec(), plan):
            labels = sts["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items()


@pytest.mark.parametrize(("config", "entry"), [(RR, names.WORKER), (WAA, names.ENCODER)])
def test_client_service_selects_the_entry_pods(config: ExecutionConfig, entry: str) -> None:
    spec, plan = make_spec(**{"runner.port": 8081}), make_plan(config)
    svc = builders.build_client_service(NAME, NS, OWNER, spec, plan)
    assert svc["metadata"]["name"] == names.client_service(NAME) == NAME
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == names.selector(NAME, entry)
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"}
    ]
    by_role = {s["metadata"]["name"]: s for s in workers(spec, plan)}
    labels = by_role[names.statefulset(NAME, entry)]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()


# -- the profiling Job ---------------------------------------------------------------------


def test_profile_job() -> None:
    job = profile_job(attempt=2)
    meta, spec = job["metadata"], job["spec"]
    key = meta["annotations"][names.ANNOTATION_PROFILE_KEY]
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    assert meta["name"] == names.profile_job(key, 2)
    assert "ownerReferences" not in meta  # shared by deployments
    assert meta["labels"] == {**names.profile_labels(key), names.LABEL_ATTEMPT: "2"}
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 7200
    assert "ttlSecondsAfterFinished" not in spec
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "exegpt-profiler"
    assert pod["nodeSelector"] == {"accelerator": "a100", "pool": "gpu"}
    assert list(pod["nodeSelector"]) == sorted(pod["nodeSelector"])
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    (c,) = pod["containers"]
    assert gpus(c) == 8  # min(gpusPerNode 8, gpus 8)
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert [*c["command"], *c["args"]] == [
        "exegpt",
        "profile",
        "--model",
        "opt-13b",
        "--gpu-type",
        "nvidia-a100-80gb",
        "--dtype",
        "float16",
        "--tensor-parallel",
        "1,2,4,8",
        "--max-seconds",
        "6480",
        "--configmap",
        names.profile_configmap(key),
        "--namespace",
        NS,
    ]


def test_profile_job_of_a_small_budget_explicit_model_with_weights() -> None:
    body = yaml.safe_load((EXAMPLES / "custom-architecture.yaml").read_text())
    body["spec"]["model"]["weights"] = {"pvc": "models", "path": "/mistral"}
    spec = parse_manifest(body).spec  # 2 GPUs, 2 per node
    pod = profile_job(spec)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert gpus(c) == 2
    args = c["args"]
    assert "--model" not in args
    arch = json.loads(args[args.index("--architecture-json") + 1])
    assert Architecture.model_validate(arch) == spec.model.resolved_architecture()
    assert args[args.index("--tensor-parallel") + 1] == "1,2"
    assert args[args.index("--weights") + 1] == "/weights/mistral"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_profile_job_of_vllm_times_vllm() -> None:
    spec = make_spec()
    key = measured_profile_key(
        spec.model.resolved_architecture(), spec.hardware.gpu_type, spec.model.dtype, "vLLM"
    )
    job = builders.build_profile_job(NS, spec, key, 1, IMAGE, "exegpt-profiler", 7200.0, "vLLM")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"][-2:] == ["--engine", "vllm"]
    assert c["args"][c["args"].index("--configmap") + 1] == names.profile_configmap(key)
    assert "--engine" not in profile_job()["spec"]["template"]["spec"]["containers"][0]["args"]


def test_profile_job_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        profile_job(attempt=0)


# -- Pod Security Standards: restricted ----------------------------------------------------


def test_every_pod_template_is_restricted() -> None:
    weights = {"model.weights": {"pvc": "models"}}
    rendered = [
        *render(*example()),
        *render(make_spec(**weights), make_plan(RR)),
        *render(make_spec(), make_plan(WAA)),
        profile_job(),
        profile_job(make_spec(**weights)),
    ]
    pods = [p for p in map(pod_spec_of, rendered) if p is not None]
    # the example's plan (one worker StatefulSet, or encoders and decoders) + RR + WAA + 2 Jobs
    in_example = 2 if example()[1].strategy == "WorkloadAware" else 1
    assert len(pods) == in_example + 1 + 2 + 2
    for pod in pods:
        assert restricted_violations(pod) == []
        assert pod["securityContext"] == restricted_pod_security()
        for c in pod["containers"]:
            assert c["securityContext"] == restricted_container_security()


def _bad_pod() -> dict[str, Any]:
    return {
        "hostNetwork": True,
        "securityContext": {"runAsUser": 0},
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}, {"name": "ok", "emptyDir": {}}],
        "containers": [
            {
                "name": "bad",
                "image": "x",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {
                    "privileged": True,
                    "capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]},
                    "seccompProfile": {"type": "Unconfined"},
                },
            }
        ],
    }


def test_a_bad_pod_spec_names_each_problem() -> None:
    problems = "\n".join(restricted_violations(_bad_pod()))
    for expected in (
        "hostNetwork",
        "hostPath",
        "volumes[0] (host)",
        "securityContext.runAsUser: 0",
        "containers[0] (bad).securityContext.privileged",
        "allowPrivilegeEscalation: must be false",
        "runAsNonRoot: must be true",
        "seccompProfile.type: Unconfined",
        "seccompProfile.type: must be RuntimeDefault",
        "capabilities.drop: must include ALL",
        "capabilities.add: SYS_ADMIN not allowed",
        "readOnlyRootFilesystem: must be true",
        "hostPort 80",
    ):
        assert expected in problems, expected
    assert "ok" not in problems
    assert "NET_BIND_SERVICE" not in problems


def test_each_single_weakening_of_a_good_pod_is_caught() -> None:
    (sts,) = workers(make_spec(), make_plan(RR))
    good = sts["spec"]["template"]["spec"]
    weakenings = {
        "seccomp": lambda p: p["securityContext"].pop("seccompProfile"),
        "runAsNonRoot": lambda p: (
            p["securityContext"].pop("runAsNonRoot")
            and p["containers"][0]["securityContext"].pop("runAsNonRoot")
        ),
        "runAsUser": lambda p: p["containers"][0]["securityContext"].update(runAsUser=0),
        "escalation": lambda p: p["containers"][0]["securityContext"].pop(
            "allowPrivilegeEscalation"
        ),
        "capabilities": lambda p: p["containers"][0]["securityContext"].pop("capabilities"),
        "readOnlyRoot": lambda p: p["containers"][0]["securityContext"].update(
            readOnlyRootFilesystem=False
        ),
        "hostPID": lambda p: p.update(hostPID=True),
        "initContainer": lambda p: p.update(initContainers=[{"name": "init", "image": "x"}]),
        "sysctl": lambda p: p["securityContext"].update(
            sysctls=[{"name": "kernel.msgmax", "value": "1"}]
        ),
    }
    for what, weaken in weakenings.items():
        pod = copy.deepcopy(good)
        weaken(pod)
        assert restricted_violations(pod), what


def test_pod_spec_of() -> None:
    pod = {"containers": []}
    assert pod_spec_of({"kind": "Pod", "spec": pod}) == pod
    assert pod_spec_of({"kind": "Job", "spec": {"template": {"spec": pod}}}) == pod
    cron = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": pod}}}}}
    assert pod_spec_of(cron) == pod
    assert pod_spec_of({"kind": "Service", "spec": {}}) is None
