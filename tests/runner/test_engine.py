"""The XRunner engine against Hugging Face ``transformers``: greedy outputs token for
token in every mode (RoundRobin with one and two stages and with tensor parallelism,
WorkloadAware, Static, Continuous), under concurrent requests; sampled outputs that do
not depend on the mode; rejections, cancellation and Static's batch semantics."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
import torch
from engine_cases import (
    LENGTHS,
    PROMPTS,
    config,
    drive,
    one_token_late_admission_worker,
    world_worker,
)
from tiny import hf_greedy, save_hf

from exegpt.runner.config import ModelConfig
from exegpt.runner.distributed import launch
from exegpt.runner.replica import ReplicaSpec, run_rank
from exegpt.runner.serving import GenerationRequest, NotAccepting, RequestRejected, TokenEvent


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, list[list[int]]]]:
    """Per family: a saved tiny model's directory and its reference greedy outputs."""
    out = {}
    for family in ("opt", "llama", "t5"):
        directory = tmp_path_factory.mktemp(family)
        hf = save_hf(family, directory)
        ref = [
            hf_greedy(hf, p, n, t5=family == "t5") for p, n in zip(PROMPTS, LENGTHS, strict=True)
        ]
        out[family] = (str(directory), ref)
    return out


def spec_for(directory: str, cfg: Any, **kw: Any) -> ReplicaSpec:
    return ReplicaSpec(
        ModelConfig.from_directory(directory), cfg, max_input_tokens=16, max_output_tokens=16,
        steady_decode_batch=3, weights=directory, **kw,
    )  # fmt: skip


ONE_PROCESS = {
    "round-robin": config("RoundRobin", encode_batch=2, decode_steps_per_encode=2, micro_batches=2),
    "static": config("Static", encode_batch=3),
    "continuous": config("Continuous", decode_batch=3),
}


@pytest.mark.parametrize("family", ["opt", "llama", "t5"])
@pytest.mark.parametrize("mode", sorted(ONE_PROCESS))
def test_one_process_modes_match_transformers(family: str, mode: str, models: Any) -> None:
    directory, ref = models[family]
    out = drive(spec_for(directory, ONE_PROCESS[mode]), seed=hash(mode) % 100)
    assert out.tokens == ref
    assert out.reasons == ["length"] * len(PROMPTS)


@pytest.mark.slow
def test_spawned_modes_match_transformers(models: Any) -> None:
    """Two processes: RoundRobin over two pipeline stages with two micro-batches, over
    two tensor-parallel ranks, and WorkloadAware with one encoder and one decoder."""
    opt, opt_ref = models["opt"]
    llama, llama_ref = models["llama"]
    specs = [
        spec_for(opt, config("RoundRobin", pipeline_stages=2, encode_batch=2,
                             decode_steps_per_encode=2, micro_batches=2)),
        spec_for(llama, config("RoundRobin", tensor_parallel=2, encode_batch=3)),
        spec_for(llama, config("WorkloadAware", encode_gpus=1, decode_gpus=1, encode_batch=2,
                               decode_batch=4)),
    ]  # fmt: skip
    results = launch(world_worker, 2, specs, False, timeout_s=240)
    rr_pp, rr_tp, waa = results[0]
    assert rr_pp.tokens == opt_ref
    assert rr_tp.tokens == llama_ref
    assert waa.tokens == llama_ref
    assert results[1] == [None, None, None]


@pytest.mark.slow
def test_spawned_workload_aware_moves_caches_between_different_layouts(models: Any) -> None:
    """Three processes: the decoders a two-stage pipeline (the encoder's caches split by
    layer), then two tensor-parallel encoders each holding one of Llama's two KV heads
    (the decoder's cache gathered by head)."""
    opt, opt_ref = models["opt"]
    llama, llama_ref = models["llama"]
    specs = [
        spec_for(opt, config("WorkloadAware", encode_gpus=1, decode_gpus=2, pipeline_stages=2,
                             encode_batch=2, decode_batch=4, micro_batches=2)),
        spec_for(llama, config("WorkloadAware", encode_gpus=2, encode_tp=2, decode_gpus=1,
                               encode_batch=3, decode_batch=5)),
    ]  # fmt: skip
    results = launch(world_worker, 3, specs, False, timeout_s=240)
    by_layer, by_head = results[0]
    assert by_layer.tokens == opt_ref
    assert by_head.tokens == llama_ref


@pytest.mark.slow
def test_stopping_waits_until_the_decoder_took_the_last_shipped_caches(models: Any) -> None:
    """Encoders stopped while the decoder is yet to take their last caches (a request
    that ended at its prefill) wait for it: a send dropped with its rank's state is
    lost, and the decoder would wait for it forever."""
    llama, llama_ref = models["llama"]
    assert LENGTHS[6] == 1
    spec = spec_for(llama, config("WorkloadAware", encode_gpus=2, encode_tp=2, decode_gpus=1,
                                  encode_batch=3, decode_batch=5))  # fmt: skip
    results = launch(one_token_late_admission_worker, 3, spec, timeout_s=60)
    assert results[0][0].tokens == [llama_ref[6]]
    assert results[1:] == [[None], [None]]


