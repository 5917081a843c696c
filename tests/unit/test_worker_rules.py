"""What the workers run, as the planner sees it: the admission rule of each strategy,
the KV slots of a replica, the processes of a replica, and the configurations a
deployable plan is limited to."""

from __future__ import annotations

from pathlib import Path

import pytest

from exegpt.operator.request import plan_request
from exegpt.operator.spec import parse_manifest
from exegpt.planner.analytic import analytic_profile
from exegpt.planner.plan import ExecutionConfig, Plan
from exegpt.planner.runnable import worker_limitation
from exegpt.planner.scheduler import schedule
from exegpt.runner.batching import Admission, max_encode_batch, split
from exegpt.runner.topology import DECODER, ENCODER, MAIN, UnsupportedPlan, topology

ROOT = Path(__file__).resolve().parents[2]


def cfg(strategy: str, **kw: object) -> ExecutionConfig:
    return ExecutionConfig.model_validate({"strategy": strategy, **kw})


def test_round_robin_encodes_every_n_d_decode_iterations() -> None:
    a = Admission.of(cfg("RoundRobin", encode_batch=4, decode_steps_per_encode=3), slots=10)
    assert a.admit(waiting=7, running=0) == 4  # nothing decoding: encode at once
    a.encoded()
    decisions = []
    for _ in range(4):
        decisions.append(a.admit(waiting=7, running=4))
        a.decoded()
    assert decisions == [0, 0, 0, 4]
    assert a.admit(waiting=7, running=8) == 2  # only two slots left
    assert a.admit(waiting=0, running=4) == 0


def test_static_waits_for_its_batch_and_continuous_refills() -> None:
    static = Admission.of(cfg("Static", encode_batch=3), slots=3)
    assert static.admit(waiting=5, running=0) == 3
    assert static.admit(waiting=5, running=1) == 0
    cont = Admission.of(cfg("Continuous", decode_batch=6), slots=6)
    assert cont.admit(waiting=10, running=4) == 2
    assert cont.admit(waiting=1, running=0) == 1
    waa = Admission.of(cfg("WorkloadAware", encode_batch=4, decode_batch=9), slots=9)
    assert waa.admit(waiting=10, running=7) == 2
    assert waa.admit(waiting=10, running=0) == 4


def test_encode_batches_and_micro_batches() -> None:
    assert max_encode_batch(cfg("Continuous", decode_batch=7, encode_batch=2)) == 7
    assert split(7, 3) == [3, 2, 2] and split(2, 4) == [1, 1] and split(0, 2) == [0]


def test_replica_processes() -> None:
    from exegpt.planner.architecture import get_architecture

    opt = get_architecture("opt-13b")
    t = topology(cfg("RoundRobin", pipeline_stages=2, tensor_parallel=4), num_layers=40,
                 architecture=opt)  # fmt: skip
    main = t.chain(MAIN)
    assert t.world == 8 and main.leader(1) == 4 and main.place(6) == (1, 2)
    waa = cfg("WorkloadAware", encode_gpus=2, encode_tp=2, decode_gpus=3, pipeline_stages=3)
    t = topology(waa, num_layers=40, architecture=opt)
    assert [c.name for c in t.chains] == [ENCODER, DECODER]
    assert t.world == 5 and t.chain(DECODER).stage_ranks(2) == [4]
    with pytest.raises(UnsupportedPlan, match="41 pipeline stages for a 40-layer model"):
        topology(cfg("RoundRobin", pipeline_stages=41), num_layers=40, architecture=opt)
    t5 = get_architecture("t5-11b")
    with pytest.raises(UnsupportedPlan, match="WorkloadAware plans of encoder-decoder"):
        topology(waa, num_layers=24, architecture=t5)


@pytest.mark.parametrize(
    ("config", "limited"),
    [
        (cfg("RoundRobin", tensor_parallel=4, tp_scope="decode"), True),
        (cfg("RoundRobin", pipeline_stages=2), True),
        (cfg("WorkloadAware", encode_gpus=1, decode_gpus=1), True),
        (cfg("RoundRobin", tensor_parallel=4), False),
        (cfg("Continuous", tensor_parallel=2), False),
    ],
)
def test_encoder_decoder_limits(config: ExecutionConfig, limited: bool) -> None:
    from exegpt.planner.architecture import get_architecture

    assert bool(worker_limitation(config, get_architecture("t5-11b"))) == limited
    assert worker_limitation(config, get_architecture("opt-13b")) == ""


def test_a_deployable_plan_is_one_the_workers_run() -> None:
    """Under a 3 s bound the T5 example's best configuration is a partial-TP one the
    workers do not run; the operator's request asks only for configurations they run."""
    raw = __import__("yaml").safe_load((ROOT / "examples" / "t5-11b-translation.yaml").read_text())
    raw["spec"]["slo"] = {"latency": "3s"}
    request = plan_request(parse_manifest(raw).spec)
    assert request.executable_only
    profile = analytic_profile(request.architecture, request.gpu, dtype=request.dtype)
    deployable = schedule(request, profile)
    free = schedule(request.model_copy(update={"executable_only": False}), profile)
    assert isinstance(deployable, Plan) and isinstance(free, Plan)
    assert worker_limitation(deployable.config, request.architecture) == ""
    assert worker_limitation(free.config, request.architecture) != ""
    assert deployable.predicted.throughput_qps <= free.predicted.throughput_qps
