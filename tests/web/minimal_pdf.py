"""A one-page PDF with real, extractable text, written by hand (no PDF library needed to make it)."""

from __future__ import annotations


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(lines: list[str]) -> bytes:
    """Helvetica text, one line per entry; ASCII only (the standard font's encoding)."""
    stream_ops = ["BT", "/F1 12 Tf", "14 TL", "50 780 Td"]
    for line in lines:
        stream_ops.append(f"({_escape(line)}) Tj T*")
    stream_ops.append("ET")
    content = "\n".join(stream_ops).encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def make_text_pdf(pages: list[list[str]]) -> bytes:
    """Pages of lines in any script, its text extractable (pypdf, pdf.js) through a ToUnicode map.

    The standard Helvetica has no Vietnamese glyphs and a hand-written PDF embeds no font, so each
    character outside printable ASCII gets a free one-byte code (128-255, then 1-31) that the
    font's ToUnicode CMap maps back: the page shows the wrong glyphs for those, but every reader
    extracts the real text, which is what a parser and a benchmark need. At most 159 such
    characters in all (Vietnamese lecture notes use about 130).
    """
    free = [*range(128, 256), *range(1, 32)]
    codes: dict[str, int] = {}
    for line in (line for page in pages for line in page):
        for char in line:
            if not 32 <= ord(char) <= 126 and char not in codes:
                if len(codes) == len(free):
                    raise ValueError(f"more than {len(free)} characters outside printable ASCII")
                codes[char] = free[len(codes)]

    def encode(line: str) -> bytes:
        out = bytearray()
        for char in line:
            code = ord(char) if 32 <= ord(char) <= 126 else codes[char]
            out += (
                b"\\" + bytes([code]) if char in "\\()" else (bytes([code]) if 32 <= code <= 126 else b"\\%03o" % code)
            )
        return bytes(out)

    cmap_entries = "\n".join(f"<{code:02X}> <{ord(char):04X}>" for char, code in codes.items())
    cmap = (
        "/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        "/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        "/CMapName /StudyAssist-UCS def /CMapType 2 def\n"
        "1 begincodespacerange <00> <FF> endcodespacerange\n"
        "1 beginbfrange <20> <7E> <0020> endbfrange\n"
        f"{len(codes)} beginbfchar\n{cmap_entries}\nendbfchar\n"
        "endcmap CMapName currentdict /CMap defineresource pop end end"
    ).encode("ascii")
    # Objects: 1 catalog, 2 page tree, 3 font, 4 its ToUnicode map, then each page and its content.
    first_page = 5
    kids = " ".join(f"{first_page + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding /ToUnicode 4 0 R >>",
        b"<< /Length " + str(len(cmap)).encode() + b" >>\nstream\n" + cmap + b"\nendstream",
    ]
    for i, lines in enumerate(pages):
        ops = b"BT\n/F1 10 Tf\n13 TL\n40 800 Td\n" + b"".join(b"(" + encode(line) + b") Tj T*\n" for line in lines)
        content = ops + b"ET"
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] /Contents {first_page + 2 * i + 1} 0 R"
            " /Resources << /Font << /F1 3 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
