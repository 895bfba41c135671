"""Streamed type checks: UTF-8 text validated piece by piece, whatever the cuts, as fast paths must not loosen it."""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage.sniff import TextValidator
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient

VIETNAMESE = "Cấu trúc dữ liệu và giải thuật: ngăn xếp, hàng đợi, cây nhị phân.\n".encode()


def reference_verdicts(pieces: list[bytes]) -> list[bool]:
    """The rule spelled out per decoded character: no NUL, at most 1% + 1 other control characters per piece."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    verdicts: list[bool] = []
    ok = True
    for i, piece in enumerate([*pieces, b""]):
        if ok:
            try:
                text = decoder.decode(piece, final=i == len(pieces))
            except UnicodeDecodeError:
                ok = False
            else:
                controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
                ok = "\x00" not in text and controls <= len(text) // 100 + 1
        verdicts.append(ok)
    return verdicts


def validator_verdicts(pieces: list[bytes]) -> list[bool]:
    validator = TextValidator()
    return [validator.feed(piece) for piece in pieces] + [validator.feed(b"", final=True)]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted(p % (len(data) + 1) for p in points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


CHARACTERS = ["a", " ", "\n", "\t", "ấ", "ữ", "€", "😀", "\x01", "\x1b", "\x00", "\x7f"]


@given(
    st.lists(st.sampled_from(CHARACTERS), max_size=400),
    st.lists(st.integers(min_value=0), max_size=6),
    st.one_of(st.none(), st.tuples(st.integers(min_value=0), st.integers(min_value=0x80, max_value=0xFF))),
)
def test_validator_matches_the_per_character_rule(
    chars: list[str], points: list[int], damage: tuple[int, int] | None
) -> None:
    data = "".join(chars).encode()
    if damage is not None:  # a stray non-ASCII byte somewhere: usually invalid UTF-8
        at, byte = damage
        at %= len(data) + 1
        data = data[:at] + bytes([byte]) + data[at:]
    pieces = cut(data, points)
    assert validator_verdicts(pieces) == reference_verdicts(pieces)


def test_multibyte_characters_cut_anywhere_are_text() -> None:
    data = VIETNAMESE * 50
    for at in range(1, 8):
        assert validator_verdicts([data[:at], data[at:]])[-1]
    assert not validator_verdicts([data + "ấ".encode()[:2]])[-1]  # a character cut off at the end is not UTF-8


@pytest.mark.parametrize("junk", [b"\x00", b"\x01\x02\x03\x1b" * 2000, b"\xff\xfe"])
async def test_binary_after_the_sniffed_head_is_refused(storage: StorageClient, junk: bytes) -> None:
    # The first 64 KiB are good text (the type sniff passes); the junk arrives in a later chunk.
    data = VIETNAMESE * 1000 + junk + VIETNAMESE * 100
    user = await storage.new_user()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await storage.upload(user, "notes.txt", data, chunk_size=64 * 1024)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not UTF-8 text" in (err.value.details() or "")
    files = await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=user_metadata(user))
    assert list(files.files) == []


async def test_long_vietnamese_text_in_odd_chunks_is_stored_exactly(storage: StorageClient) -> None:
    data = VIETNAMESE * 40_000  # ~3 MB: several 1 MiB-sized chunks, cut through characters
    user = await storage.new_user()
    file = await storage.upload(user, "notes.txt", data, chunk_size=1024 * 1024 - 1)
    assert file.size_bytes == len(data) and file.kind == storage_pb2.FILE_KIND_TXT
    assert file.sha256 == hashlib.sha256(data).hexdigest()


async def eventually(condition: Callable[[], bool], limit_s: float = 20.0) -> bool:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_cancelled_upload_leaves_no_temp_file(storage: StorageClient, tmp_path: Path) -> None:
    temp_dir = tmp_path / "blobs" / "tmp"
    user = await storage.new_user()

    async def stalls_midway() -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="notes.txt"))
        for _ in range(6):  # more than the server keeps in flight: some are written before the cancel
            yield storage_pb2.UploadFileRequest(chunk=(VIETNAMESE * 15_000)[: 1024 * 1024 - 7])
        await asyncio.sleep(3600)

    call = storage.stub.UploadFile(stalls_midway(), metadata=user_metadata(user))
    assert await eventually(lambda: any(temp_dir.glob("*.part")))
    call.cancel()
    assert await eventually(lambda: not any(temp_dir.glob("*.part")))
    files = await storage.stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=user_metadata(user))
    assert list(files.files) == []
