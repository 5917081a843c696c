"""What a strategy model provides: its analytic prediction and its discrete-event
run, both from the shared cost model (``costs.CostModel``) and the engine's model
(``engines.EngineModel``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..plan import ExecutionConfig, Prediction, Strategy
from ..querylog import FloatArray, QueryLog

if TYPE_CHECKING:
    from ..events import EventSimulator
    from ..simulator import Simulator


class StrategyModel(Protocol):
    """One execution strategy, in both simulator modes."""

    name: Strategy
    batch_field: str
    """The control variable a baseline of this strategy is searched along."""

    def shape_problem(self, sim: Simulator, config: ExecutionConfig) -> str:
        """Why ``config``'s shape cannot run under this strategy (empty if it can),
        beyond the checks every strategy shares."""
        ...

    def predict(self, sim: Simulator, config: ExecutionConfig) -> Prediction:
        """The analytic mode's expected-value prediction."""
        ...

    def simulate(
        self, sim: EventSimulator, config: ExecutionConfig, inputs: FloatArray, log: QueryLog
    ) -> None:
        """Run the queries of ``log`` (prompt lengths ``inputs``) through one replica,
        filling in when each is admitted and done."""
        ...
