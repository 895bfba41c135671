"""A failed document's reason has a stable name and values beside its English text, from the
parser child through the ingestion job to the File message a client reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from storage.db import Database
from storage.ingest import Ingestor, PermanentFailure
from storage.servicer import FILE_SELECT, _file

from tests.storage.documents import encrypt_pdf, make_docx, make_pdf, zip_bomb_docx
from tests.storage.test_ingest_jobs import add_job, db, ingestor  # noqa: F401 (fixtures)
from tests.storage.test_parsing import parse


@pytest.mark.parametrize(
    ("kind", "make", "reason", "args"),
    [
        ("pdf", lambda: encrypt_pdf(make_pdf(["secret notes"])), "PDF_ENCRYPTED", {}),
        ("pdf", lambda: make_pdf(["   "]), "PDF_NO_TEXT", {}),
        ("pdf", lambda: make_pdf(["one", "two"])[:-300], "PDF_DAMAGED", {}),
        ("docx", zip_bomb_docx, "ARCHIVE_HOSTILE", {}),
        ("pptx", lambda: make_docx([("p", "not a deck")])[:2000] + b"\0" * 100, "ARCHIVE_DAMAGED", {}),
        ("txt", lambda: b"caf\xe9 au lait", "TEXT_NOT_UTF8", {"byte": "3"}),
    ],
)
async def test_parser_failures_name_their_reason(
    tmp_path: Path, kind: str, make: object, reason: str, args: dict[str, str]
) -> None:
    with pytest.raises(PermanentFailure) as caught:
        await parse(tmp_path, kind, make())  # type: ignore[operator]
    assert caught.value.reason == reason and caught.value.reason_args == args


async def test_limits_name_their_reason_and_values(tmp_path: Path) -> None:
    small = ("dòng văn bản tiếng Việt " * 1000).encode()
    with pytest.raises(PermanentFailure) as slow:
        await parse(tmp_path, "txt", small * 50, parse_timeout_s=0.05)
    assert slow.value.reason == "PARSE_TIMEOUT" and slow.value.reason_args == {"seconds": "0.05"}
    with pytest.raises(PermanentFailure) as big:
        await parse(tmp_path, "txt", b"word " * 20_000_000, parse_memory_limit_mb=128)
    assert big.value.reason == "TOO_MUCH_MEMORY" and big.value.reason_args == {"mib": "128"}


async def test_a_failed_file_carries_its_reason_and_a_ready_one_none(db: Database, ingestor: Ingestor) -> None:  # noqa: F811
    failing = await add_job(db)
    assert await ingestor._fail(failing, "parsing took longer than 120 s", "PARSE_TIMEOUT", {"seconds": "120"})
    async with db.connection() as conn:
        await conn.execute(
            "INSERT INTO uploaded_files (id, user_id, document_id, file_name) "
            "SELECT gen_random_uuid(), user_id, id, 'cham.pdf' FROM documents WHERE id = $1",
            failing.document_id,
        )
        row = await conn.fetchrow(FILE_SELECT + " WHERE f.document_id = $1", failing.document_id)
    assert row is not None
    file = _file(row)
    assert file.error == "parsing took longer than 120 s"
    assert file.error_reason == "PARSE_TIMEOUT" and dict(file.error_args) == {"seconds": "120"}
    assert json.loads(row["error_args"]) == {"seconds": "120"}
