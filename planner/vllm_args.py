"""The command lines of vLLM's OpenAI server that execute a plan (pure; no vLLM import).

One vLLM server runs each model replica (RoundRobin, Static, Continuous), or each prefill
instance and each decode instance of a WorkloadAware replica. A server larger than a node
spans ``nnodes`` whole nodes with vLLM's multiprocessing backend (no Ray): node rank 0
serves the API, the others run vLLM's headless workers (``serve --headless``) and meet it
at ``--master-addr``:``MASTER_PORT`` (docs/vllm.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from .engines import VLLM_MAX_NUM_BATCHED_TOKENS
from .plan import Plan
from .runnable import vllm_nodes, vllm_server_limitation
from .vllm_schedule import SCHEDULER_CLS, VllmSchedule
from .workerplan import WorkerPlan

Role = Literal["server", "prefill", "decode"]
"""``server``: a whole replica; ``prefill`` and ``decode``: the two instances of a
WorkloadAware replica."""

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
HEADLESS_MODULE = "vllm.entrypoints.cli.main"
"""Nodes other than rank 0 of a multi-node server: ``serve --headless``."""
MASTER_PORT = 29500
"""Where node rank 0 serves torch.distributed's store for the other nodes."""


@dataclass(frozen=True)
class KvCache:
    """The KV cache a server allocates: ``blocks`` of ``block_size`` tokens each (vLLM's
    ``--num-gpu-blocks-override`` and ``--block-size``)."""

    blocks: int
    block_size: int


SHARED_DIRECTORY_CONNECTOR = "SharedDirectoryConnector"
SHARED_DIRECTORY_CONNECTOR_MODULE = "exegpt.runner.vllm_kv_connector"
"""The CPU's KV connector: vLLM's ``ExampleConnector`` (a directory both instances share)
made to hand over every prompt token but the last, one-token prompts included
(docs/vllm.md)."""


@dataclass(frozen=True)
class KvTransfer:
    """The KV connector of a WorkloadAware instance: ``NixlConnector`` between GPUs, or
    on the CPU ``SharedDirectoryConnector`` (``shared_directory``) with a
    ``storage_path`` shared by both instances. ``module_path``: the module vLLM imports
    the connector from (vLLM's ``kv_connector_module_path``), None for vLLM's own."""

    connector: str = "NixlConnector"
    storage_path: str | None = None
    module_path: str | None = None

    @classmethod
    def shared_directory(cls, storage_path: str) -> KvTransfer:
        """The CPU's connector over ``storage_path``."""
        return cls(SHARED_DIRECTORY_CONNECTOR, storage_path, SHARED_DIRECTORY_CONNECTOR_MODULE)

    def config(self) -> str:
        doc: dict[str, object] = {"kv_connector": self.connector, "kv_role": "kv_both"}
        if self.storage_path is not None:
            doc["kv_connector_extra_config"] = {"shared_storage_path": self.storage_path}
        if self.module_path is not None:
            doc["kv_connector_module_path"] = self.module_path
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class ServerShape:
    """What one vLLM server of a plan runs: parallelism, batch caps and schedule."""

    tensor_parallel: int
    pipeline_stages: int
    max_num_seqs: int
    schedule: VllmSchedule | None
    """None: stock vLLM (no ExeGPT scheduler)."""

    @property
    def gpus(self) -> int:
        return self.tensor_parallel * self.pipeline_stages


def server_shape(
    plan: Plan | WorkerPlan, max_output_tokens: int, role: Role = "server"
) -> ServerShape:
    """The server of ``role`` that executes ``plan`` (a plan for vLLM) for outputs of at
    most ``max_output_tokens``."""
    if plan.engine != "vLLM":
        raise ValueError(f"the plan is for the {plan.engine} engine, not vLLM")
    c = plan.config
    if c.strategy == "WorkloadAware":
        if role == "prefill":
            return ServerShape(c.encode_tp, c.encode_stages, c.encode_batch, None)
        if role == "decode":
            return ServerShape(c.tensor_parallel, c.pipeline_stages, c.decode_batch, None)
        raise ValueError("a WorkloadAware plan runs 'prefill' and 'decode' servers")
    if role != "server":
        raise ValueError(f"a {c.strategy} plan runs 'server' servers, not {role!r}")
    if c.strategy == "Continuous":
        return ServerShape(c.tensor_parallel, c.pipeline_stages, c.decode_batch, None)
    schedule = VllmSchedule.from_config(c, max_output_tokens)
    return ServerShape(c.tensor_parallel, c.pipeline_stages, schedule.decode_batch, schedule)


