"""The execution strategies, one small class each, in a registry: the simulator's
analytic and discrete-event modes and the scheduler look a strategy up here instead
of branching on its name."""

from __future__ import annotations

from ..plan import Strategy
from .base import StrategyModel
from .continuous import Continuous
from .round_robin import RoundRobin
from .static import Static
from .workload_aware import WorkloadAware

STRATEGIES: dict[Strategy, StrategyModel] = {
    s.name: s for s in (RoundRobin(), WorkloadAware(), Static(), Continuous())
}


def strategy_model(name: Strategy) -> StrategyModel:
    """The model of strategy ``name``."""
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f"unknown strategy {name!r}; known: {known}") from None


__all__ = ["STRATEGIES", "StrategyModel", "strategy_model"]
