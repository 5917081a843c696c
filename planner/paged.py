"""A paged KV cache (vLLM's): a fixed number of blocks of ``block_tokens`` tokens,
allocated to a sequence as it grows and freed when it finishes or is preempted; the
capacity is counted in blocks, not in worst-case slots. The capacity is an input
(from the memory model), not computed here."""

from __future__ import annotations


class PagedKV:
    """Blocks held per query id, out of ``blocks``."""

    def __init__(self, blocks: int, block_tokens: int) -> None:
        if blocks < 1:
            raise ValueError(f"kv_blocks must be at least 1, got {blocks}")
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
        self.blocks = blocks
        self.block_tokens = block_tokens
        self.free = blocks
        self.held: dict[int, int] = {}

    def needed(self, tokens: float) -> int:
        """Blocks a sequence of ``tokens`` tokens occupies."""
        return -(-int(tokens) // self.block_tokens)

    def admit(self, query: int, tokens: float) -> bool:
        """Allocate the blocks of a sequence of ``tokens`` tokens; False (nothing
        allocated) when they are not free."""
        n = self.needed(tokens)
        if n > self.free:
            return False
        self.free -= n
        self.held[query] = self.held.get(query, 0) + n
        return True

    def grow(self, query: int, tokens: float) -> bool:
        """Make room for the sequence to reach ``tokens`` tokens: a block more when it
        crosses a block boundary; False when none is free."""
        extra = self.needed(tokens) - self.held.get(query, 0)
        if extra <= 0:
            return True
        if extra > self.free:
            return False
        self.free -= extra
        self.held[query] = self.held.get(query, 0) + extra
        return True

    def release(self, query: int) -> None:
        self.free += self.held.pop(query, 0)

    @property
    def used(self) -> int:
        return self.blocks - self.free
