"""The slot KV cache and the metadata of a step."""

from __future__ import annotations

import pytest
import torch

from exegpt.runner.kvcache import CacheFull, SlotKVCache, make_step


def _cache(slots: int = 4, length: int = 8, *, compact: bool = True) -> SlotKVCache:
    return SlotKVCache(2, 2, 4, slots, length, compact=compact)


def test_slots_lowest_free_first_and_reused() -> None:
    c = _cache(compact=False)
    for s in "abcd":
        c.add(s)
    assert c.slots(list("abcd")) == [0, 1, 2, 3]
    with pytest.raises(CacheFull):
        c.add("e")
    c.remove("b")
    c.remove("a")
    c.add("e")
    assert c.slots(["e"]) == [0]
    with pytest.raises(ValueError, match="already cached"):
        c.add("e")
    with pytest.raises(KeyError, match="not cached"):
        c.slots(["zz"])
    assert "e" in c and "a" not in c and len(c) == 3


def test_write_read_advance_different_lengths() -> None:
    c = _cache()
    c.add("x")
    c.add("y")
    meta = c.step(["x", "y"], [3, 1], causal=True)
    k = torch.arange(2 * 2 * 3 * 4, dtype=torch.float32).view(2, 2, 3, 4)
    c.write(0, meta, k, -k)
    c.advance(meta)
    assert (c.length("x"), c.length("y")) == (3, 1)
    keys, values = c.read(0, meta)
    assert keys.shape == (2, 2, 3, 4)
    torch.testing.assert_close(keys[0], k[0])
    torch.testing.assert_close(keys[1, :, :1], k[1, :, :1])
    torch.testing.assert_close(values[0], -k[0])
    # one decode token each: written after each one's own length
    meta = c.step(["y", "x"], [1, 1], causal=True)
    assert meta.slot_slice is None  # slots [1, 0]: gathered, not a view
    new = torch.ones(2, 2, 1, 4)
    c.write(0, meta, new, new)
    keys, _ = c.read(0, meta)
    assert keys.shape == (2, 2, 4, 4)
    torch.testing.assert_close(keys[0, :, 1], torch.ones(2, 4))  # y at position 1
    torch.testing.assert_close(keys[1, :, 3], torch.ones(2, 4))  # x at position 3
    c.advance(meta)
    assert (c.length("x"), c.length("y")) == (4, 2)


def test_capacity() -> None:
    c = _cache(length=4)
    c.add("a")
    with pytest.raises(CacheFull, match="holds 4"):
        c.step(["a"], [5], causal=True)
    c.set_length("a", 4)
    with pytest.raises(CacheFull):
        c.step(["a"], [1], causal=True)


@pytest.mark.parametrize(
    ("past", "new", "causal"),
    [
        ([0, 0], [3, 1], True),
        ([2, 0], [1, 1], True),
        ([2, 1], [2, 3], True),
        ([0, 0], [2, 4], False),
    ],
)
def test_mask_is_what_each_query_may_see(past: list[int], new: list[int], causal: bool) -> None:
    meta = make_step(["a", "b"], [0, 1], past, new, causal=causal)
    assert meta.mask is not None
    for b in range(2):
        for t in range(new[b]):
            for j in range(meta.max_total):
                visible = j < past[b] + new[b] and (not causal or j <= past[b] + t)
                assert bool(meta.mask[b, 0, t, j]) == visible, (b, t, j)
        assert meta.positions[b, : new[b]].tolist() == list(range(past[b], past[b] + new[b]))


def test_no_mask_when_not_needed() -> None:
    assert make_step(["a", "b"], [0, 1], [0, 0], [4, 4], causal=True).mask is None
    decode = make_step(["a", "b"], [0, 1], [5, 5], [1, 1], causal=True)
    assert decode.mask is None and decode.slot_slice == slice(0, 2)
    assert make_step(["a", "b"], [0, 1], [5, 3], [1, 1], causal=True).mask is not None


def test_leaving_sequences_keep_the_cached_ones_in_the_lowest_slots() -> None:
    """A sequence leaving hands its slot to the highest one, keys and values with it."""
    c = _cache()
    for s in "abcd":
        c.add(s)
    meta = c.step(list("abcd"), [3, 1, 2, 4], causal=True)
    k = torch.randn(4, c.kv_heads, 4, c.head_dim)
    for layer in range(c.num_layers):
        c.write(layer, meta, k * (layer + 1), -k)
    c.advance(meta)
    before = {s: (c.k[1][c.slots([s])[0], :, : c.length(s)].clone(), c.length(s)) for s in "abcd"}
    c.remove("b")  # d moves from slot 3 to slot 1
    assert c.slots(["a", "c", "d"]) == [0, 2, 1]
    c.remove("a")  # c moves from slot 2 to slot 0
    assert c.slots(["c", "d"]) == [0, 1]
    c.add("e")
    assert c.slots(["e"]) == [2]
    for s in "cd":
        keys, n = before[s]
        assert c.length(s) == n
        assert torch.equal(c.k[1][c.slots([s])[0], :, :n], keys)


def test_caches_that_do_not_fit_are_refused_at_start() -> None:
    from exegpt.runner.errors import RunnerError
    from exegpt.runner.stage import check_kv_memory

    check_kv_memory(2**30, 2**31, 64, 1024)
    with pytest.raises(RunnerError, match=r"need 2.00 GiB \(64 sequences of 1024 tokens\)"):
        check_kv_memory(2**31, 2**30, 64, 1024)


def test_packed_step_puts_every_sequence_in_one_row() -> None:
    c = _cache(compact=False)
    for s in "abc":
        c.add(s)
    c.set_length("b", 2)
    meta = c.step(["a", "b", "c"], [3, 1, 2], causal=True, packed=True)
    assert meta.packed and meta.mask is None
    assert meta.offsets == [0, 3, 4]
    assert meta.positions.tolist() == [[0, 1, 2, 2, 0, 1]]  # "b" continues at 2
    assert meta.token_slot.tolist() == [0, 0, 0, 1, 2, 2]
    assert meta.last.tolist() == [2, 3, 5]  # each sequence's last token in the row
    k = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1).expand(1, 2, 6, 4)
    c.write(0, meta, k, k)
    c.advance(meta)
    key, _ = c.read_slot(0, 1, 3)
    assert key.shape == (1, 2, 3, 4) and key[0, 0, 2, 0] == 3  # "b"'s token landed at 2
    assert [c.length(s) for s in "abc"] == [3, 3, 2]
