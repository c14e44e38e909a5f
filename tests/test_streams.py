"""proxy.streams.read_at_most: the one bounded whole-body read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from proxy.streams import read_at_most


@pytest.mark.parametrize(
    ("chunks", "limit", "expected"),
    [
        ([], 0, b""),
        ([], 10, b""),
        ([b"abc"], 3, b"abc"),  # exactly the limit
        ([b"abc"], 2, None),
        ([b"a", b"", b"bc"], 3, b"abc"),
        ([b"ab", b"cd"], 3, None),
        ([b"x" * 10, b"y"], 10, None),
        ([b""], 0, b""),
    ],
)
async def test_read_at_most(chunks: list[bytes], limit: int, expected: bytes | None) -> None:
    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    assert await read_at_most(stream(), limit) == expected


async def test_reading_stops_at_the_chunk_past_the_limit() -> None:
    taken: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            taken.append(1)
            yield b"x" * 100

    assert await read_at_most(endless(), 250) is None
    assert len(taken) == 3
