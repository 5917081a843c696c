"""Every argument list ``exegpt.planner.vllm_args`` renders parses with vLLM's own
argument parser into the engine settings of the plan."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("vllm")

from planner_builders import config

from exegpt.planner.plan import Plan, Prediction, SearchStats
from exegpt.planner.vllm_args import KvCache, KvTransfer, Role, server_args
from exegpt.planner.vllm_schedule import SCHEDULER_CLS


def _plan(strategy: str, **changes: Any) -> Plan:
    c = config(strategy, **changes)  # type: ignore[arg-type]
    p = Prediction(
        throughput_qps=1, throughput_tps=1, latency_s=1, e2e_p99_s=1,
        memory_per_gpu_bytes=1, decode_batch=1, feasible=True,
    )  # fmt: skip
    return Plan(
        strategy=c.strategy, engine="vLLM", config=c, predicted=p,
        search=SearchStats(seconds=0, evaluated=0, space=0),
    )  # fmt: skip


def _parse(args: list[str]) -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    namespace = make_arg_parser(FlexibleArgumentParser()).parse_args(args)
    return namespace, AsyncEngineArgs.from_cli_args(namespace)


CASES: list[tuple[str, Plan, Role, dict[str, Any]]] = [
    ("rr", _plan("RoundRobin", encode_batch=4, decode_batch=32, decode_steps_per_encode=6,
                 tensor_parallel=2, pipeline_stages=2, micro_batches=2), "server", {}),
    ("static", _plan("Static", encode_batch=16), "server", {}),
    ("continuous", _plan("Continuous", decode_batch=64), "server", {}),
    ("multinode", _plan("RoundRobin", encode_batch=2, decode_batch=8, tensor_parallel=8,
                        pipeline_stages=2, micro_batches=2), "server",
     {"master_addr": "x-worker-0.x-stages", "node_rank": 0}),
    ("prefill", _plan("WorkloadAware", encode_batch=8, decode_batch=64, encode_tp=2),
     "prefill", {"kv_transfer": KvTransfer()}),
    ("decode", _plan("WorkloadAware", encode_batch=8, decode_batch=64, tensor_parallel=2),
     "decode", {"kv_transfer": KvTransfer.shared_directory("/kv")}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "plan", "role", "extra"), CASES, ids=[c[0] for c in CASES])
def test_vllm_parses_the_rendered_arguments(
    label: str, plan: Plan, role: Role, extra: dict[str, Any]
) -> None:
    args = server_args(
        plan, model_dir="/weights/m", served_model_name="m", dtype="float16",
        max_input_tokens=512, max_output_tokens=256, port=8000, gpus_per_node=8,
        role=role, kv_cache=KvCache(blocks=1000, block_size=16), **extra,
    )  # fmt: skip
    namespace, engine = _parse(args)
    c = plan.config
    tp, pp = (c.encode_tp, c.encode_stages) if role == "prefill" else (
        c.tensor_parallel, c.pipeline_stages)  # fmt: skip
    assert (engine.model, namespace.served_model_name) == ("/weights/m", ["m"])
    assert (engine.tensor_parallel_size, engine.pipeline_parallel_size) == (tp, pp)
    assert (engine.max_model_len, engine.block_size, engine.num_gpu_blocks_override) == (
        768, 16, 1000)  # fmt: skip
    assert engine.distributed_executor_backend == ("uni" if tp * pp == 1 else "mp")
    batch = c.encode_batch if c.strategy == "Static" or role == "prefill" else c.decode_batch
    if c.strategy == "RoundRobin":  # B_E per prefill step, through ceil(256 / N_D) of them
        batch = c.encode_batch * -(-256 // c.decode_steps_per_encode)
    assert engine.max_num_seqs == batch
    if c.strategy in ("RoundRobin", "Static"):
        assert engine.scheduler_cls == SCHEDULER_CLS
        section = engine.additional_config["exegpt"]
        assert section["mode"] == c.strategy
        assert section["encode_batch"] == c.encode_batch
        assert engine.enable_chunked_prefill is False and engine.async_scheduling is False
        assert engine.max_num_batched_tokens >= c.encode_batch * 512
    else:
        assert engine.scheduler_cls is None or "exegpt" not in str(engine.scheduler_cls)
    if role != "server":
        kv = engine.kv_transfer_config
        assert kv.kv_role == "kv_both" and kv.kv_connector == extra["kv_transfer"].connector
        assert kv.kv_connector_module_path == extra["kv_transfer"].module_path
        from vllm.distributed.kv_transfer.kv_connector.factory import KVConnectorFactory

        # the connector class vLLM will load: its own NIXL, or the runner's on the CPU
        cls = KVConnectorFactory.get_connector_class(kv)
        if kv.kv_connector_module_path is not None:
            assert (cls.__module__, cls.__name__) == (
                "exegpt.runner.vllm_kv_connector", "SharedDirectoryConnector")  # fmt: skip
            assert kv.get_from_extra_config("shared_storage_path", None) == "/kv"
    if label == "multinode":
        assert (engine.nnodes, engine.node_rank, engine.master_addr, engine.master_port) == (
            2, 0, "x-worker-0.x-stages", 29500)  # fmt: skip
        # the other node's command line: the same server, headless, its rank appended
        rest = server_args(
            plan, model_dir="/weights/m", served_model_name="m", dtype="float16",
            max_input_tokens=512, max_output_tokens=256, port=8000, gpus_per_node=8,
        )  # fmt: skip
        namespace, engine = _parse(
            [*rest, "--headless", "--node-rank", "1", "--master-addr", "x-worker-0.x-stages"]
        )
        assert namespace.headless
        assert (engine.nnodes, engine.node_rank, engine.master_addr) == (
            2, 1, "x-worker-0.x-stages")  # fmt: skip
        from vllm.config import ParallelConfig

        config = ParallelConfig(
            tensor_parallel_size=engine.tensor_parallel_size,
            pipeline_parallel_size=engine.pipeline_parallel_size,
            nnodes=engine.nnodes, node_rank=engine.node_rank, master_addr=engine.master_addr,
            distributed_executor_backend=engine.distributed_executor_backend,
        )  # fmt: skip
        # vLLM's layout: 8 consecutive ranks per node, one pipeline stage each
        assert (config.world_size, config.local_world_size, config.node_rank_within_dp) == (
            16, 8, 1)  # fmt: skip


def test_servers_the_operator_cannot_lay_over_nodes_are_refused() -> None:
    kwargs: dict[str, Any] = {
        "model_dir": "/m", "served_model_name": "m", "dtype": "float16",
        "max_input_tokens": 8, "max_output_tokens": 8, "port": 8000, "gpus_per_node": 8,
    }  # fmt: skip
    twelve = _plan("RoundRobin", tensor_parallel=4, pipeline_stages=3, micro_batches=3)
    with pytest.raises(ValueError, match="only as whole nodes"):
        server_args(twelve, **kwargs)
    one_node = _plan("RoundRobin", tensor_parallel=8)
    with pytest.raises(ValueError, match="one node"):
        server_args(one_node, master_addr="a", node_rank=0, **kwargs)


def test_additional_config_is_json() -> None:
    args = server_args(
        _plan("RoundRobin", encode_batch=2, decode_batch=8), model_dir="/m",
        served_model_name="m", dtype="float16", max_input_tokens=8, max_output_tokens=8,
        port=8000, gpus_per_node=8,
    )  # fmt: skip
    doc = json.loads(args[args.index("--additional-config") + 1])
    assert doc == {"exegpt": {"mode": "RoundRobin", "encode_batch": 2,
                              "decode_steps_per_encode": 1, "decode_batch": 16}}  # fmt: skip
