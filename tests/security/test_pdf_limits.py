"""PDFs past pypdf's safety limits (issue 18, "Smaller defects"): the failure names the limit
(File.error_reason and its values) instead of "the parser failed"; through the real parser child."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pypdf
import pytest
from storage.ingest import PermanentFailure

from tests.storage.test_parsing import parse

FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
PAGE = (
    b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents %d 0 R /Resources << /Font << /F1 %d 0 R >> >> >>"
)


def _pdf(objects: list[bytes]) -> bytes:
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def _stream(content: bytes, *, flate: bool = False) -> bytes:
    data = zlib.compress(content, 9) if flate else content
    return (
        b"<< /Length %d%s >>\nstream\n" % (len(data), b" /Filter /FlateDecode" if flate else b"")
        + data
        + b"\nendstream"
    )


def content_bomb() -> bytes:
    """One page whose content stream unpacks to one byte more than pypdf's Flate limit (~75 KB sent)."""
    limit = pypdf.get_configuration().zlib_maximum_output_length
    text = b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET\n"
    content = text + b" " * (limit + 1 - len(text))
    return _pdf(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            PAGE % (2, 4, 5),
            _stream(content, flate=True),
            FONT,
        ]
    )


def deep_page_tree() -> bytes:
    """A page under one more level of /Pages nodes than pypdf allows."""
    depth = pypdf.get_configuration().page_tree_maximum_depth + 1
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    for level in range(depth):  # objects 2 .. depth+1
        number = 2 + level
        parent = b" /Parent %d 0 R" % (number - 1) if level else b""
        objects.append(b"<< /Type /Pages /Kids [%d 0 R] /Count 1%s >>" % (number + 1, parent))
    page = len(objects) + 1
    objects += [PAGE % (page - 1, page + 1, page + 2), _stream(b"BT /F1 12 Tf 72 720 Td (Hello) Tj ET"), FONT]
    return _pdf(objects)


@pytest.mark.parametrize(
    ("make", "reason", "args", "said"),
    [
        (content_bomb, "PDF_STREAM_LIMIT", {"mb": "75"}, "Limit reached while decompressing"),
        (deep_page_tree, "PDF_STRUCTURE_LIMIT", {}, "page tree depth"),
    ],
)
async def test_a_pdf_past_a_reader_limit_says_which(
    tmp_path: Path, make: object, reason: str, args: dict[str, str], said: str
) -> None:
    with pytest.raises(PermanentFailure) as caught:
        await parse(tmp_path, "pdf", make())  # type: ignore[operator]
    assert caught.value.reason == reason and caught.value.reason_args == args
    assert said in str(caught.value) and "parser failed" not in str(caught.value)


def test_the_web_app_says_both_reasons_in_both_languages() -> None:
    source = (Path(__file__).resolve().parents[2] / "services/gateway/web/src/i18n.tsx").read_text()
    for reason in ("PDF_STREAM_LIMIT", "PDF_STRUCTURE_LIMIT"):
        assert source.count(f"'ingest.{reason}':") == 2  # vi and en
    assert source.count("{mb} MB") >= 2
