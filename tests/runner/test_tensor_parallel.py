"""Tensor parallelism on CPUs: two processes over gloo give the tokens and logits of one
process; pipeline stages chained in one process give those of the whole model."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch
from tiny import PROMPTS, Case, run_case, save_hf, tiny_config, tp_worker

from exegpt.runner.distributed import WorkerError, launch
from exegpt.runner.model import Transformer
from exegpt.runner.parallel import StageSpec, TensorParallel, head_shards, split_sizes
from exegpt.runner.weights import random_weights


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    out: list[Case] = []
    for family in ("opt", "llama", "t5", "t5-gated"):
        directory = tmp_path_factory.mktemp(family)
        save_hf(family, directory)
        out.append((family, str(directory), family, {}))
    # random weights: GPT-3 style; one KV head for two ranks (replicated); uneven MLP and
    # vocabulary shards
    out.append(("gpt3", None, "gpt3", {}))
    out.append(("llama-mqa-uneven", None, "llama", {"num_kv_heads": 1, "ffn_size": 63,
                                                    "vocab_size": 127}))  # fmt: skip
    return out


def test_two_ranks_match_one(cases: list[Case]) -> None:
    ranks = launch(tp_worker, 2, cases, backend="gloo", timeout_s=120)
    for case in cases:
        label = case[0]
        tokens, logits = run_case(case)
        for rank in ranks:
            got_tokens, got_logits = rank[label]
            assert got_tokens == tokens, label
            torch.testing.assert_close(
                torch.tensor(got_logits), torch.tensor(logits), atol=1e-4, rtol=1e-4
            )


def _hangs(rank: int, world: int) -> int:
    if rank == 1:
        time.sleep(60)
    return rank


def _fails(rank: int, world: int) -> None:
    if rank == 1:
        raise RuntimeError("boom on rank 1")


def test_launch_reports_a_failing_rank() -> None:
    with pytest.raises(WorkerError, match="boom on rank 1"):
        launch(_fails, 2)


def test_launch_reports_where_a_hung_rank_waits() -> None:
    with pytest.raises(WorkerError, match="did not finish") as err:
        launch(_hangs, 2, timeout_s=3)
    message = str(err.value)
    # the stacks of the rank still running: rank 1 waits in ``_hangs``, rank 0 finished
    assert "rank 1 (still running)" in message and "_hangs" in message
    assert "rank 0 (still running)" not in message


def test_shards() -> None:
    assert split_sizes(10, 3) == [4, 3, 3]
    tp = TensorParallel(4, 3, communicate=False)
    assert head_shards(8, 8, tp) == (range(6, 8), range(6, 8))
    assert head_shards(8, 2, tp) == (range(6, 8), range(1, 2))  # KV head 1 serves heads 4-7
    with pytest.raises(ValueError, match="does not divide"):
        head_shards(6, 6, tp)
    with pytest.raises(ValueError, match=r"torch\.distributed"):
        TensorParallel(2, 0)


@pytest.mark.parametrize("family", ["llama", "t5"])
def test_pipeline_stages_chain_to_the_whole_model(family: str) -> None:
    cfg = tiny_config(family, num_layers=3, **({"num_encoder_layers": 3} if family == "t5" else {}))
    whole = random_weights(Transformer(cfg), seed=2, std=0.2)
    enc = cfg.num_encoder_layers
    stages = [
        random_weights(Transformer(cfg, stage=StageSpec.split(3, 2, i, enc)), seed=2, std=0.2)
        for i in range(2)
    ]
    assert [list(s.stage.decoder) for s in stages] == [[0, 1], [2]]
    assert stages[0].lm_head is None and stages[1].embed is None
    ids = [0, 1, 2]
    with torch.inference_mode():
        caches = [s.new_cache(3, 16) for s in stages]
        if cfg.encoder_decoder:
            lengths = [len(p) for p in PROMPTS]
            hidden: Any = PROMPTS
            for s in stages:
                hidden = s.encode(ids, hidden, lengths)
            crosses = [s.new_cross_cache(3, 16) for s in stages]
            for s, cross, cache in zip(stages, crosses, caches, strict=True):
                s.project_cross(ids, hidden, lengths, cross)
                for i in ids:
                    cache.add(i)
            h = stages[0].decode(ids, [0, 0, 0], caches[0], crosses[0])
            got = stages[1].forward_step(ids, h, caches[1], new=[1, 1, 1], cross_cache=crosses[1])
            cross = whole.new_cross_cache(3, 16)
            whole.project_cross(ids, whole.encode(ids, PROMPTS), lengths, cross)
            cache = whole.new_cache(3, 16)
            for i in ids:
                cache.add(i)
            want = whole.decode(ids, [0, 0, 0], cache, cross)
        else:
            for i in ids:
                caches[1].add(i)
            h = stages[0].prefill(ids, PROMPTS, caches[0])
            got = stages[1].forward_step(ids, h, caches[1], new=[len(p) for p in PROMPTS])
            want = whole.prefill(ids, PROMPTS, whole.new_cache(3, 16))
            # and a decode step through both stages
            tok = want.argmax(-1)
            h = stages[0].decode(ids, tok, caches[0])
            got2 = stages[1].forward_step(ids, h, caches[1], new=[1, 1, 1])
            # the whole model's cache was dropped: recompute from the prompts
            cache = whole.new_cache(3, 16)
            whole.prefill(ids, PROMPTS, cache)
            torch.testing.assert_close(got2, whole.decode(ids, tok, cache), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
