"""Which configurations the XRunner workers execute: the search leaves out the others
when a plan is meant to be deployed (``PlanRequest.executable_only``), and the workers
refuse them with the same reason."""

from __future__ import annotations

from .architecture import Architecture
from .plan import ExecutionConfig


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
