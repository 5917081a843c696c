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
from exegpt.operator.vllm_nodes import node_script
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.runnable import vllm_deployment_limitation, vllm_limitation, vllm_nodes
from exegpt.planner.scheduler import schedule
from exegpt.planner.vllm_args import MASTER_PORT, SERVER_MODULE

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


def test_the_operator_runs_vllm_servers_on_one_node_or_over_whole_nodes() -> None:
    rr = ExecutionConfig(strategy="RoundRobin", tensor_parallel=8, pipeline_stages=2)
    assert vllm_deployment_limitation(rr, 16) == ""
    assert vllm_deployment_limitation(rr, 8) == ""  # two nodes, one stage each
    assert vllm_nodes(16, 8) == 2 and vllm_nodes(16, 16) == 1
    rr12 = ExecutionConfig(strategy="RoundRobin", tensor_parallel=4, pipeline_stages=3)
    assert "replica of 12 GPUs spans nodes of 8 GPUs only as whole nodes" in (
        vllm_deployment_limitation(rr12, 8)
    )
    # vLLM puts 8 consecutive ranks on each node: TP groups of 3 would straddle nodes
    tp3 = ExecutionConfig(strategy="RoundRobin", tensor_parallel=3, pipeline_stages=8)
    assert "split its tensor-parallel groups of 3" in vllm_deployment_limitation(tp3, 8)
    assert vllm_deployment_limitation(tp3, 24) == ""  # one node
    waa = ExecutionConfig(
        strategy="WorkloadAware", encode_gpus=2, encode_tp=2, encode_stages=1,
        decode_gpus=16, tensor_parallel=8, pipeline_stages=2,
    )  # fmt: skip
    assert vllm_deployment_limitation(waa, 8) == ""
    waa12 = waa.model_copy(update={"decode_gpus": 12, "tensor_parallel": 4, "pipeline_stages": 3})
    assert "decode instance of 12 GPUs" in vllm_deployment_limitation(waa12, 8)


# opt-13b in float16 (26 GB) does not fit one 24 GB L4: on nodes of one GPU each server
# spans nodes, one pipeline stage per node
SMALL_NODES = {
    "model.name": "opt-13b",
    "hardware": {"gpus": 4, "gpuType": "nvidia-l4", "gpusPerNode": 1},
    "slo": {"latency": "30s"},
}


def _multinode(strategy: str) -> tuple[ExeGPTDeploymentSpec, Plan, list[dict[str, Any]]]:
    spec = parse_spec(spec_dict(engine="vLLM", strategy=strategy, **WEIGHTS, **SMALL_NODES))
    plan = _plan(spec)
    doc = plandoc.plan_document("x", spec, plan)
    return spec, plan, builders.build_workers("x", "ns", OWNER, spec, doc, doc.hash(), "img")


def _one(sts: dict[str, Any]) -> dict[str, Any]:
    [c] = sts["spec"]["template"]["spec"]["containers"]
    return dict(c)


