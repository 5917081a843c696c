"""XScheduler: the configuration with the highest throughput whose latency meets the
bound and whose memory fits.

The space, per strategy, is discretised (``BATCH_GRID``, ``STEPS_GRID``, the TP
degrees the profile has, pipeline depths that divide the GPU budget). The search uses
the near-monotonicity the paper reports:

* For a fixed *shape* (TP degree and scope, stages, micro-batches, GPU split) and a
  fixed ``N_D`` (RoundRobin) or ``B_E`` (WorkloadAware), latency, memory and
  throughput all grow with the remaining batch size, so a binary search finds the
  largest batch meeting the bound, which is the best point of that line.
* Each shape has a cheap upper bound on its throughput (the steady decode batch that
  memory and the bound allow, with encoding free); shapes are visited best bound
  first and skipped once their bound cannot beat the best plan found (branch and
  bound).

``exhaustive=True`` evaluates every point of the same discretised space, for
verification. The search is deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .costs import Group
from .plan import (
    Candidate,
    ExecutionConfig,
    Infeasible,
    Plan,
    PlanRequest,
    PlanResult,
    Prediction,
    SearchStats,
    Strategy,
)
from .profile import Profile
from .runnable import vllm_runs_model
from .simulator import Simulator
from .strategies import strategy_model

BATCH_GRID: tuple[int, ...] = (
    1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024,
)  # fmt: skip
STEPS_GRID: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64)
STAGE_CHOICES: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class SearchTimeout(Exception):
    pass


@dataclass
class _Search:
    sim: Simulator
    bound: float | None
    exhaustive: bool
    deadline: float | None
    wanted: tuple[Strategy, ...] = ("RoundRobin", "WorkloadAware")
    evaluated: int = 0
    pruned: int = 0
    space: int = 0
    truncated: bool = False
    best_latency: float | None = None
    best_latency_candidate: Candidate | None = None
    # best feasible candidate per shape key, per strategy
    found: dict[Strategy, dict[tuple[object, ...], Candidate]] = field(default_factory=dict)

    def evaluate(self, config: ExecutionConfig) -> Prediction:
        if (
            self.deadline is not None
            and self.evaluated % 64 == 0
            and time.monotonic() > self.deadline
        ):
            raise SearchTimeout
        self.evaluated += 1
        p = self.sim.evaluate(config)
        if (
            p.feasible
            and p.throughput_qps > 0
            and config.strategy in self.wanted
            and (self.best_latency is None or p.latency_s < self.best_latency)
        ):
            self.best_latency = p.latency_s
            self.best_latency_candidate = Candidate(config=config, predicted=p)
        return p

    def meets(self, p: Prediction) -> bool:
        return p.feasible and (self.bound is None or p.latency_s <= self.bound)

    def record(self, shape: tuple[object, ...], config: ExecutionConfig, p: Prediction) -> None:
        if not self.meets(p):
            return
        per = self.found.setdefault(config.strategy, {})
        old = per.get(shape)
        if old is None or _better(p, old.predicted):
            per[shape] = Candidate(config=config, predicted=p)

    def best(self, strategy: Strategy) -> Candidate | None:
        cands = list(self.found.get(strategy, {}).values())
        return max(cands, key=_rank) if cands else None

    def best_qps(self, strategies: tuple[Strategy, ...]) -> float:
        best = 0.0
        for s in strategies:
            c = self.best(s)
            if c is not None:
                best = max(best, c.predicted.throughput_qps)
        return best

    def line(
        self,
        shape: tuple[object, ...],
        make: Callable[[int], ExecutionConfig],
        grid: tuple[int, ...],
    ) -> Candidate | None:
        """Best point of one monotone line: the largest grid value that meets the bound
        (binary search), or every point in exhaustive mode."""
        if self.exhaustive:
            best: Candidate | None = None
            for v in grid:
                cfg = make(v)
                p = self.evaluate(cfg)
                self.record(shape, cfg, p)
                if self.meets(p) and (best is None or _better(p, best.predicted)):
                    best = Candidate(config=cfg, predicted=p)
            return best
        lo, hi = 0, len(grid) - 1
        cfg = make(grid[lo])
        p = self.evaluate(cfg)
        if not self.meets(p):
            return None
        best = Candidate(config=cfg, predicted=p)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            cfg = make(grid[mid])
            p = self.evaluate(cfg)
            if self.meets(p):
                lo = mid
                best = Candidate(config=cfg, predicted=p)
            else:
                hi = mid - 1
        # Throughput can plateau (e.g. WorkloadAware decoders capped by the encoders):
        # take the smallest batch that reaches the best throughput, which needs less
        # memory, by a second binary search below the largest feasible point.
        target = best.predicted.throughput_qps * (1 - 1e-9)
        low, high = 0, lo
        while low < high:
            # Probe just below the top first: throughput usually still rises there.
            mid = high - 1 if high == lo else (low + high) // 2
            cfg = make(grid[mid])
            p = self.evaluate(cfg)
            if self.meets(p) and p.throughput_qps >= target:
                high = mid
                best = Candidate(config=cfg, predicted=p)
            elif high == lo:
                break
            else:
                low = mid + 1
        self.record(shape, best.config, best.predicted)
        return best


def _rank(c: Candidate) -> tuple[float, float, int]:
    p = c.predicted
    return (p.throughput_qps, -p.latency_s, -p.memory_per_gpu_bytes)


def _better(a: Prediction, b: Prediction) -> bool:
    """Higher throughput; then lower latency; then less memory."""
    return (a.throughput_qps, -a.latency_s, -a.memory_per_gpu_bytes) > (
        b.throughput_qps,
        -b.latency_s,
        -b.memory_per_gpu_bytes,
    )


# -- shapes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pipe:
    tp: int
    stages: int
    replicas: int


def _pipes(sim: Simulator, gpus: int) -> Iterator[_Pipe]:
    """Pipelines of ``stages`` x ``tp`` GPUs that tile the budget exactly."""
    layers = sim.costs.arch.decode_layers
    for tp in sorted(sim.tp_degrees):
        if tp > sim.request.gpus_per_node or gpus % tp:
            continue
        for s in STAGE_CHOICES:
            if s > layers or s * tp > gpus or gpus % (s * tp):
                continue
            yield _Pipe(tp, s, gpus // (s * tp))


def _micro_choices(stages: int) -> tuple[int, ...]:
    return (1,) if stages == 1 else (stages, 2 * stages)


def _memory_batch_limit(sim: Simulator, fits: Callable[[float], bool]) -> float:
    """Largest batch (continuous) for which ``fits`` holds; 0 if none."""
    if not fits(1.0):
        return 0.0
    lo, hi = 1.0, 2.0
    while fits(hi) and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(30):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


BASELINES: tuple[Strategy, ...] = ("Static", "Continuous")
"""The baselines, candidates of an Auto search beside the ExeGPT strategies."""
UB_MARGIN = 1.02  # slack for small non-monotonicities of interpolated profiles


def _decode_time_per_query(
    sim: Simulator, dec: Group, mem_group: Group, micro: int, bound: float | None, phase: str
) -> float:
    """A lower bound on the decode time each query costs a decode group: its largest
    steady batch that memory and the bound allow, with no encoding in the way."""
    k, m = sim.costs, sim.m
    fixed = k.weights_per_gpu(mem_group, phase)

    def fits_memory(b: float) -> bool:
        return fixed + k.kv_per_gpu(dec, sim._kv_tokens(b)) <= sim.capacity

    b = _memory_batch_limit(sim, fits_memory)
    if b <= 0:
        return float("inf")
    if bound is not None:

        def fits_bound(x: float) -> bool:
            return m.steps_p99 * k.iteration(dec, x, m.mean_context, micro) <= bound

        if not fits_bound(1.0):
            return float("inf")
        lo, hi = 1.0, b
        if not fits_bound(hi):
            for _ in range(20):
                mid = (lo + hi) / 2
                if fits_bound(mid):
                    lo = mid
                else:
                    hi = mid
            b = lo
    return m.mean_steps * k.iteration(dec, b, m.mean_context, micro) / b


def _encode_time_per_query(
    sim: Simulator,
    enc: Group,
    mem_group: Group,
    bound: float | None,
    phase: str,
    kv_copies: float,
) -> float:
    """A lower bound on the encoding time each query costs: the per-query stage time of
    the largest encode batch that memory and the bound allow."""
    k, m = sim.costs, sim.m
    fixed = k.weights_per_gpu(mem_group, phase)
    for b in reversed(BATCH_GRID):
        tokens = b * m.mean_input
        kv_phase = "encode" if phase == "encode" else "decode"
        memory = (
            fixed
            # at most what any engine reserves (the own engine: a slot per query)
            + k.kv_per_gpu(enc, min(kv_copies * tokens, b * m.max_input), kv_phase)
            + k.activations_per_gpu(enc, tokens)
        )
        if memory > sim.capacity:
            continue
        if bound is not None and k.encode_latency(enc, b, m.mean_input) > bound:
            continue
        return k.encode_stage(enc, b, m.mean_input) / b
    return float("inf")


def _round_robin_upper_bound(sim: Simulator, base: ExecutionConfig, bound: float | None) -> float:
    """Queries/s a RoundRobin shape cannot exceed: every query costs at least its
    share of decoding plus its share of encoding, each at its most efficient batch."""
    enc, dec, mem = sim.round_robin_groups(base)
    per_query = _decode_time_per_query(
        sim, dec, mem, base.micro_batches, bound, "both"
    ) + _encode_time_per_query(sim, enc, mem, bound, "both", 1.0)
    return base.replicas * UB_MARGIN / per_query if per_query > 0 else float("inf")


def _workload_aware_upper_bound(
    sim: Simulator, base: ExecutionConfig, bound: float | None
) -> float:
    """Queries/s a WorkloadAware split cannot exceed: the slower of its decoders and
    its encoders, each at its most efficient batch."""
    enc, dec = sim.workload_aware_groups(base)
    decode = _decode_time_per_query(sim, dec, dec, base.micro_batches, bound, "decode")
    decode += sim.handover  # each query's hand-over, whatever the batch
    encode = _encode_time_per_query(sim, enc, enc, bound, "encode", 2.0)
    slowest = max(decode, encode)
    return base.replicas * UB_MARGIN / slowest if slowest > 0 else float("inf")


def _round_robin(search: _Search, gpus: int) -> list[tuple[float, ExecutionConfig]]:
    """RoundRobin shapes with their throughput upper bounds."""
    sim = search.sim
    shapes: list[tuple[float, ExecutionConfig]] = []
    for pipe in _pipes(sim, gpus):
        scopes = ("all",) if pipe.tp == 1 else ("all", "encode", "decode")
        for scope in scopes:
            for micro in _micro_choices(pipe.stages):
                base = ExecutionConfig(
                    strategy="RoundRobin",
                    replicas=pipe.replicas,
                    tensor_parallel=pipe.tp,
                    tp_scope=scope,
                    pipeline_stages=pipe.stages,
                    micro_batches=micro,
                )
                shapes.append((_round_robin_upper_bound(sim, base, search.bound), base))
                search.space += len(STEPS_GRID) * len(BATCH_GRID)
    return shapes


def _round_robin_shape(search: _Search, base: ExecutionConfig) -> None:
    shape = _shape_key(base)
    for n_d in STEPS_GRID:
        search.line(
            shape,
            _vary(base, "encode_batch", decode_steps_per_encode=n_d),
            BATCH_GRID,
        )


def _workload_aware(search: _Search, gpus: int) -> list[tuple[float, ExecutionConfig]]:
    """WorkloadAware shapes (GPU splits) with their throughput upper bounds."""
    sim = search.sim
    shapes: list[tuple[float, ExecutionConfig]] = []
    arch = sim.costs.arch
    node = sim.request.gpus_per_node
    tps = [t for t in sorted(sim.tp_degrees) if t <= node]
    for n in range(2, gpus + 1):
        if gpus % n:
            continue
        replicas = gpus // n
        for e_tp in tps:
            for e_s in STAGE_CHOICES:
                e = e_tp * e_s
                if e >= n or e_s > arch.encode_layers:
                    continue
                d = n - e
                for d_tp in tps:
                    if d % d_tp or d // d_tp > arch.decode_layers:
                        continue
                    d_s = d // d_tp
                    if d_s not in STAGE_CHOICES:
                        continue
                    for micro in _micro_choices(d_s):
                        base = ExecutionConfig(
                            strategy="WorkloadAware",
                            replicas=replicas,
                            tensor_parallel=d_tp,
                            pipeline_stages=d_s,
                            micro_batches=micro,
                            encode_gpus=e,
                            encode_tp=e_tp,
                            encode_stages=e_s,
                            decode_gpus=d,
                        )
                        shapes.append((_workload_aware_upper_bound(sim, base, search.bound), base))
                        search.space += len(BATCH_GRID) * len(BATCH_GRID)
    return shapes


def _workload_aware_shape(search: _Search, base: ExecutionConfig) -> None:
    shape = _shape_key(base)
    best_qps, falling = 0.0, 0
    for b_e in BATCH_GRID:
        c = search.line(
            shape,
            _vary(base, "decode_batch", encode_batch=b_e),
            BATCH_GRID,
        )
        if search.exhaustive:
            continue
        if c is None:
            # A larger encode batch only adds latency and memory.
            break
        q = c.predicted.throughput_qps
        if q > best_qps * (1 + 1e-9):
            best_qps, falling = q, 0
        else:
            falling += 1
            if falling >= 2:
                break


def _baseline(search: _Search, gpus: int, strategy: Strategy) -> None:
    sim = search.sim
    for pipe in _pipes(sim, gpus):
        for micro in _micro_choices(pipe.stages):
            base = ExecutionConfig(
                strategy=strategy,
                replicas=pipe.replicas,
                tensor_parallel=pipe.tp,
                pipeline_stages=pipe.stages,
                micro_batches=micro,
            )
            field_name = strategy_model(strategy).batch_field
            search.space += len(BATCH_GRID)
            search.line(
                _shape_key(base),
                _vary(base, field_name),
                BATCH_GRID,
            )


def _visit(
    search: _Search,
    shapes: list[tuple[float, ExecutionConfig]],
    rivals: tuple[Strategy, ...],
    run: Callable[[_Search, ExecutionConfig], None],
) -> None:
    """Visit shapes best upper bound first; skip those that cannot win."""
    shapes.sort(key=lambda s: (-s[0], _shape_key(s[1])))
    for ub, base in shapes:
        if ub <= 0 and not search.exhaustive:
            search.pruned += 1
            continue
        if not search.exhaustive and ub <= search.best_qps(rivals):
            search.pruned += 1
            continue
        run(search, base)


def _vary(base: ExecutionConfig, name: str, **fixed: int) -> Callable[[int], ExecutionConfig]:
    """Configurations along one line: ``base`` with ``fixed`` set and ``name`` varying."""

    def make(value: int) -> ExecutionConfig:
        return base.model_copy(update={**fixed, name: value})

    return make


def _shape_key(c: ExecutionConfig) -> tuple[object, ...]:
    return (
        c.strategy, c.replicas, c.tensor_parallel, c.tp_scope, c.pipeline_stages,
        c.micro_batches, c.encode_gpus, c.encode_tp, c.encode_stages, c.decode_gpus,
    )  # fmt: skip


# -- entry point ------------------------------------------------------------------------
def schedule(
    request: PlanRequest,
    profile: Profile,
    *,
    exhaustive: bool = False,
    time_limit_s: float | None = None,
) -> PlanResult:
    """Plan ``request`` on ``profile``: the best configuration meeting the bound, the
    next best alternatives, and the Static and Continuous baselines under the same
    bound; or ``Infeasible`` with the lowest latency any configuration reaches.

    ``request.engine`` Auto plans for vLLM when vLLM runs the model and some
    configuration it runs meets the bound, and for the project's own engine otherwise;
    the plan names the engine it is for."""
    if request.engine != "Auto":
        return _schedule(request, profile, exhaustive=exhaustive, time_limit_s=time_limit_s)
    start = time.monotonic()
    if vllm_runs_model(request.architecture):
        on_vllm = _schedule(
            request.model_copy(update={"engine": "vLLM"}),
            profile,
            exhaustive=exhaustive,
            time_limit_s=time_limit_s,
        )
        if isinstance(on_vllm, Plan):
            return on_vllm
    left = None if time_limit_s is None else max(time_limit_s - (time.monotonic() - start), 0.0)
    return _schedule(
        request.model_copy(update={"engine": "ExeGPT"}),
        profile,
        exhaustive=exhaustive,
        time_limit_s=left,
    )


def _schedule(
    request: PlanRequest,
    profile: Profile,
    *,
    exhaustive: bool,
    time_limit_s: float | None,
) -> PlanResult:
    """``schedule`` for the one engine ``request.engine`` names."""
    start = time.monotonic()
    if request.engine == "vLLM" and not vllm_runs_model(request.architecture):
        return Infeasible(
            latency_bound_s=request.latency_bound_s,
            best_latency_s=None,
            message=(
                f"vLLM does not run encoder-decoder models ({request.architecture.name}): "
                "set spec.engine to ExeGPT or Auto"
            ),
            search=SearchStats(seconds=0.0, evaluated=0, space=0, exhaustive=exhaustive),
        )
    sim = Simulator(request, profile)
    wanted: tuple[Strategy, ...] = (
        ("RoundRobin", "WorkloadAware") if request.strategy == "Auto" else (request.strategy,)
    )
    # Under Auto the baselines are candidates too, on either engine: a plan is never
    # predicted worse than the engine's own static or continuous batching (stock vLLM
    # on vLLM) under the same bound, and where one of them is best the plan says so.
    candidates: tuple[Strategy, ...] = wanted + (BASELINES if request.strategy == "Auto" else ())
    search = _Search(
        sim=sim,
        bound=request.planning_bound_s,
        exhaustive=exhaustive,
        deadline=None if time_limit_s is None else start + time_limit_s,
        wanted=wanted,
    )
    rr = _round_robin(search, request.gpus) if "RoundRobin" in wanted else []
    waa = _workload_aware(search, request.gpus) if "WorkloadAware" in wanted else []
    try:
        _visit(search, rr, wanted, _round_robin_shape)
        _visit(search, waa, wanted, _workload_aware_shape)
        _baseline(search, request.gpus, "Static")
        _baseline(search, request.gpus, "Continuous")
    except SearchTimeout:
        search.truncated = True
    stats = SearchStats(
        seconds=time.monotonic() - start,
        evaluated=search.evaluated,
        space=search.space,
        exhaustive=exhaustive,
        pruned=search.pruned,
        truncated=search.truncated,
    )
    ranked = sorted(
        (c for s in candidates for c in search.found.get(s, {}).values()),
        key=lambda c: (_rank(c), _shape_key(c.config)),
        reverse=True,
    )
    if not ranked:
        if not search.truncated:
            _lowest_latency(search, [b for _, b in rr + waa])
        low = search.best_latency_candidate
        if not exhaustive and not search.truncated and low and search.meets(low.predicted):
            # A configuration meets the bound that the binary searches stepped over: the
            # profile's latency falls with the batch somewhere (a noisy measured point),
            # so the lines are not monotone. Every point is searched instead.
            left = None if time_limit_s is None else time_limit_s - stats.seconds
            if left is None or left > 0:
                return _schedule(request, profile, exhaustive=True, time_limit_s=left)
        return _infeasible(request, search, stats)
    best = _simplest_worth_it(ranked, request.min_gain)
    baselines = {"Static": search.best("Static"), "Continuous": search.best("Continuous")}
    return Plan(
        strategy=best.config.strategy,
        engine="vLLM" if request.engine == "vLLM" else "ExeGPT",
        config=best.config,
        predicted=best.predicted,
        # the next best ExeGPT schedules; the baselines are reported as such
        alternatives=[c for c in ranked if c is not best and c.config.strategy not in BASELINES][
            :3
        ],
        baselines=baselines,
        latency_bound_s=request.latency_bound_s,
        latency_margin=request.latency_margin,
        min_gain=request.min_gain,
        search=stats,
        reason=_reason(best, search, wanted, request),
    )


# How simple each schedule is to run: continuous batching is what the engine does on its
# own (stock vLLM), Static admits whole batches, the ExeGPT schedules throttle encodings
# (RoundRobin) or split the GPUs (WorkloadAware).
_SIMPLICITY: dict[Strategy, int] = {
    "Continuous": 0, "Static": 1, "RoundRobin": 2, "WorkloadAware": 2
}  # fmt: skip


def _simplest_worth_it(ranked: list[Candidate], min_gain: float) -> Candidate:
    """The candidate to run: from the simplest kind of schedule up, each kind's best
    replaces the choice so far only when its predicted throughput is more than
    ``min_gain`` above it. With no gain asked for, the best ranked."""
    if min_gain <= 0.0:
        return ranked[0]
    chosen: Candidate | None = None
    for level in sorted(set(_SIMPLICITY.values())):
        top = next((c for c in ranked if _SIMPLICITY[c.config.strategy] == level), None)
        if top is None:
            continue
        gain = (1.0 + min_gain) * (chosen.predicted.throughput_qps if chosen else 0.0)
        if chosen is None or top.predicted.throughput_qps > gain:
            chosen = top
    assert chosen is not None  # ranked is not empty
    return chosen


def _reason(
    best: Candidate, search: _Search, wanted: tuple[Strategy, ...], request: PlanRequest
) -> str:
    chosen = best.config.strategy
    if len(wanted) == 1:
        return f"{chosen} was requested by spec.strategy"
    bound = f"the {request.latency_bound_s:g} s bound" if request.latency_bound_s else "no bound"
    if request.latency_bound_s and request.latency_margin:
        bound += f" less its {request.latency_margin:.0%} margin"
    if chosen in BASELINES:
        own = max(
            (c.predicted.throughput_qps for s in wanted if (c := search.best(s)) is not None),
            default=0.0,
        )
        what = _baseline_name(chosen, request.engine)
        if own <= 0.0:
            return f"{what}: no ExeGPT schedule meets {bound} within memory"
        ratio = own / max(best.predicted.throughput_qps, 1e-12)
        kept = (
            f", less than the {request.min_gain:.0%} gain spec.minGain asks for"
            if ratio > 1.0 and request.min_gain > 0.0
            else ""
        )
        # a ratio just under 1 + minGain keeps its third digit, lest it read as the gain
        digits = 3 if kept and round(ratio, 2) >= 1.0 + request.min_gain else 2
        return (
            f"{what}: the best ExeGPT schedule reaches {ratio:.{digits}f}x its throughput "
            f"under {bound}{kept}"
        )
    other: Strategy = "WorkloadAware" if chosen == "RoundRobin" else "RoundRobin"
    rival = search.best(other)
    if rival is None:
        if request.latency_bound_s is None:
            why = f"{chosen}: no {other} configuration fits on {request.gpus} x {request.gpu.name}"
        else:
            why = f"{chosen}: no {other} configuration meets {bound} within memory"
    else:
        ratio = best.predicted.throughput_qps / max(rival.predicted.throughput_qps, 1e-12)
        why = f"{chosen}: {ratio:.2f}x the throughput of the best {other} under {bound}"
    return why + _over_baseline(best, search, request.engine)


def _over_baseline(best: Candidate, search: _Search, engine: str) -> str:
    """How far the chosen ExeGPT schedule is predicted above the best baseline (the
    engine's own batching) under the same bound; empty where none meets it."""
    found = [c for s in BASELINES if (c := search.best(s)) is not None]
    if not found:
        return ""
    top = max(found, key=lambda c: c.predicted.throughput_qps)
    ratio = best.predicted.throughput_qps / max(top.predicted.throughput_qps, 1e-12)
    return f", {ratio:.2f}x {_baseline_name(top.config.strategy, engine)}"


def _baseline_name(strategy: Strategy, engine: str) -> str:
    """How a plan names a baseline it chose: vLLM's own scheduler is "stock vLLM"."""
    if engine == "vLLM":
        return "Continuous (stock vLLM)" if strategy == "Continuous" else "Static on vLLM"
    return f"{strategy} (the own engine's {strategy.lower()} batching)"


def _lowest_latency(search: _Search, shapes: list[ExecutionConfig]) -> None:
    """Evaluate each shape's low-latency corner (the smallest batches, for RoundRobin
    at every encoding frequency) so an infeasible answer can say how low the latency
    can go."""
    try:
        for base in shapes:
            if base.strategy == "RoundRobin":
                for n_d in STEPS_GRID:
                    search.evaluate(base.model_copy(update={"decode_steps_per_encode": n_d}))
            else:
                search.evaluate(base)
    except SearchTimeout:
        search.truncated = True


def _infeasible(request: PlanRequest, search: _Search, stats: SearchStats) -> Infeasible:
    bound = request.latency_bound_s
    margin = request.latency_margin
    if stats.truncated and search.best_latency is None:
        message = (
            f"the search stopped at its time limit after {stats.evaluated} configurations, "
            "before finding one that meets the constraints; allow more planning time"
        )
    elif search.best_latency is None:
        message = (
            f"no configuration of {request.architecture.name} fits in the memory of "
            f"{request.gpus} x {request.gpu.name}; add GPUs or use a larger GPU type"
        )
    else:
        if bound is None:
            message = "no configuration meets the constraints"
        elif margin:
            message = (
                f"no configuration meets the latency bound of {bound:g} s less its "
                f"{margin:.0%} margin ({bound * (1.0 - margin):.3f} s); the lowest reachable "
                f"is {search.best_latency:.3f} s: loosen spec.slo.latency to at least "
                f"{search.best_latency / (1.0 - margin):.3f} s, lower "
                "spec.slo.latencyMargin, or add GPUs"
            )
        else:
            message = (
                f"no configuration meets the latency bound of {bound:g} s; the lowest "
                f"reachable is {search.best_latency:.3f} s: loosen spec.slo.latency to at "
                f"least that, or add GPUs"
            )
        if stats.truncated:
            message += " (the search stopped at its time limit)"
    return Infeasible(
        latency_bound_s=bound,
        latency_margin=margin,
        best_latency_s=search.best_latency,
        best=search.best_latency_candidate,
        message=message,
        search=stats,
    )
