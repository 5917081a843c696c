"""The ExeGPT schedule inside vLLM: a V1 ``Scheduler`` subclass that vLLM loads through its
``scheduler_cls`` setting (``--scheduler-cls exegpt.runner.vllm_scheduler.ExeGPTScheduler``)
and that reads its settings from vLLM's ``additional_config`` (docs/vllm.md).

vLLM's scheduler admits waiting requests into the running set until the running set holds
``max_num_active_reqs`` requests. This class decides, before each step, how many it may
admit on this step, and otherwise leaves vLLM's scheduling (token budget, KV blocks,
preemption, chunked prefill) as it is.

With ``pipeline_parallel_size`` P above 1, vLLM keeps P batches in flight and calls the
scheduler once for each: a call schedules the running requests whose last token has come
back, and the others wait in the pipeline. A decode iteration (every running request one
token further) is then P calls, and the plan's ``N_D`` counts iterations, so a prefill
step comes once ``N_D`` x P calls have passed (counting calls, the engine started
prefills P times as often as planned: a RoundRobin plan of B_E 1, N_D 20 on two stages
ran a prefill every 12.7 steps, and served 1.55x the planned decode batch). Requests
admitted on a call travel with that call's batch for as long as they run, so an
admission that falls due waits (at most P - 1 calls) for a call whose batch is no larger
than the mean of those in flight: the micro-batches stay balanced, as the plan's
pipeline prices them, instead of every admission joining the same one.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

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
        self._calls_per_iteration = self.vllm_config.max_concurrent_batches
        """Scheduler calls per decode iteration: one per batch in flight (the PP size)."""
        self._steps_since_prefill = 0
        """Scheduler calls since prefills last started (RoundRobin's N_D cadence)."""

    def admission_limit(self) -> int:
        """How many requests may be running after this step's admissions."""
        plan = self.exegpt_schedule
        running = len(self.running)
        if plan.mode == "Continuous":
            return self._stock_limit
        if plan.mode == "Static":
            return min(plan.encode_batch, self._stock_limit) if running == 0 else running
        due = self._steps_since_prefill >= plan.decode_steps_per_encode * self._calls_per_iteration
        if running == 0 or (due and self._batch_is_no_larger()):
            return min(running + plan.encode_batch, plan.decode_batch, self._stock_limit)
        return running

    def _batch_is_no_larger(self) -> bool:
        """Whether this call's batch (the running requests whose last token is back) is
        no larger than the mean of the batches in flight (one engine in flight: always)."""
        others = self._calls_per_iteration - 1
        if others == 0:
            return True
        ready = sum(1 for r in self.running if waits_for_a_step(r))
        return ready * others <= len(self.running) - ready

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


def waits_for_a_step(request: Request) -> bool:
    """Whether ``request`` has tokens to schedule: false while its last step is in
    flight (vLLM's own test for it)."""
    pending = request.num_tokens_with_spec + request.num_output_placeholders
    return pending > request.num_computed_tokens
