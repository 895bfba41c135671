"""Real documents built on the fly: PDF (hand-written, one text page each), DOCX, PPTX, and bombs."""

from __future__ import annotations

import io
import struct
import zipfile

import docx
import pptx
import pypdf


def make_pdf(pages: list[str]) -> bytes:
    """A valid PDF whose page i shows pages[i] (ASCII) in Helvetica."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    font_id = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        content_id = 4 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content_id} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
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


def encrypt_pdf(data: bytes, password: str = "secret") -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=password, owner_password=password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(blocks: list[tuple[str, str]]) -> bytes:
    """blocks: (style, text) with style "h1", "h2" or "p"."""
    document = docx.Document()
    for style, text in blocks:
        if style.startswith("h"):
            document.add_heading(text, level=int(style[1:]))
        else:
            document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx(slides: list[tuple[str, str]]) -> bytes:
    """slides: (title, body)."""
    presentation = pptx.Presentation()
    layout = presentation.slide_layouts[1]  # title and content
    for title, body in slides:
        slide = presentation.slides.add_slide(layout)
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
    out = io.BytesIO()
    presentation.save(out)
    return out.getvalue()


def zip_bomb_docx(megabytes: int = 100) -> bytes:
    """A DOCX-shaped package with one part that inflates from ~0.3 MB to ``megabytes`` of zeros."""
    out = io.BytesIO()
    base = zipfile.ZipFile(io.BytesIO(make_docx([("p", "hello")])))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in base.infolist():
            archive.writestr(item, base.read(item))
        with archive.open("word/media/image1.bin", "w", force_zip64=True) as part:
            block = bytes(1024 * 1024)
            for _ in range(megabytes):
                part.write(block)
    return out.getvalue()


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b']>\n<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
    b"<w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p></w:body></w:document>"
)


def xml_bomb_docx() -> bytes:
    """A DOCX whose main part is the billion-laughs entity expansion."""
    out = io.BytesIO()
    base = zipfile.ZipFile(io.BytesIO(make_docx([("p", "hello")])))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in base.infolist():
            archive.writestr(item, BILLION_LAUGHS if item.filename == "word/document.xml" else base.read(item))
    return out.getvalue()


def many_parts_zip(count: int) -> bytes:
    """A ZIP package listing ``count`` empty parts (beside a DOCX's own)."""
    out = io.BytesIO()
    base = zipfile.ZipFile(io.BytesIO(make_docx([("p", "hello")])))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for item in base.infolist():
            archive.writestr(item, base.read(item))
        for number in range(count):
            archive.writestr(f"p/{number}", b"")
    return out.getvalue()


def _end_record_at(data: bytes) -> int:
    at = data.rfind(b"PK\x05\x06")
    assert at >= 0
    return at


def with_declared_count(data: bytes, count: int) -> bytes:
    """The archive with another entry count in its end record (its central directory unchanged)."""
    at = _end_record_at(data)
    return data[: at + 8] + struct.pack("<HH", count, count) + data[at + 12 :]


def with_zip64_claim(data: bytes, count: int, directory_bytes: int) -> bytes:
    """The archive with ZIP64 end records (which zipfile trusts over the plain one) claiming ``count``
    entries in a central directory of ``directory_bytes``."""
    at = _end_record_at(data)
    offset = struct.unpack_from("<L", data, at + 16)[0]
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, directory_bytes, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    end = bytearray(data[at:])
    end[8:20] = struct.pack("<HHLL", 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    return data[:at] + record + locator + bytes(end)


def with_declared_size(data: bytes, name: str, size: int) -> bytes:
    """The archive with part ``name``'s uncompressed size in the central directory set to ``size``."""
    out = bytearray(data)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        name_length = struct.unpack_from("<H", out, at + 28)[0]
        if out[at + 46 : at + 46 + name_length] == name.encode():
            struct.pack_into("<L", out, at + 24, size)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 46)
    raise KeyError(name)


def lying_size_docx(real_bytes: int = 8 * 1024 * 1024, declared: int = 64 * 1024) -> bytes:
    """A DOCX with a part of ``real_bytes`` zeros whose central directory declares only ``declared``."""
    out = io.BytesIO()
    base = zipfile.ZipFile(io.BytesIO(make_docx([("p", "hello")])))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in base.infolist():
            archive.writestr(item, base.read(item))
        archive.writestr("word/media/image1.bin", bytes(real_bytes))
    return with_declared_size(out.getvalue(), "word/media/image1.bin", declared)
