"""Token selection: greedy rows take the arg-max; a sampled row's token follows its
(temperature-scaled, top-k) distribution and depends only on its logits, settings,
seed and index, whatever batch it is sampled in."""

from __future__ import annotations

import pytest
import torch

from exegpt.runner.sampling import RowSampling, sample_rows, uniform

VOCAB = 16


def _logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, VOCAB, generator=g) * 2.0


def test_greedy_rows_take_the_arg_max_beside_sampled_ones() -> None:
    logits = _logits(4)
    rows = [RowSampling(), RowSampling(1.0, 0, 5, 0), RowSampling(), RowSampling(0.5, 3, 6, 2)]
    tokens = sample_rows(logits, rows)
    best = logits.argmax(dim=-1).tolist()
    assert tokens[0] == best[0] and tokens[2] == best[2]
    assert all(0 <= t < VOCAB for t in tokens)


def test_a_seeded_row_gets_the_same_token_in_any_batch() -> None:
    row_logits = _logits(1, seed=3)
    row = RowSampling(0.9, 0, seed=42, index=7)
    alone = sample_rows(row_logits, [row])[0]
    others = _logits(5, seed=4)
    batch = torch.cat((others[:2], row_logits, others[2:]))
    rows = [RowSampling(1.0, 0, s, 0) for s in range(2)] + [row]
    rows += [RowSampling(), RowSampling(0.3, 4, 9, 1), RowSampling()]
    assert sample_rows(batch, rows)[2] == alone
    # another index of the same request is another draw
    draws = {sample_rows(row_logits, [RowSampling(0.9, 0, 42, i)])[0] for i in range(40)}
    assert len(draws) > 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sampled_tokens_follow_the_softmax_of_the_scaled_logits(temperature: float) -> None:
    logits = _logits(1, seed=1)
    n = 20000
    rows = [RowSampling(temperature, 0, seed, 0) for seed in range(n)]
    tokens = torch.tensor(sample_rows(logits.expand(n, VOCAB), rows))
    freq = torch.bincount(tokens, minlength=VOCAB).double() / n
    expected = torch.softmax(logits[0].double() / temperature, dim=-1)
    # 4 standard errors of a frequency near its largest probability
    tolerance = 4 * (expected.max() * (1 - expected.max()) / n).sqrt()
    assert (freq - expected).abs().max() < tolerance


def test_top_k_keeps_the_k_most_likely_tokens() -> None:
    logits = _logits(1, seed=2)
    top3 = set(logits[0].topk(3).indices.tolist())
    n = 3000
    rows = [RowSampling(1.0, 3, seed, 0) for seed in range(n)]
    assert set(sample_rows(logits.expand(n, VOCAB), rows)) == top3
    ones = [RowSampling(1.0, 1, seed, 0) for seed in range(50)]
    assert set(sample_rows(logits.expand(50, VOCAB), ones)) == {int(logits[0].argmax())}


def test_uniform_draws_are_counter_based() -> None:
    draws = [uniform(7, i) for i in range(5000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert draws == [uniform(7, i) for i in range(5000)]
    assert len(set(draws)) == len(draws)
    assert abs(sum(draws) / len(draws) - 0.5) < 0.02
    assert uniform(7, 0) != uniform(8, 0)


def test_rows_must_match_the_logits() -> None:
    with pytest.raises(ValueError, match="2 sampling rows for 3 logits"):
        sample_rows(_logits(3), [RowSampling(), RowSampling()])
