"""The serving process's heap: frozen once the replica is built."""

from __future__ import annotations

import gc
import weakref

from exegpt.runner.heap import freeze_heap, frozen_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_frozen_heap_freezes_for_the_block_only() -> None:
    gc.unfreeze()
    kept = Node()  # alive when the block starts: frozen
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        made = Node()  # made inside: the collector's
        assert gc.get_freeze_count() == frozen
        gone = weakref.ref(made)
        del made
        gc.collect()
        assert gone() is None  # a full collection still frees what the block made
    assert gc.get_freeze_count() == 0
    assert kept.me is kept


def test_freeze_heap_collects_garbage_before_freezing() -> None:
    gc.unfreeze()
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_heap()
        assert gone() is None  # collected, not frozen for the process's life
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
