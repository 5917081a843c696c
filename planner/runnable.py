"""Which configurations each engine executes, the XRunner workers (``ExeGPT``) and vLLM:
the search leaves out the others when a plan is meant to be deployed
(``PlanRequest.executable_only``), and the workers refuse them with the same reason."""

from __future__ import annotations

from .architecture import Architecture
from .plan import Engine, ExecutionConfig


def worker_limitation(config: ExecutionConfig, architecture: Architecture) -> str:
    """Why the workers cannot run ``config`` for ``architecture`` (empty if they can).

    Encoder-decoder models run on one pipeline stage, with tensor parallelism for
    both phases, under RoundRobin, Static or Continuous."""
    if not architecture.encoder_decoder:
        return ""
    if config.strategy == "WorkloadAware":
        return "WorkloadAware plans of encoder-decoder models are not run by the workers yet"
    if config.pipeline_stages > 1:
        return "pipelines of encoder-decoder models are not run by the workers yet"
    if config.tp_scope != "all" and config.tensor_parallel > 1:
        return (
            f"partial tensor parallelism (tp_scope {config.tp_scope!r}) of encoder-decoder "
            "models is not run by the workers yet"
        )
    return ""


def vllm_limitation(config: ExecutionConfig, architecture: Architecture) -> str:
    """Why vLLM cannot run ``config`` for ``architecture`` (empty if it can).

    vLLM runs decoder-only models; one tensor-parallel degree for both phases (no partial
    tensor parallelism); a tensor-parallel degree that divides the attention heads; and a
    pipeline that keeps one batch per stage in flight (``micro_batches`` 1 on one stage,
    equal to the stage count on several). WorkloadAware runs as prefill and decode
    instances joined by a KV connector (docs/vllm.md)."""
    if architecture.encoder_decoder:
        return f"vLLM does not run encoder-decoder models ({architecture.name})"
    tps = [config.tensor_parallel] + (
        [config.encode_tp] if config.strategy == "WorkloadAware" else []
    )
    if config.tp_scope != "all" and config.tensor_parallel > 1:
        return f"vLLM has no partial tensor parallelism (tp_scope {config.tp_scope!r})"
    for tp in tps:
        if architecture.num_heads % tp != 0:
            return (
                f"vLLM needs the tensor-parallel degree ({tp}) to divide the "
                f"{architecture.num_heads} attention heads"
            )
    if config.micro_batches not in (1, config.pipeline_stages):
        return (
            f"vLLM keeps one batch per pipeline stage in flight: micro_batches must be "
            f"{config.pipeline_stages}, not {config.micro_batches}"
        )
    return ""


def engine_limitation(engine: Engine, config: ExecutionConfig, architecture: Architecture) -> str:
    """Why ``engine`` cannot run ``config`` for ``architecture`` (empty if it can)."""
    if engine == "vLLM":
        return vllm_limitation(config, architecture)
    return worker_limitation(config, architecture)


def vllm_runs_model(architecture: Architecture) -> bool:
    """Whether vLLM runs ``architecture`` at all (decoder-only models)."""
    return not architecture.encoder_decoder


def vllm_nodes(gpus: int, gpus_per_node: int) -> int:
    """Nodes (pods) a vLLM server of ``gpus`` GPUs spans: one when it fits on a node,
    otherwise whole nodes (what ``vllm_server_limitation`` admits)."""
    return 1 if gpus <= gpus_per_node else gpus // gpus_per_node


def vllm_server_limitation(what: str, gpus: int, tensor_parallel: int, gpus_per_node: int) -> str:
    """Why the operator does not run a vLLM server (``what``: a replica, a prefill or a
    decode instance) of ``gpus`` GPUs in groups of ``tensor_parallel`` on nodes of
    ``gpus_per_node`` GPUs (empty if it does).

    A server that fits on a node runs in one pod. A larger one runs over ``nnodes`` pods
    with vLLM's multiprocessing backend (``--nnodes``, ``--node-rank``,
    ``--master-addr``): vLLM requires ``nnodes`` to divide the world size and places
    ``world_size / nnodes`` consecutive ranks on each node, tensor parallelism innermost
    (rank = stage x TP + TP rank). The operator spans whole nodes (each pod takes every
    GPU of its node, so the pods of the plan fill the nodes it was priced on), and the
    planner prices tensor parallelism inside one node, so a node's GPUs must hold whole
    tensor-parallel groups: a server spanning nodes is split between pipeline stages.
    vLLM itself would also run a tensor-parallel group split across nodes, or a node
    partly used; neither is what the plan priced, so neither is deployed."""
    if gpus <= gpus_per_node:
        return ""
    if gpus % gpus_per_node != 0:
        return (
            f"a vLLM {what} of {gpus} GPUs spans nodes of {gpus_per_node} GPUs only as "
            "whole nodes (each pod of a multi-node server takes all its node's GPUs)"
        )
    if gpus_per_node % tensor_parallel != 0:
        return (
            f"a vLLM {what} over nodes of {gpus_per_node} GPUs would split its "
            f"tensor-parallel groups of {tensor_parallel} between nodes (vLLM puts "
            f"{gpus_per_node} consecutive ranks on each node); the plan prices tensor "
            "parallelism inside a node"
        )
    return ""


def vllm_deployment_limitation(config: ExecutionConfig, gpus_per_node: int) -> str:
    """Why the operator does not deploy ``config`` on vLLM (empty if it does): each vLLM
    server (a replica, or WorkloadAware's prefill or decode instance) fits on a node, or
    spans whole nodes split between pipeline stages (``vllm_server_limitation``,
    docs/vllm.md)."""
    if config.strategy == "WorkloadAware":
        return vllm_server_limitation(
            "prefill instance", config.encode_gpus, config.encode_tp, gpus_per_node
        ) or vllm_server_limitation(
            "decode instance", config.decode_gpus, config.tensor_parallel, gpus_per_node
        )
    return vllm_server_limitation(
        "replica", config.gpus_per_replica, config.tensor_parallel, gpus_per_node
    )
