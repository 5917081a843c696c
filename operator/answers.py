"""Reading an HTTP answer's body whole, up to a size limit (``aiohttp``'s ``read(n)``
returns what has arrived so far, not ``n`` bytes)."""

from __future__ import annotations

import aiohttp


class TooLarge(Exception):
    """The body is longer than the limit."""


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``resp``; ``TooLarge`` past ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"answer larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
