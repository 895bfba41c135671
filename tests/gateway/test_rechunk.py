"""Upload bodies are regrouped into chunks of exactly the chunk size, byte for byte."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.transcode import rechunk
from hypothesis import given
from hypothesis import strategies as st


async def regroup(pieces: list[bytes], size: int) -> list[bytes]:
    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return [chunk async for chunk in rechunk(body(), size)]


@given(st.lists(st.binary(max_size=200), max_size=12), st.integers(min_value=1, max_value=64))
async def test_rechunk_keeps_every_byte_in_full_size_chunks(pieces: list[bytes], size: int) -> None:
    chunks = await regroup(pieces, size)
    assert b"".join(chunks) == b"".join(pieces)
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    if chunks:
        assert 0 < len(chunks[-1]) <= size