@pytest.mark.slow
def test_sampled_outputs_do_not_depend_on_the_mode(models: Any) -> None:
    directory, ref = models["llama"]
    one = drive(spec_for(directory, ONE_PROCESS["continuous"]), sampled=True)
    other = drive(spec_for(directory, ONE_PROCESS["round-robin"]), sampled=True, seed=3)
    waa = spec_for(directory, config("WorkloadAware", encode_gpus=1, decode_gpus=1,
                                     encode_batch=2, decode_batch=4))  # fmt: skip
    spawned = launch(world_worker, 2, [waa], True, timeout_s=240)[0][0]
    assert one.tokens == other.tokens == spawned.tokens
    assert one.tokens != ref  # sampled, not greedy
    assert [len(t) for t in one.tokens] == LENGTHS


def test_static_reports_a_batch_when_its_longest_output_ends(models: Any) -> None:
    directory, ref = models["opt"]
    engine = run_rank(spec_for(directory, config("Static", encode_batch=4)), 0,
                      torch.device("cpu"), start=False, keep_finished=True)  # fmt: skip
    assert engine is not None
    events: dict[int, list[TokenEvent]] = {}
    lock = threading.Lock()
    for i, (p, n) in enumerate(zip(PROMPTS, LENGTHS, strict=True)):
        events[i] = []

        def sink(ev: TokenEvent, i: int = i) -> None:
            with lock:
                events[i].append(ev)

        engine.submit(GenerationRequest(tuple(p), n), sink)
    engine.start()
    assert engine.wait_idle(60)
    engine.stop()
    assert [[e.token for e in events[i] if e.token is not None] for i in events] == ref
    assert engine.finished is not None
    records = sorted(engine.finished, key=lambda f: f.id)
    for batch in (records[:4], records[4:]):  # submitted before the start: two batches
        end = max(r.timings.last_token or 0.0 for r in batch)
        assert all((r.timings.finished or 0.0) >= end for r in batch)
    # the shortest of the first batch (2 tokens) is reported when its longest (8) ends
    shortest = records[3]
    assert shortest.output_tokens == 2
    assert (shortest.timings.finished or 0) >= (records[2].timings.last_token or 0)


def test_requests_that_cannot_fit_are_rejected_with_the_field(models: Any) -> None:
    directory, _ = models["opt"]
    engine = run_rank(spec_for(directory, ONE_PROCESS["continuous"]), 0, torch.device("cpu"))
    assert engine is not None
    cases = [
        (GenerationRequest(tuple(range(1, 18)), 1), "prompt", "at most 16"),
        (GenerationRequest((1, 2), 31), "max_tokens", "at most 30"),
        (GenerationRequest((1, 500), 2), "prompt", "outside the vocabulary"),
        (GenerationRequest((), 2), "prompt", "empty"),
        (GenerationRequest((1,), 0), "max_tokens", "at least 1"),
    ]
    try:
        for request, field, text in cases:
            with pytest.raises(RequestRejected) as info:
                engine.submit(request, lambda ev: None)
            assert info.value.field == field
            assert text in info.value.message
        engine.begin_drain()
        with pytest.raises(NotAccepting):
            engine.submit(GenerationRequest((1, 2), 2), lambda ev: None)
    finally:
        engine.stop()


def test_cancelling_a_request_ends_it_and_not_the_others(models: Any) -> None:
    directory, ref = models["opt"]
    spec = replace(spec_for(directory, ONE_PROCESS["continuous"]), max_output_tokens=200)
    engine = run_rank(spec, 0, torch.device("cpu"), start=False)
    assert engine is not None
    long_events: list[TokenEvent] = []
    short: list[int] = []
    started = threading.Event()

    def long_sink(ev: TokenEvent) -> None:
        long_events.append(ev)
        started.set()

    rid = engine.submit(GenerationRequest((5, 6, 7), 60), long_sink)
    engine.submit(GenerationRequest(tuple(PROMPTS[2]), LENGTHS[2]),
                  lambda ev: ev.token is not None and short.append(ev.token))  # fmt: skip
    engine.start()
    assert started.wait(30)
    engine.cancel(rid)
    assert engine.wait_idle(30)
    engine.stop()
    assert long_events[-1].finished == "cancelled"
    assert len(long_events) < 61
    assert short == ref[2]


def test_cancelled_waiting_requests_leave_the_queue_gauge(models: Any) -> None:
    """A client that abandons a batch before it is admitted: the queue empties, and so
    does exegpt_queue_length, with no further request to update it."""
    directory, _ = models["opt"]
    spec = spec_for(directory, ONE_PROCESS["continuous"])
    engine = run_rank(spec, 0, torch.device("cpu"), start=False)
    assert engine is not None
    finished: list[str | None] = []
    ids = [
        engine.submit(GenerationRequest((1, 2, 3), 4), lambda ev: finished.append(ev.finished))
        for _ in range(7)
    ]
    assert engine.metrics.snapshot()["exegpt_queue_length"] == 7
    for n, rid in enumerate(ids[:5], start=1):
        engine.cancel(rid)
        assert engine.metrics.snapshot()["exegpt_queue_length"] == 7 - n
    assert finished == ["cancelled"] * 5
    engine.start()
    assert engine.wait_idle(30)
    engine.stop()
    assert engine.metrics.snapshot()["exegpt_queue_length"] == 0
    assert finished.count("length") == 2