def nodes(shape: ServerShape, gpus_per_node: int) -> int:
    """Nodes (pods) one server spans; a server the operator cannot lay out over nodes
    (``runnable.vllm_server_limitation``) is refused."""
    reason = vllm_server_limitation("server", shape.gpus, shape.tensor_parallel, gpus_per_node)
    if reason:
        raise ValueError(reason)
    return vllm_nodes(shape.gpus, gpus_per_node)


def executor_backend(gpus: int) -> str:
    """vLLM's executor for a server of ``gpus`` workers: ``uni`` (the worker in the
    engine core's process, vLLM's own choice for one) for one, else ``mp`` (a process
    per worker, on one node or across nodes; never Ray)."""
    return "uni" if gpus == 1 else "mp"


def server_args(
    plan: Plan | WorkerPlan,
    *,
    model_dir: str,
    served_model_name: str,
    dtype: str,
    max_input_tokens: int,
    max_output_tokens: int,
    port: int,
    gpus_per_node: int,
    role: Role = "server",
    kv_cache: KvCache | None = None,
    kv_transfer: KvTransfer | None = None,
    master_addr: str | None = None,
    node_rank: int | None = None,
) -> list[str]:
    """vLLM's arguments (after the module) for one server of ``plan``.

    ``max_num_seqs`` is the plan's batch cap; ``max_model_len`` the longest input plus
    output; ``max_num_batched_tokens`` fits the encode batch's longest prompts and the
    decode batch in one step, so an encode batch is never chunked (Continuous keeps vLLM's
    chunked prefill and its default budget). A server over several nodes gets
    ``--nnodes`` and ``--master-port``, and ``--node-rank`` and ``--master-addr`` (the
    address of node rank 0) when given: both or neither (a pod that learns its rank
    when it starts appends them itself).
    """
    shape = server_shape(plan, max_output_tokens, role)
    max_model_len = max_input_tokens + max_output_tokens
    args = [
        "--model", model_dir,
        "--served-model-name", served_model_name,
        "--dtype", dtype,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--tensor-parallel-size", str(shape.tensor_parallel),
        "--pipeline-parallel-size", str(shape.pipeline_stages),
        "--distributed-executor-backend", executor_backend(shape.gpus),
        "--max-model-len", str(max_model_len),
        "--max-num-seqs", str(shape.max_num_seqs),
    ]  # fmt: skip
    schedule = shape.schedule
    if schedule is None:
        budget = max(VLLM_MAX_NUM_BATCHED_TOKENS, shape.max_num_seqs)
        args += ["--max-num-batched-tokens", str(budget)]
    else:
        budget = max(
            max_model_len,
            schedule.encode_batch * max_input_tokens + schedule.decode_batch,
        )
        args += [
            "--max-num-batched-tokens", str(budget),
            "--no-enable-chunked-prefill",
            "--no-async-scheduling",
            "--scheduler-cls", SCHEDULER_CLS,
            "--additional-config", json.dumps(schedule.additional_config(), sort_keys=True),
        ]  # fmt: skip
    if kv_cache is not None:
        args += [
            "--block-size", str(kv_cache.block_size),
            "--num-gpu-blocks-override", str(kv_cache.blocks),
        ]  # fmt: skip
    if (role == "server") != (kv_transfer is None):
        raise ValueError("prefill and decode servers, and only they, take a kv_transfer")
    if kv_transfer is not None:
        args += ["--kv-transfer-config", kv_transfer.config()]
    count = nodes(shape, gpus_per_node)
    if (master_addr is None) != (node_rank is None):
        raise ValueError("give master_addr and node_rank together")
    if count > 1:
        args += ["--nnodes", str(count), "--master-port", str(MASTER_PORT)]
        if master_addr is not None and node_rank is not None:
            if not 0 <= node_rank < count:
                raise ValueError(f"node rank {node_rank} of a server over {count} nodes")
            args += ["--node-rank", str(node_rank), "--master-addr", master_addr]
    elif master_addr is not None:
        raise ValueError("a server on one node has no master_addr")
    return args
