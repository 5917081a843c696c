"""The CPU's KV connector (``exegpt.runner.vllm_kv_connector``) without servers: what it
hands over, and where it reads and writes a token's key and value in vLLM's CPU attention
cache (against vLLM's own kernel). ``tests/runner/test_vllm_workload_aware.py`` runs it
between real servers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")

from exegpt.runner.vllm_kv_connector import block_layout, handover_tokens, put_token_kv, token_kv

BLOCKS, HEADS, BLOCK, HEAD = 3, 2, 128, 32


def test_every_prompt_token_but_the_last_is_handed_over() -> None:
    assert [handover_tokens(n) for n in (0, 1, 2, 32, 33, 128, 129)] == [
        0, 0, 1, 31, 32, 127, 128]  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_tokens_kv_is_where_vllms_cpu_kernel_writes_it(dtype: torch.dtype) -> None:
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    isa = _get_attn_isa(dtype, BLOCK, HEAD)
    layout = block_layout(isa, dtype, HEADS, BLOCK, HEAD)
    slots = torch.tensor([0, 1, 2, 130, 200, 383])  # places in blocks 0, 1 and 2
    g = torch.Generator().manual_seed(0)
    key = torch.randn(len(slots), HEADS, HEAD, generator=g).to(dtype)
    value = torch.randn(len(slots), HEADS, HEAD, generator=g).to(dtype)
    cache = torch.zeros(BLOCKS, HEADS, BLOCK, 2 * HEAD, dtype=dtype)
    keys, values = cache.view(BLOCKS, HEADS, 2 * BLOCK, HEAD).chunk(2, dim=2)
    ops.cpu_attn_reshape_and_cache(key, value, keys, values, slots, isa)

    kv = token_kv(cache, layout, slots)
    assert torch.equal(kv[:, :, 0], key) and torch.equal(kv[:, :, 1], value)

    # written back into an empty cache, the same bytes as the kernel wrote
    copy = torch.zeros_like(cache)
    put_token_kv(copy, layout, slots, kv)
    assert torch.equal(copy, cache)
    # and a partial block (three tokens of block 0) touches those tokens only
    part = torch.zeros_like(cache)
    put_token_kv(part, layout, slots[:3], kv[:3])
    assert int((part != 0).sum()) == int((kv[:3] != 0).sum())
    assert torch.equal(token_kv(part, layout, slots[:3]), kv[:3])
