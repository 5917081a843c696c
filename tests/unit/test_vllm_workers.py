"""The operator's side of vLLM: which engine a spec plans for, and the worker
StatefulSet of a plan for vLLM (pure builders)."""

from __future__ import annotations

from typing import Any

import pytest
from builders import spec as spec_dict

from exegpt.operator import builders, names, plandoc
from exegpt.operator.podspec import restricted_violations
from exegpt.operator.request import SpecError, plan_request
from exegpt.operator.spec import ExeGPTDeploymentSpec, parse_spec
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.runnable import vllm_deployment_limitation, vllm_limitation
from exegpt.planner.scheduler import schedule

WEIGHTS = {"model.weights": {"pvc": "models", "path": "/llama-3-8b"}}
LLAMA = {"model.name": "llama-3-8b", "slo": {"latency": "10s"}}
OWNER = builders.owner_reference({"name": "x", "uid": "u-1"})


def _spec(**overrides: Any) -> ExeGPTDeploymentSpec:
    return parse_spec(spec_dict(**{**LLAMA, **overrides}))


def _plan(spec: ExeGPTDeploymentSpec) -> Plan:
    request = plan_request(spec)
    plan = schedule(request, analytic_profile(request.architecture, request.gpu))
    assert isinstance(plan, Plan), plan
    return plan


def test_auto_with_weights_plans_what_the_operator_deploys_on_vllm() -> None:
    spec = _spec(**WEIGHTS)
    assert spec.engine == "Auto"
    plan = _plan(spec)
    assert plan.engine == "vLLM"
    architecture = spec.model.resolved_architecture()
    assert vllm_limitation(plan.config, architecture) == ""
    assert vllm_deployment_limitation(plan.config, spec.hardware.gpus_per_node) == ""
    for alternative in plan.alternatives:
        assert vllm_deployment_limitation(alternative.config, spec.hardware.gpus_per_node) == ""


def test_without_weights_auto_is_the_own_engine_and_vllm_says_what_is_missing() -> None:
    assert plan_request(_spec()).engine == "ExeGPT"
    with pytest.raises(SpecError) as err:
        plan_request(_spec(engine="vLLM"))
    assert err.value.path == "spec.model.weights"


def test_the_operator_plans_only_vllm_servers_that_fit_on_a_node() -> None:
    rr = ExecutionConfig(strategy="RoundRobin", tensor_parallel=8, pipeline_stages=2)
    assert "does not fit on a node of 8" in vllm_deployment_limitation(rr, 8)
    assert vllm_deployment_limitation(rr, 16) == ""
    waa = ExecutionConfig(
        strategy="WorkloadAware", encode_gpus=2, encode_tp=2, decode_gpus=16,
        tensor_parallel=8, pipeline_stages=2,
    )  # fmt: skip
    assert "decode instance of 16 GPUs" in vllm_deployment_limitation(waa, 8)


def test_the_worker_statefulset_runs_vllm_servers_under_pss_restricted() -> None:
    spec = _spec(engine="vLLM", strategy="RoundRobin", **WEIGHTS)
    plan = _plan(spec)
    doc = plandoc.plan_document("x", spec, plan)
    assert doc.engine == "vLLM"
    [sts] = builders.build_workers("x", "ns", OWNER, spec, doc, plandoc.plan_hash(doc), "img")
    assert sts["metadata"]["name"] == names.statefulset("x", names.WORKER)
    assert sts["metadata"]["ownerReferences"] == [OWNER]
    assert sts["spec"]["replicas"] == plan.config.replicas
    pod = sts["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "img"
    args = c["args"]
    assert args[args.index("--model") + 1] == "/weights/llama-3-8b"
    assert args[args.index("--tensor-parallel-size") + 1] == str(plan.config.tensor_parallel)
    gpus = plan.config.tensor_parallel * plan.config.pipeline_stages
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert restricted_violations(pod) == []
    # a different plan is a different hash: the pods roll
    other = plan.model_copy(update={"engine": "ExeGPT"})
    assert plandoc.plan_hash(plandoc.plan_document("x", spec, other)) != plandoc.plan_hash(doc)


def test_workload_aware_runs_prefill_and_decode_servers_behind_the_router() -> None:
    spec = _spec(engine="vLLM", strategy="WorkloadAware", **WEIGHTS)
    plan = _plan(spec)
    c = plan.config
    assert plan.strategy == "WorkloadAware"
    sets = builders.build_workers(
        "x", "ns", OWNER, spec, plandoc.plan_document("x", spec, plan), "h", "img"
    )
    by_role = {s["metadata"]["name"].removeprefix("x-"): s for s in sets}
    assert sorted(by_role) == ["decoder", "encoder", "router"]

    def container(role: str) -> dict[str, Any]:
        [one] = by_role[role]["spec"]["template"]["spec"]["containers"]
        return dict(one)

    def value(args: list[str], flag: str) -> str:
        return args[args.index(flag) + 1]

    prefill, decode = container("encoder")["args"], container("decoder")["args"]
    assert value(prefill, "--tensor-parallel-size") == str(c.encode_tp)
    assert value(prefill, "--max-num-seqs") == str(c.encode_batch)
    assert value(decode, "--tensor-parallel-size") == str(c.tensor_parallel)
    assert value(decode, "--max-num-seqs") == str(c.decode_batch)
    for args in (prefill, decode):
        assert '"kv_connector":"NixlConnector"' in value(args, "--kv-transfer-config")
        assert '"kv_role":"kv_both"' in value(args, "--kv-transfer-config")
    assert container("encoder")["resources"]["limits"]["nvidia.com/gpu"] == str(c.encode_gpus)
    assert container("decoder")["resources"]["limits"]["nvidia.com/gpu"] == str(c.decode_gpus)

    router = container("router")
    assert router["command"] == ["vllm-router"]
    assert "--vllm-pd-disaggregation" in router["args"]
    prefills = [router["args"][i + 1] for i, a in enumerate(router["args"]) if a == "--prefill"]
    decodes = [router["args"][i + 1] for i, a in enumerate(router["args"]) if a == "--decode"]
    assert prefills == [f"http://x-encoder-{o}.x-stages:8000" for o in range(c.replicas)]
    assert decodes == [f"http://x-decoder-{o}.x-stages:8000" for o in range(c.replicas)]
    assert "resources" in router and "nvidia.com/gpu" not in str(router["resources"])
    for sts in sets:
        assert restricted_violations(sts["spec"]["template"]["spec"]) == []
    service = builders.build_client_service("x", "ns", OWNER, spec, plan)
    assert service["spec"]["selector"][names.LABEL_COMPONENT] == names.ROUTER


def test_vllm_servers_take_the_api_key_from_the_named_secret() -> None:
    secret = {"runner.apiKeySecret": {"name": "llm-token", "key": "token"}}
    spec = _spec(engine="vLLM", strategy="RoundRobin", **WEIGHTS, **secret)
    doc = plandoc.plan_document("x", spec, _plan(spec))
    [sts] = builders.build_workers("x", "ns", OWNER, spec, doc, doc.hash(), "img")
    [c] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("llm-token", "token", False)
    # without a Secret, no key: vLLM serves /v1/* to whoever the NetworkPolicy admits
    plain = _spec(engine="vLLM", strategy="RoundRobin", **WEIGHTS)
    doc = plandoc.plan_document("x", plain, _plan(plain))
    [sts] = builders.build_workers("x", "ns", OWNER, plain, doc, doc.hash(), "img")
    [c] = sts["spec"]["template"]["spec"]["containers"]
    assert "VLLM_API_KEY" not in {e["name"] for e in c["env"]}