def test_a_server_over_several_nodes_is_rank_0_pods_and_the_other_nodes_pods() -> None:
    spec, plan, sets = _multinode("RoundRobin")
    c = plan.config
    nodes = c.tensor_parallel * c.pipeline_stages  # one GPU per node
    assert nodes > 1
    by_name = {s["metadata"]["name"]: s for s in sets}
    assert sorted(by_name) == ["x-worker", "x-worker-n"]
    leader, others = by_name["x-worker"], by_name["x-worker-n"]
    assert leader["spec"]["replicas"] == c.replicas
    assert others["spec"]["replicas"] == c.replicas * (nodes - 1)
    for sts in sets:
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        assert sts["spec"]["serviceName"] == names.headless_service("x")
        container = _one(sts)
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # a node's GPUs
        assert restricted_violations(sts["spec"]["template"]["spec"]) == []
        env = {e["name"]: e for e in container["env"]}
        assert env["VLLM_HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"

    rank0 = _one(leader)
    args = rank0["args"]
    assert rank0["command"] == ["python3", "-m", SERVER_MODULE]
    assert args[args.index("--nnodes") + 1] == str(nodes)
    assert args[args.index("--node-rank") + 1] == "0"
    assert args[args.index("--master-addr") + 1] == "$(POD_NAME).x-stages"
    assert args[args.index("--master-port") + 1] == str(MASTER_PORT)
    assert rank0["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {p["name"]: p["containerPort"] for p in rank0["ports"]} == {
        "http": spec.runner.port, "rendezvous": MASTER_PORT}  # fmt: skip

    node = _one(others)
    assert node["command"][:2] == ["sh", "-c"]
    assert node["command"][2] == node_script("x", "worker", nodes, spec.runner.port)
    # the same server, less the rank and rank 0's address, which the script appends
    assert node["args"] == [a for a in args if a not in ("--node-rank", "0", "--master-addr",
                                                          "$(POD_NAME).x-stages")]  # fmt: skip
    assert "ports" not in node and "startupProbe" not in node
    assert "exec" in node["livenessProbe"] and "exec" in node["readinessProbe"]

    # clients reach rank 0 only; the NetworkPolicy admits every port between the
    # deployment's own pods (torch.distributed's store, vLLM's message queues, NCCL)
    service = builders.build_client_service("x", "ns", OWNER, spec, plan)
    selector = service["spec"]["selector"]
    labels_of = {n: s["spec"]["template"]["metadata"]["labels"] for n, s in by_name.items()}
    assert selector.items() <= labels_of["x-worker"].items()
    assert not selector.items() <= labels_of["x-worker-n"].items()
    policy = builders.build_network_policy("x", "ns", OWNER, spec)
    own = policy["spec"]["ingress"][0]
    assert "ports" not in own
    [peer] = own["from"]
    for labels in labels_of.values():
        assert peer["podSelector"]["matchLabels"].items() <= labels.items()
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    headless = builders.build_headless_service("x", "ns", OWNER)
    assert headless["spec"]["publishNotReadyAddresses"] is True
    for labels in labels_of.values():
        assert headless["spec"]["selector"].items() <= labels.items()


def test_workload_aware_instances_over_several_nodes() -> None:
    _, plan, sets = _multinode("WorkloadAware")
    c = plan.config
    assert plan.strategy == "WorkloadAware" and c.encode_gpus > 1 and c.decode_gpus > 1
    by_name = {s["metadata"]["name"]: s for s in sets}
    assert sorted(by_name) == ["x-decoder", "x-decoder-n", "x-encoder", "x-encoder-n", "x-router"]
    assert by_name["x-encoder-n"]["spec"]["replicas"] == c.replicas * (c.encode_gpus - 1)
    assert by_name["x-decoder-n"]["spec"]["replicas"] == c.replicas * (c.decode_gpus - 1)
    for role in ("encoder", "decoder"):
        env = {e["name"] for e in _one(by_name[f"x-{role}-n"])["env"]}
        assert {"VLLM_NIXL_SIDE_CHANNEL_HOST", "VLLM_HOST_IP"} <= env
    # the router sends requests to rank 0 of each instance
    router = _one(by_name["x-router"])["args"]
    urls = [router[i + 1] for i, a in enumerate(router) if a in ("--prefill", "--decode")]
    assert urls == [f"http://x-{r}-{o}.x-stages:8000" for r in ("encoder", "decoder")
                    for o in range(c.replicas)]  # fmt: skip


def test_the_plan_document_lists_every_statefulset_of_a_server_over_nodes() -> None:
    spec, plan, sets = _multinode("RoundRobin")
    doc = plandoc.plan_document("x", spec, plan)
    topology = {
        role: (r.statefulSet, r.pods, r.gpusPerPod) for role, r in doc.topology.roles.items()
    }
    assert topology == {
        s["metadata"]["labels"][names.LABEL_COMPONENT]: (
            s["metadata"]["name"], s["spec"]["replicas"], 1) for s in sets}  # fmt: skip
    # a plan for nodes the operator cannot lay the server over is refused
    small = parse_spec(
        spec_dict(engine="vLLM", strategy="RoundRobin", **WEIGHTS,
                  **{**SMALL_NODES, "hardware": {**SMALL_NODES["hardware"], "gpusPerNode": 3,
                                                 "gpus": 6}})
    )  # fmt: skip
    odd = plan.model_copy(
        update={"config": plan.config.model_copy(update={"pipeline_stages": 4, "replicas": 1})}
    )
    with pytest.raises(ValueError, match="only as whole nodes"):
        plandoc.plan_document("x", small, odd)


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
