"""The ExeGPT schedule as vLLM's scheduler reads it: the settings the operator writes into
vLLM's ``--additional-config`` (under the key ``exegpt``) and the runner's
``ExeGPTScheduler`` reads back in vLLM's engine-core process (docs/vllm.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .plan import ExecutionConfig

ScheduleMode = Literal["RoundRobin", "Static", "Continuous"]

ADDITIONAL_CONFIG_KEY = "exegpt"
"""The key of vLLM's ``additional_config`` that holds the schedule."""
SCHEDULER_CLS = "exegpt.runner.vllm_scheduler.ExeGPTScheduler"
"""The class vLLM loads through its ``scheduler_cls`` setting."""


class VllmSchedule(BaseModel):
    """How vLLM's scheduler admits requests.

    - ``RoundRobin``: at most ``encode_batch`` waiting requests start their prefill on a
      prefill step; a prefill step comes once ``decode_steps_per_encode`` engine steps have
      passed since the last one (or at once when nothing runs); the running batch never
      exceeds ``decode_batch``.
    - ``Static``: up to ``encode_batch`` requests are admitted together, only when nothing
      runs; the batch runs until its longest output ends.
    - ``Continuous``: stock vLLM (its ``max_num_seqs`` and ``max_num_batched_tokens``).

    Whether a prompt's prefill may be split into chunks is vLLM's own
    ``enable_chunked_prefill`` setting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ScheduleMode
    encode_batch: int = Field(default=1, ge=1, description="B_E: prefills started per step")
    decode_steps_per_encode: int = Field(
        default=1, ge=1, description="N_D: engine steps between prefill steps"
    )
    decode_batch: int = Field(default=1, ge=1, description="B_D: cap on running requests")

    def additional_config(self) -> dict[str, Any]:
        """The JSON object for vLLM's ``--additional-config``."""
        return {ADDITIONAL_CONFIG_KEY: self.model_dump()}

    @classmethod
    def from_additional_config(cls, additional_config: object) -> VllmSchedule:
        """The schedule in vLLM's ``additional_config``; a clear error when it is absent
        or malformed."""
        section = (
            additional_config.get(ADDITIONAL_CONFIG_KEY)
            if isinstance(additional_config, dict)
            else None
        )
        if section is None:
            raise ValueError(
                f"vLLM's additional_config has no '{ADDITIONAL_CONFIG_KEY}' section: pass "
                f'--additional-config \'{{"{ADDITIONAL_CONFIG_KEY}": {{"mode": "RoundRobin", '
                '"encode_batch": ..., "decode_steps_per_encode": ..., "decode_batch": ...}}\''
            )
        try:
            return cls.model_validate(section)
        except ValidationError as e:
            raise ValueError(
                f"vLLM's additional_config['{ADDITIONAL_CONFIG_KEY}'] is not a valid schedule: {e}"
            ) from e

    @classmethod
    def from_config(cls, config: ExecutionConfig, max_output_tokens: int) -> VllmSchedule:
        """The schedule that executes ``config``, a RoundRobin, Static or Continuous
        configuration (a WorkloadAware one runs as prefill and decode instances).

        A RoundRobin plan's decode batch is not a control variable: it is what B_E
        queries every N_D steps add up to. Its cap is the most that can be running: a
        query of at most ``max_output_tokens`` tokens lives for at most
        ``ceil(max_output_tokens / N_D)`` prefill steps, each of which starts B_E."""
        if config.strategy == "WorkloadAware":
            raise ValueError(
                "a WorkloadAware configuration runs as prefill and decode instances, "
                "each with the stock (Continuous) schedule"
            )
        return cls(
            mode=config.strategy,
            encode_batch=config.encode_batch,
            decode_steps_per_encode=config.decode_steps_per_encode,
            decode_batch=_decode_cap(config, max_output_tokens),
        )


def _decode_cap(config: ExecutionConfig, max_output_tokens: int) -> int:
    if max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be at least 1, not {max_output_tokens}")
    if config.strategy == "RoundRobin":
        cycles = -(-max_output_tokens // config.decode_steps_per_encode)
        return config.encode_batch * cycles
    if config.strategy == "Static":
        return config.encode_batch
    return config.decode_batch