def test_metrics_record_what_the_engine_did(models: Any) -> None:
    directory, _ = models["opt"]
    spec = spec_for(directory, ONE_PROCESS["round-robin"])
    engine = run_rank(spec, 0, torch.device("cpu"))
    assert engine is not None
    done = threading.Semaphore(0)
    for p, n in zip(PROMPTS, LENGTHS, strict=True):
        engine.submit(GenerationRequest(tuple(p), n),
                      lambda ev: ev.finished is not None and done.release())  # fmt: skip
    for _ in PROMPTS:
        assert done.acquire(timeout=30)
    engine.stop()
    snap = engine.metrics.snapshot()
    assert snap['exegpt_requests_total{outcome="length"}'] == len(PROMPTS)
    assert snap["exegpt_generated_tokens_total"] == sum(LENGTHS)
    hist = engine.metrics.length_histograms()
    assert sum(hist["input"][1]) == len(PROMPTS)
    assert sum(hist["output"][1]) == len(PROMPTS)
    text = engine.metrics.render()
    assert 'exegpt_batch_size_count{phase="encode"}' in text
    assert "exegpt_queue_length 0" in text


def test_a_stage_spec_beyond_the_model_is_refused(models: Any) -> None:
    directory, _ = models["opt"]
    spec = spec_for(directory, config("RoundRobin", pipeline_stages=3))
    from exegpt.runner.topology import UnsupportedPlan

    with pytest.raises(UnsupportedPlan, match="3 pipeline stages for a 2-layer model"):
        spec.topology()


@pytest.mark.slow
def test_spawned_partial_tensor_parallelism_matches_transformers(models: Any) -> None:
    """TP for one phase only: encodings data parallel and decoding over two TP ranks
    (``tp_scope: decode``), and the reverse, with micro-batches; Static and Continuous
    too. The caches change layout within the stage after every encoding."""
    directory, ref = models["llama"]
    specs = [
        spec_for(directory, config("RoundRobin", tensor_parallel=2, tp_scope="decode",
                                   encode_batch=3, micro_batches=2)),
        spec_for(directory, config("RoundRobin", tensor_parallel=2, tp_scope="encode",
                                   encode_batch=3, micro_batches=2)),
        spec_for(directory, config("Static", tensor_parallel=2, tp_scope="encode",
                                   encode_batch=3)),
        spec_for(directory, config("Continuous", tensor_parallel=2, tp_scope="decode",
                                   decode_batch=4)),
    ]  # fmt: skip
    results = launch(world_worker, 2, specs, False, timeout_s=240)
    assert [r.tokens for r in results[0]] == [ref] * len(specs)


@pytest.mark.slow
def test_spawned_partial_tensor_parallelism_over_two_stages(models: Any) -> None:
    """Four processes: two stages of two TP ranks, the data-parallel phase's hidden
    states going from each rank to the same rank of the next stage."""
    directory, ref = models["opt"]
    specs = [
        spec_for(directory, config("RoundRobin", pipeline_stages=2, tensor_parallel=2,
                                   tp_scope=scope, encode_batch=3, micro_batches=2))
        for scope in ("decode", "encode")
    ]  # fmt: skip
    results = launch(world_worker, 4, specs, False, timeout_s=240)
    assert [r.tokens for r in results[0]] == [ref, ref]


@pytest.mark.slow
def test_concurrent_requests_with_cancellations_leave_nothing_behind(models: Any) -> None:
    """Sixty random requests from four threads, some cancelled mid-way, through a
    two-stage pipeline and a WorkloadAware pair: every request ends, the engine goes
    idle (no slot held by a finished or cancelled request), and every request that was
    not cancelled gets exactly the one-process reference's tokens."""
    from engine_cases import stress, stress_requests, stress_worker

    directory, _ = models["llama"]
    requests = stress_requests(1)
    engine = run_rank(spec_for(directory, config("Continuous", decode_batch=4)), 0,
                      torch.device("cpu"))  # fmt: skip
    assert engine is not None
    try:
        ref = stress(engine, [(p, n, False) for p, n, _ in requests]).tokens
    finally:
        engine.stop()
    specs = [
        spec_for(directory, config("RoundRobin", pipeline_stages=2, encode_batch=3,
                                   decode_steps_per_encode=2, micro_batches=2)),
        spec_for(directory, config("WorkloadAware", encode_gpus=1, decode_gpus=1,
                                   encode_batch=3, decode_batch=5)),
    ]  # fmt: skip
    for out in launch(stress_worker, 2, specs, 1, timeout_s=240)[0]:
        assert None not in out.reasons
        for i, (tokens, reason) in enumerate(zip(out.tokens, out.reasons, strict=True)):
            if reason == "cancelled":
                assert tokens == ref[i][: len(tokens)]
            else:
                assert (tokens, reason) == (ref[i], "length")
