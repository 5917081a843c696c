"""The ExeGPT schedule inside vLLM: a V1 ``Scheduler`` subclass that vLLM loads through its
``scheduler_cls`` setting (``--scheduler-cls exegpt.runner.vllm_scheduler.ExeGPTScheduler``)
and that reads its settings from vLLM's ``additional_config`` (docs/vllm.md).

vLLM's scheduler admits waiting requests into the running set until the running set holds
``max_num_active_reqs`` requests. This class decides, before each step, how many it may
admit on this step, and otherwise leaves vLLM's scheduling (token budget, KV blocks,
preemption, chunked prefill) as it is.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler

from exegpt.planner.vllm_schedule import VllmSchedule


class ExeGPTScheduler(Scheduler):
    """vLLM's scheduler under an ExeGPT schedule (``VllmSchedule``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exegpt_schedule = VllmSchedule.from_additional_config(
            self.vllm_config.additional_config
        )
        sync = not self.vllm_config.scheduler_config.async_scheduling
        if self.exegpt_schedule.mode != "Continuous" and not sync:
            raise ValueError(
                "the ExeGPT schedule counts executed engine steps and needs synchronous "
                "scheduling: pass --no-async-scheduling"
            )
        self._stock_limit = self.max_num_active_reqs
        self._steps_since_prefill = 0
        """Engine steps since prefills last started (RoundRobin's N_D cadence)."""

    def admission_limit(self) -> int:
        """How many requests may be running after this step's admissions."""
        plan = self.exegpt_schedule
        running = len(self.running)
        if plan.mode == "Continuous":
            return self._stock_limit
        if plan.mode == "Static":
            return min(plan.encode_batch, self._stock_limit) if running == 0 else running
        if running == 0 or self._steps_since_prefill >= plan.decode_steps_per_encode:
            return min(running + plan.encode_batch, plan.decode_batch, self._stock_limit)
        return running

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        limit = self.admission_limit()
        prefill_step = limit > len(self.running)
        self.max_num_active_reqs = limit
        try:
            # Off a prefill step, vLLM also holds back the next chunk of a chunked
            # prefill that is under way, while decodes run.
            output = super().schedule(throttle_prefills=throttle_prefills or not prefill_step)
        finally:
            self.max_num_active_reqs = self._stock_limit
        # The cadence restarts when prefills started, not merely could have: a request
        # that arrives after an idle prefill step may start on the next step.
        started = bool(output.scheduled_new_reqs)
        self._steps_since_prefill = 1 if started else self._steps_since_prefill + 1
        return output
