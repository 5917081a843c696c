"""The runner's models against Hugging Face ``transformers`` on the same (random) weights:
greedy generation token for token, and logits, for each family; batches of different
lengths; sequences joining and leaving a batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import FAMILIES, hf_greedy, hf_logits, save_hf, tiny_config

from exegpt.runner.config import ModelConfig
from exegpt.runner.generate import Sampling, generate
from exegpt.runner.model import Transformer
from exegpt.runner.weights import load_directory, random_weights

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [20, 21, 22, 23], [40, 41]]
STEPS = 8


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    family: str = request.param
    directory = tmp_path_factory.mktemp(family)
    hf = save_hf(family, directory)
    model = load_directory(Transformer(ModelConfig.from_directory(directory)), directory)
    return family, hf, model


def _t5(family: str) -> bool:
    return family.startswith("t5")


def test_config_from_directory(pair: Any) -> None:
    family, _hf, model = pair
    arch = model.config.architecture
    assert arch.encoder_decoder == _t5(family)
    assert arch.gated_mlp == (family in ("llama", "t5-gated"))
    assert arch.kv_heads == (2 if family == "llama" else 4)


def test_greedy_batch_matches_transformers(pair: Any) -> None:
    family, hf, model = pair
    expected = [hf_greedy(hf, p, STEPS, t5=_t5(family)) for p in PROMPTS]
    assert generate(model, PROMPTS, STEPS) == expected
    # the tokens are not all alike (the comparison means something)
    assert len({t for seq in expected for t in seq}) > 3


def test_logits_match_transformers(pair: Any) -> None:
    family, hf, model = pair
    t5 = _t5(family)
    continuations = [hf_greedy(hf, p, 5, t5=t5) for p in PROMPTS]
    ids = list(range(len(PROMPTS)))
    with torch.inference_mode():
        cache = model.new_cache(len(ids), 32)
        cross = None
        if t5:
            cross = model.new_cross_cache(len(ids), 16)
            model.project_cross(ids, model.encode(ids, PROMPTS), [len(p) for p in PROMPTS], cross)
            for s in ids:
                cache.add(s)
            steps = [model.decode(ids, [0] * len(ids), cache, cross)]
        else:
            steps = [model.prefill(ids, PROMPTS, cache)]
        for k in range(4):
            steps.append(model.decode(ids, [c[k] for c in continuations], cache, cross))
    mine = torch.stack(steps, dim=1)  # [B, 5, vocab]
    for b, prompt in enumerate(PROMPTS):
        ref = hf_logits(hf, prompt, continuations[b], t5=t5)
        torch.testing.assert_close(mine[b], ref, atol=2e-4, rtol=1e-4)


def test_sequences_join_and_leave(pair: Any) -> None:
    """A decode batch whose members change: each sequence's tokens are those it gets
    alone."""
    family, _hf, model = pair
    t5 = _t5(family)
    solo = {i: generate(model, [p], 6)[0] for i, p in enumerate(PROMPTS)}
    got: dict[int, list[int]] = {i: [] for i in range(len(PROMPTS))}
    with torch.inference_mode():
        cache = model.new_cache(3, 32)  # fewer slots than sequences: slots are reused
        cross = model.new_cross_cache(3, 16) if t5 else None
        running: list[int] = []

        def admit(seq: list[int]) -> None:
            prompts = [PROMPTS[s] for s in seq]
            if cross is not None:
                encoded = model.encode(seq, prompts)
                model.project_cross(seq, encoded, [len(p) for p in prompts], cross)
                for s in seq:
                    cache.add(s)
                logits = model.decode(seq, [0] * len(seq), cache, cross)
            else:
                logits = model.prefill(seq, prompts, cache)
            for s, tok in zip(seq, logits.argmax(-1).tolist(), strict=True):
                got[s].append(tok)
            running.extend(seq)

        admit([0, 1])
        for step in range(16):
            if step == 2:
                admit([2])
            done = [s for s in running if len(got[s]) >= 6]
            for s in done:
                running.remove(s)
                cache.remove(s)
                if cross is not None:
                    cross.remove(s)
            if step >= 3 and not got[3] and len(cache) < 3:
                admit([3])  # takes the first slot freed
            if not running:
                break
            logits = model.decode(running, [got[s][-1] for s in running], cache, cross)
            for s, tok in zip(running, logits.argmax(-1).tolist(), strict=True):
                got[s].append(tok)
    assert got == solo
    assert len(cache) == 0


def test_chunked_prefill_matches(pair: Any) -> None:
    """A prompt prefilled in two chunks (the second attending to the cached first)
    gives the logits of a single prefill."""
    family, _, model = pair
    if _t5(family):
        pytest.skip("decoder-only")
    prompts = [PROMPTS[0], PROMPTS[2]]
    with torch.inference_mode():
        one = model.prefill([0, 1], prompts, model.new_cache(2, 32))
        cache = model.new_cache(2, 32)
        model.prefill([0, 1], [prompts[0][:3], prompts[1][:1]], cache)
        two = model.forward_step([0, 1], [prompts[0][3:], prompts[1][1:]], cache)
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)


def test_different_output_lengths_leave_the_batch(pair: Any) -> None:
    _family, _hf, model = pair
    limits = [1, 5, 3, 8]
    got = generate(model, PROMPTS, limits)
    assert [len(g) for g in got] == limits
    full = generate(model, PROMPTS, 8)
    assert all(g == f[: len(g)] for g, f in zip(got, full, strict=True))


def test_end_of_sequence_stops(pair: Any) -> None:
    _, _, model = pair
    full = generate(model, PROMPTS[:1], 8)[0]
    eos = full[2]
    got = generate(model, PROMPTS[:1], 8, eos_token=eos)[0]
    assert got == full[: full.index(eos) + 1]


@pytest.mark.parametrize("family", ["opt", "gpt3", "llama", "t5"])
def test_random_weights_incremental_equals_recompute(family: str) -> None:
    """With seeded random weights (every preset family, GPT-3 style included): decoding
    with the cache gives the logits of recomputing the whole sequence."""
    model = random_weights(Transformer(tiny_config(family)), seed=3, std=0.2)
    prompt = [7, 8, 9, 10]
    tokens = generate(model, [prompt], 4)[0]
    with torch.inference_mode():
        if model.config.encoder_decoder:
            # decoder over [start, t0, t1, t2] at once vs step by step: compare last logits
            cross = model.new_cross_cache(2, 8)
            model.project_cross([0, 1], model.encode([0, 1], [prompt, prompt]), [4, 4], cross)
            cache = model.new_cache(2, 8)
            cache.add(0)
            cache.add(1)
            whole = model.forward_step([0], [[0, *tokens[:3]]], cache, cross_cache=cross)
            logits = None
            for tok in [0, *tokens[:3]]:
                logits = model.decode([1], [tok], cache, cross)
        else:
            whole = model.prefill([0], [prompt + tokens[:3]], model.new_cache(1, 16))
            cache = model.new_cache(1, 16)
            logits = model.prefill([0], [prompt], cache)
            for tok in tokens[:3]:
                logits = model.decode([0], [tok], cache)
    assert logits is not None
    torch.testing.assert_close(whole, logits, atol=1e-5, rtol=1e-5)
    assert int(whole.argmax()) == tokens[3]


@pytest.mark.parametrize("family", ["opt", "llama"])
def test_packed_steps_equal_padded_steps(family: str) -> None:
    """Packed steps (the tokens in one row, attention per sequence) give the logits and
    caches of padded steps, for prompts of very different lengths, a chunk added to
    cached sequences, and decode steps over contexts of different lengths (packed on
    the CPU, padded on a GPU)."""
    model = random_weights(Transformer(tiny_config(family)), seed=5, std=0.2)
    assert model.packed_prefill and model.packed_decode
    prompts = [[3] * 9, [4], [5, 6, 7], [8] * 5]
    caches = {packed: model.new_cache(6, 32) for packed in (True, False)}
    out: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    with torch.inference_mode():
        for packed, cache in caches.items():
            ids = list(range(len(prompts)))
            for s in ids:
                cache.add(s)
            out[packed].append(model.forward_step(ids, prompts, cache, packed=packed))
            chunk = [[9, 10], [11], [12, 13, 14], [15]]
            out[packed].append(model.forward_step(ids, chunk, cache, packed=packed))
            for tok in (16, 17, 18):
                step = model.forward_step([3, 0, 2], [[tok]] * 3, cache, packed=packed)
                out[packed].append(step)
    for a, b in zip(out[True], out[False], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    packed, padded = caches[True], caches[False]
    for s in range(len(prompts)):
        n = packed.length(s)
        assert n == padded.length(s) == len(prompts[s]) + len(chunk[s]) + (3 if s != 1 else 0)
        slot_a, slot_b = packed.slots([s])[0], padded.slots([s])[0]
        torch.testing.assert_close(packed.k[1][slot_a, :, :n], padded.k[1][slot_b, :, :n])


def test_sampling_is_seeded() -> None:
    model = random_weights(Transformer(tiny_config("llama")), seed=1, std=0.2)
    sampled = Sampling(greedy=False, temperature=0.8, top_k=20)
    a = generate(model, PROMPTS, 6, sampling=sampled, seed=5)
    assert a == generate(model, PROMPTS, 6, sampling=sampled, seed=5)
    top1 = Sampling(greedy=False, top_k=1)
    assert generate(model, PROMPTS, 6, sampling=top1) == generate(model, PROMPTS, 6)


def test_weights_directory_shape_mismatch(tmp_path: Path) -> None:
    from exegpt.runner.weights import WeightsError

    save_hf("llama", tmp_path)
    cfg = tiny_config("llama", ffn_size=48)
    with pytest.raises(WeightsError, match="shape"):
        load_directory(Transformer(cfg), tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["opt", "llama", "t5"])
def test_cuda_matches_cpu(family: str) -> None:
    """The same weights on a GPU (float32) give the CPU's tokens."""
    cfg = tiny_config(family)
    cpu = random_weights(Transformer(cfg), seed=4, std=0.2)
    gpu = Transformer(cfg, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    assert generate(gpu, PROMPTS, 6) == generate(cpu, PROMPTS, 6)


def test_sharded_safetensors_directory(tmp_path: Path) -> None:
    """Weights split over several safetensors files (with an index) load the same."""
    from tiny import hf_model

    hf = hf_model("llama")
    hf.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_directory(Transformer(ModelConfig.from_directory(tmp_path)), tmp_path)
    assert generate(model, PROMPTS, 4) == [hf_greedy(hf, p, 4) for p in PROMPTS]


def test_gpu_decode_layout_gives_the_packed_outputs() -> None:
    """Decode steps as a GPU runs them (padded attention, compacted slots, steps in slot
    order) give the CPU's packed outputs, with sequences leaving mid-way."""
    from exegpt.runner.stage import StageRunner

    runners = []
    for packed_decode in (True, False):
        model = random_weights(Transformer(tiny_config("llama")), seed=7, std=0.2)
        model.packed_decode = packed_decode
        runners.append(StageRunner(model, slots=4, max_len=32))
    prompts = [[3] * 6, [4], [5, 6, 7], [8] * 4]
    outs: list[list[torch.Tensor]] = [[], []]
    for runner, out in zip(runners, outs, strict=True):
        out.append(runner.prefill([0, 1, 2, 3], prompts, [len(p) for p in prompts]))
        runner.release([1])  # slot 1 frees: the padded layout moves slot 3 into it
        for tok in (9, 10, 11):
            out.append(runner.decode([3, 0, 2], [tok] * 3))
    assert runners[1].cache.slots([0, 2, 3]) == [0, 2, 1]  # compacted
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
