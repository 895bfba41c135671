"""What a source viewer reads of one file: its extracted passages in order, and its original bytes.

Both are scoped like every file route: the file must be one of the caller's live files, and
another user's file id is NOT_FOUND, never its content.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from studyassist.core.errors import InvalidArgument, NotFound
from studyassist.storage.v1 import storage_pb2

from storage.blobs import BlobStore
from storage.db import Connection
from storage.ids import decode_token, encode_token, page_size

# Pieces of a download (the gateway's upload pieces are the same size).
DOWNLOAD_PIECE_BYTES = 1024 * 1024
# The media type a download is sent with, by the kind the upload's content proved.
MEDIA_TYPES: dict[int, str] = {
    storage_pb2.FILE_KIND_PDF: "application/pdf",
    storage_pb2.FILE_KIND_DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    storage_pb2.FILE_KIND_PPTX: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    storage_pb2.FILE_KIND_TXT: "text/plain; charset=utf-8",
    storage_pb2.FILE_KIND_MD: "text/markdown; charset=utf-8",
}
# Call metadata naming a download's file (binary, so any Unicode name travels as its UTF-8 bytes).
FILE_NAME_METADATA = "x-file-name-bin"


@dataclass(frozen=True, slots=True)
class OwnedFile:
    document_id: uuid.UUID
    file_name: str
    kind: int
    blob_name: str


async def owned_file(conn: Connection, user_id: uuid.UUID, file_id: uuid.UUID) -> OwnedFile:
    row = await conn.fetchrow(
        "SELECT f.document_id, f.file_name, d.kind, d.blob_name FROM uploaded_files f "
        "JOIN documents d ON d.id = f.document_id "
        "WHERE f.id = $1 AND f.user_id = $2 AND d.user_id = $2 AND f.deleted_at IS NULL",
        file_id,
        user_id,
    )
    if row is None:
        raise NotFound("file not found")
    return OwnedFile(row["document_id"], row["file_name"], row["kind"], row["blob_name"])


async def first_index(
    conn: Connection,
    user_id: uuid.UUID,
    document_id: uuid.UUID,
    size: int,
    *,
    page_token: str,
    chunk_id: str,
    page: int,
) -> int:
    """The chunk_index a page of passages starts at: the token's, a little before the named chunk, the
    first passage of the named page or slide, or the file's start."""
    if page_token:
        values = decode_token(page_token, 1)
        if values is None or not isinstance(values[0], int) or isinstance(values[0], bool) or values[0] < 0:
            raise InvalidArgument("page_token is not valid")
        return values[0]
    if chunk_id:
        try:
            wanted = uuid.UUID(chunk_id)
        except ValueError:
            raise InvalidArgument("chunk_id is not a valid id") from None
        index = await conn.fetchval(
            "SELECT chunk_index FROM chunks WHERE id = $1 AND document_id = $2 AND user_id = $3",
            wanted,
            document_id,
            user_id,
        )
        if index is None:
            raise NotFound("the file has no such passage")
        # A quarter of the page before the passage: what leads up to it is on screen too.
        return max(0, int(index) - size // 4)
    if page < 0:
        raise InvalidArgument("page must not be negative")
    if page:
        index = await conn.fetchval(
            "SELECT min(chunk_index) FROM chunks WHERE document_id = $1 AND user_id = $2 AND page >= $3",
            document_id,
            user_id,
            page,
        )
        if index is None:
            raise NotFound("the file has no passage on or after this page")
        return int(index)
    return 0


async def passages(
    conn: Connection, user_id: uuid.UUID, document_id: uuid.UUID, start: int, size: int, prefer: str
) -> list[asyncpg.Record]:
    """Up to ``size + 1`` passages from ``start`` in order, one per place.

    A document embedded again by another model holds a row per model for each place; the row named
    ``prefer`` (the cited chunk) wins its place, so the viewer finds the id it was asked for.
    """
    preferred: uuid.UUID | None = None
    if prefer:
        try:
            preferred = uuid.UUID(prefer)
        except ValueError:
            preferred = None
    # The (document_id, chunk_index, model) unique index serves this range, however deep it starts.
    return await conn.fetch(
        "SELECT DISTINCT ON (chunk_index) id, chunk_index, page, heading, text, char_start, char_end "
        "FROM chunks WHERE document_id = $1 AND user_id = $2 AND chunk_index >= $3 "
        "ORDER BY chunk_index, (id = $5) IS TRUE DESC, model LIMIT $4",
        document_id,
        user_id,
        start,
        size + 1,
        preferred,
    )


def page_of(rows: list[asyncpg.Record], start: int, size: int) -> storage_pb2.ListFileChunksResponse:
    response = storage_pb2.ListFileChunksResponse()
    for row in rows[:size]:
        response.chunks.add(
            chunk_id=str(row["id"]),
            chunk_index=row["chunk_index"],
            page=row["page"],
            heading=row["heading"],
            text=row["text"],
            char_start=row["char_start"],
            char_end=row["char_end"],
        )
    if len(rows) > size:
        response.next_page_token = encode_token([rows[size]["chunk_index"]])
    if start > 0:
        # chunk_index numbers a document's passages 0, 1, 2, ... with no gaps, so the page before
        # starts ``size`` places earlier.
        response.previous_page_token = encode_token([max(0, start - size)])
    return response


async def list_file_chunks(
    conn: Connection, user_id: uuid.UUID, file_id: uuid.UUID, request: storage_pb2.ListFileChunksRequest
) -> storage_pb2.ListFileChunksResponse:
    file = await owned_file(conn, user_id, file_id)
    size = page_size(request.page_size)
    start = await first_index(
        conn,
        user_id,
        file.document_id,
        size,
        page_token=request.page_token,
        chunk_id=request.chunk_id,
        page=request.page,
    )
    rows = await passages(conn, user_id, file.document_id, start, size, request.chunk_id)
    return page_of(rows, start, size)


def media_type(kind: int) -> str:
    return MEDIA_TYPES.get(kind, "application/octet-stream")


async def read_blob(blobs: BlobStore, blob_name: str) -> AsyncIterator[bytes]:
    """The blob's bytes in pieces, each read in a worker thread (the event loop never waits on the disk)."""
    try:
        handle = await asyncio.to_thread(open, blobs.path(blob_name), "rb")
    except FileNotFoundError:
        raise NotFound("the file's content is missing from the blob store") from None
    try:
        while piece := await asyncio.to_thread(handle.read, DOWNLOAD_PIECE_BYTES):
            yield piece
    finally:
        handle.close()
