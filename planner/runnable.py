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


def vllm_deployment_limitation(config: ExecutionConfig, gpus_per_node: int) -> str:
    """Why the operator does not deploy ``config`` on vLLM yet (empty if it does): it runs
    each vLLM server in one pod, so a server (a replica, or WorkloadAware's prefill or
    decode instance) must fit on one node (docs/vllm.md)."""
    if config.strategy == "WorkloadAware":
        for role, gpus in (("prefill", config.encode_gpus), ("decode", config.decode_gpus)):
            if gpus > gpus_per_node:
                return (
                    f"the operator runs each vLLM server in one pod: a {role} instance of "
                    f"{gpus} GPUs does not fit on a node of {gpus_per_node}"
                )
        return ""
    if config.gpus_per_replica > gpus_per_node:
        return (
            f"the operator runs each vLLM server in one pod: a replica of "
            f"{config.gpus_per_replica} GPUs does not fit on a node of {gpus_per_node}"
        )
    return ""
