"""Along the real path, for every example manifest on the own engine: the
ExeGPTDeployment -> the operator on the emulated API -> the plan ConfigMap it wrote ->
the worker pods' arguments in the StatefulSets it wrote -> each worker as it starts
(the mounted plan loaded, its replica, its admission rule and KV slots). Every number
the workers start with is the planner's, computed here independently from the same
request and profile."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import deployment
from harness import Deployed, deployed

from exegpt.cli import build_parser
from exegpt.operator.podspec import PLAN_FILE
from exegpt.operator.request import plan_request
from exegpt.operator.spec import ExeGPTDeploymentSpec, parse_manifest
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.kvcapacity import KvCapacity
from exegpt.planner.plan import Plan
from exegpt.planner.scheduler import schedule
from exegpt.planner.simulator import Simulator
from exegpt.runner.batching import Admission
from exegpt.runner.topology import DECODER, MAIN
from exegpt.runner.workerplan import ROLE_CHAIN, load_plan, placement, replica_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

pytestmark = pytest.mark.slow


def own_engine(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` asking for the own engine, where the spec has an engine field."""
    if "engine" in ExeGPTDeploymentSpec.model_fields:
        manifest["spec"]["engine"] = "ExeGPT"
    return manifest


@dataclass(frozen=True)
class Planned:
    """The planner's answer for a manifest, and what its engine allocates."""

    plan: Plan
    capacity: KvCapacity


def planners(manifest: dict[str, Any]) -> Planned:
    """Plan ``manifest`` here as the operator plans it: its request, the analytic
    profile for the TP degrees one node allows, the scheduler."""
    request = plan_request(parse_manifest(manifest).spec)
    arch = request.architecture
    degrees = arch.tensor_parallel_degrees(limit=min(request.gpus_per_node, request.gpus))
    profile = analytic_profile(arch, request.gpu, request.dtype, tuple(degrees))
    plan = schedule(request, profile, time_limit_s=20.0)
    assert isinstance(plan, Plan), plan
    capacity = Simulator(request, profile).kv(plan.config, plan.predicted.decode_batch)
    return Planned(plan, capacity)


@functools.cache
def _example(path: Path) -> tuple[dict[str, Any], Deployed]:
    manifest = own_engine(yaml.safe_load(path.read_text()))
    return manifest, deployed(manifest)


