"""One rendering of an execution configuration: the line the CLI's table, the
deployment's status and conditions and the docs show."""

from __future__ import annotations

from .plan import ExecutionConfig, Prediction


def config_summary(config: ExecutionConfig, predicted: Prediction | None = None) -> str:
    """A one-line description of a configuration's control variables.

    RoundRobin's decode batch is not a control variable but the steady batch that
    ``B_E`` and ``N_D`` produce; it is shown (as ``B_D~n``) when ``predicted`` is given.
    """
    c = config
    parts: list[str] = []
    if c.strategy == "WorkloadAware":
        parts.append(
            f"encode {c.encode_gpus} (PP{c.encode_stages} x TP{c.encode_tp}) / "
            f"decode {c.decode_gpus} (PP{c.pipeline_stages} x TP{c.tensor_parallel})"
        )
        parts.append(f"B_E={c.encode_batch} B_D={c.decode_batch}")
    else:
        tp = f"TP{c.tensor_parallel}"
        if c.tensor_parallel > 1 and c.tp_scope != "all":
            tp += f"({c.tp_scope})"
        parts.append(f"{tp} x PP{c.pipeline_stages}")
        if c.strategy == "RoundRobin":
            steady = f" B_D~{predicted.decode_batch:.0f}" if predicted is not None else ""
            parts.append(f"B_E={c.encode_batch}{steady} N_D={c.decode_steps_per_encode}")
        elif c.strategy == "Static":
            parts.append(f"batch={c.encode_batch}")
        else:
            parts.append(f"max batch={c.decode_batch}")
    if c.micro_batches > 1:
        parts.append(f"mb={c.micro_batches}")
    if c.replicas > 1:
        parts.append(f"x{c.replicas} replicas")
    return ", ".join(parts)


def plan_summary(config: ExecutionConfig, predicted: Prediction) -> str:
    """The strategy, :func:`config_summary` and the predicted throughput and latency:
    ``RoundRobin: TP2 x PP1, B_E=8 B_D~61 N_D=4: 12.34 queries/s at 1.20 s``."""
    return (
        f"{config.strategy}: {config_summary(config, predicted)}: "
        f"{predicted.throughput_qps:.2f} queries/s at {predicted.latency_s:.2f} s"
    )
