"""Small helpers over async byte streams (a response body, a request body, a file).

Pure: no server imports.
"""

from __future__ import annotations

from collections.abc import AsyncIterable


async def read_at_most(chunks: AsyncIterable[bytes], limit: int) -> bytes | None:
    """The whole stream when it holds at most ``limit`` bytes, else None; reading stops
    at the chunk that goes past ``limit``, so a large body is never held whole.
    (``content.read(n)`` alone would return whatever has arrived so far.)"""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