def check_workers_start_with_the_plan(
    manifest: dict[str, Any], out: Deployed, tmp_path: Path
) -> None:
    expected = planners(manifest)
    plan, kv = expected.plan, expected.capacity
    c = plan.config

    # The plan ConfigMap: the planner's plan, its engine and KV capacity, and the hash
    # the status and every pod carry.
    mounted = tmp_path / Path(PLAN_FILE).name
    mounted.write_text(out.plan_json, encoding="utf-8")
    doc = load_plan(mounted)
    assert doc.canonical_json() == out.plan_json  # read back byte for byte
    assert doc.hash() == out.plan_hash == out.status["plan"]["hash"]
    assert (doc.strategy, doc.engine, doc.config) == (plan.strategy, "ExeGPT", c)
    assert doc.predicted == plan.predicted
    assert doc.capacity == kv
    status = out.status["plan"]
    assert (status["encodeBatch"], status["decodeStepsPerEncode"]) == (
        c.encode_batch,
        c.decode_steps_per_encode,
    )

    # Every pod of every StatefulSet, as it starts.
    roles = ["encoder", "decoder"] if c.strategy == "WorkloadAware" else ["worker"]
    assert sorted(
        s["metadata"]["labels"]["app.kubernetes.io/component"] for s in out.statefulsets
    ) == sorted(roles)
    port = manifest["spec"].get("runner", {}).get("port", 8000)
    for role in roles:
        sts = out.statefulset(role)
        [container] = sts["spec"]["template"]["spec"]["containers"]
        args = build_parser().parse_args(container["args"])
        assert (args.command, args.plan, args.role, args.port) == ("serve", PLAN_FILE, role, port)
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["EXEGPT_PLAN_HASH"] == out.plan_hash
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        spec = replica_spec(doc)
        chain = spec.topology().chain(ROLE_CHAIN[args.role])
        for ordinal in range(sts["spec"]["replicas"]):
            place = placement(doc, args.role, ordinal, "default")
            assert len(place.ranks) == chain.tp == gpus
        # TP / PP of each chain are the plan's
        if role == "encoder":
            assert (chain.stages, chain.tp) == (c.encode_stages, c.encode_tp)
        else:
            assert (chain.stages, chain.tp) == (c.pipeline_stages, c.tensor_parallel)
        assert sts["spec"]["replicas"] == c.replicas * chain.stages

    # The engine's configuration: its KV slots (the capacity the planner priced, each a
    # slot of the longest request), its admission rule and its limits.
    spec = replica_spec(doc)
    decoding = DECODER if c.strategy == "WorkloadAware" else MAIN
    slots = spec.slots(decoding)
    assert slots == kv.sequences == kv.blocks
    assert spec.max_total_tokens == kv.block_size
    assert slots * spec.max_total_tokens == kv.tokens
    admission = Admission.of(doc.config, slots)
    assert (admission.strategy, admission.encode_batch, admission.decode_batch) == (
        c.strategy,
        c.encode_batch,
        c.decode_batch,
    )
    assert admission.decode_steps_per_encode == c.decode_steps_per_encode
    workload = plan_request(parse_manifest(manifest).spec).workload
    assert (spec.max_input_tokens, spec.max_output_tokens) == (
        workload.input.max,
        workload.output.max,
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_starts_its_workers_with_the_planners_numbers(
    path: Path, tmp_path: Path
) -> None:
    manifest, out = _example(path)
    check_workers_start_with_the_plan(manifest, out, tmp_path)


def test_round_robin_workers_hold_the_planned_decode_batch(tmp_path: Path) -> None:
    """A RoundRobin deployment's workers get the KV slots the planner sized for its
    steady decode batch (the default spec: 194 slots in the first report of this
    defect), not the ``B_E + 4`` a plan without its prediction leaves them."""
    manifest = own_engine(deployment("x", strategy="RoundRobin"))
    out = deployed(manifest)
    check_workers_start_with_the_plan(manifest, out, tmp_path)
    expected = planners(manifest)
    slots = replica_spec(load_plan(tmp_path / "plan.json")).slots(MAIN)
    c = expected.plan.config
    assert expected.plan.predicted.decode_batch > 4
    assert slots == expected.capacity.sequences > c.encode_batch + 4


# -- the same path on vLLM ----------------------------------------------------------------
DECODER_ONLY = [
    p
    for p in EXAMPLES
    if not parse_manifest(yaml.safe_load(p.read_text()))
    .spec.model.resolved_architecture()
    .encoder_decoder
]


def on_vllm(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` asking for vLLM (which serves a checkpoint: weights from a PVC)."""
    manifest["spec"]["engine"] = "vLLM"
    manifest["spec"]["model"].setdefault("weights", {"pvc": "models", "path": "/model"})
    return manifest


@pytest.mark.parametrize("path", DECODER_ONLY, ids=lambda p: p.stem)
def test_every_example_starts_vllm_with_the_planners_numbers(path: Path, tmp_path: Path) -> None:
    """CR -> operator -> plan ConfigMap -> every pod of the vLLM servers, its command line
    as it starts (rank 0 as Kubernetes expands it, the other nodes of a server spanning
    nodes as their start script runs), parsed by vLLM's own parser into its engine
    settings -> the ExeGPT scheduler's settings as it reads them: TP, PP, nodes, node
    rank, rank 0's address, batch caps, KV blocks, schedule, all the planner's numbers.
    Every example plans on vLLM (gpt3-175b and gpt3-341b over several nodes)."""
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm_pods import Node, expanded

    from exegpt.operator import names
    from exegpt.planner.vllm_args import HEADLESS_MODULE, SERVER_MODULE, server_shape
    from exegpt.planner.vllm_schedule import SCHEDULER_CLS, VllmSchedule
    from exegpt.planner.workerplan import WorkerPlan

    manifest = on_vllm(yaml.safe_load(path.read_text()))
    out = deployed(manifest)
    expected = planners(manifest)
    plan, kv = expected.plan, expected.capacity
    c = plan.config
    doc = WorkerPlan.from_json(out.plan_json)
    assert doc.canonical_json() == out.plan_json and doc.hash() == out.plan_hash
    assert (doc.strategy, doc.engine, doc.config) == (plan.strategy, "vLLM", c)
    assert doc.capacity == kv and kv.engine == "vLLM"
    max_out = doc.limits.maxOutputTokens
    gpus_per_node = parse_manifest(manifest).spec.hardware.gpus_per_node
    servers = {"worker": "server", "encoder": "prefill", "decoder": "decode"}
    node = Node.at(tmp_path / "node")
    name = manifest["metadata"]["name"]
    service = names.headless_service(name)
    started = 0
    for sts in out.statefulsets:
        component = sts["metadata"]["labels"]["app.kubernetes.io/component"]
        role = component.removesuffix(names.NODES_SUFFIX)
        if role not in servers:
            continue  # the router in front of WorkloadAware's servers
        [container] = sts["spec"]["template"]["spec"]["containers"]
        shape = server_shape(doc, max_out, servers[role])  # type: ignore[arg-type]
        nodes = shape.gpus // gpus_per_node if shape.gpus > gpus_per_node else 1
        gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus * nodes == shape.gpus and gpus <= gpus_per_node
        rank0 = component == role
        assert sts["spec"]["replicas"] == c.replicas * (1 if rank0 else nodes - 1)
        for ordinal in range(sts["spec"]["replicas"]):
            pod = f"{sts['metadata']['name']}-{ordinal}"
            if rank0:
                argv = expanded(container, pod)
                assert argv[:3] == ["python3", "-m", SERVER_MODULE]
                argv, replica, rank = argv[3:], ordinal, 0
            else:
                argv = node.start(container, pod)
                assert argv[:5] == ["python3", "-m", HEADLESS_MODULE, "serve", "--headless"]
                argv, replica, rank = argv[4:], ordinal // (nodes - 1), ordinal % (nodes - 1) + 1
            namespace = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
            engine = AsyncEngineArgs.from_cli_args(namespace)
            started += 1
            assert namespace.headless is not rank0
            assert (engine.tensor_parallel_size, engine.pipeline_parallel_size) == (
                shape.tensor_parallel,
                shape.pipeline_stages,
            )
            workers = shape.tensor_parallel * shape.pipeline_stages
            assert engine.distributed_executor_backend == ("uni" if workers == 1 else "mp")
            if nodes > 1:
                master = f"{names.statefulset(name, role)}-{replica}.{service}"
                assert (engine.nnodes, engine.node_rank, engine.master_addr) == (
                    nodes,
                    rank,
                    master,
                )
            else:
                assert (engine.nnodes, engine.node_rank) == (1, 0)
            assert engine.max_num_seqs == shape.max_num_seqs
            assert engine.max_model_len == doc.limits.maxInputTokens + max_out
            if servers[role] != "prefill":  # the decoding servers hold the priced KV cache
                assert (engine.num_gpu_blocks_override, engine.block_size) == (
                    kv.blocks,
                    kv.block_size,
                )
            if shape.schedule is None:  # stock vLLM (and WorkloadAware's instances)
                assert engine.scheduler_cls in (None, "") or "ExeGPT" not in str(
                    engine.scheduler_cls
                )
                continue
            assert engine.scheduler_cls == SCHEDULER_CLS
            schedule_read = VllmSchedule.from_additional_config(engine.additional_config)
            assert schedule_read == VllmSchedule.from_config(c, max_out)
            assert (schedule_read.encode_batch, schedule_read.decode_steps_per_encode) == (
                c.encode_batch,
                c.decode_steps_per_encode,
            )
    # the plan's GPUs, each in one of the pods started above
    pods = c.total_gpus // gpus_per_node if c.gpus_per_replica > gpus_per_node else None
    assert pods is None or started == pods
    requested = 0
    for s in out.statefulsets:
        [container] = s["spec"]["template"]["spec"]["containers"]
        limits = container["resources"].get("limits", {})  # the router has none
        requested += int(limits.get("nvidia.com/gpu", 0)) * s["spec"]["replicas"]
    assert requested == c.total_gpus
