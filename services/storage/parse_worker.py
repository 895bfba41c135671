"""The document parser and chunker, run as a child process with memory and time limits.

``python -m storage.parse_worker '<json request>'`` takes one JSON request as its argument
({"path", "kind", "tokenizer_dir", "chunk_tokens", "overlap_tokens", "memory_limit_mb"}) and writes
one JSON line on stdout: {"chunks": [{text, page, heading, char_start, char_end}, ...]} or
{"error": "<reason a student can read>"}. It never imports the server's modules: a hostile file
can at worst exhaust this process's own memory limit or time, never the service.
"""

from __future__ import annotations

import copy
import json
import re
import resource
import struct
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# Limits checked before anything is decompressed (DOCX and PPTX are ZIP packages).
MAX_ZIP_ENTRIES = 5000
# zipfile reads and parses the whole central directory (its declared byte size; it ignores the declared
# entry count), so its size is bounded too: a generous 1 KiB per declared entry (an Office part's is
# about 100 bytes), plus slack.
CENTRAL_DIRECTORY_BYTES_PER_ENTRY = 1024
CENTRAL_DIRECTORY_SLACK_BYTES = 64 * 1024
MAX_UNCOMPRESSED_BYTES = 400 * 1024 * 1024
MAX_ENTRY_RATIO = 200  # uncompressed / compressed, for entries over 1 MiB
RATIO_CHECK_MIN_BYTES = 1024 * 1024
# Long sections are tokenized in blocks of about this many characters (bounded memory).
BLOCK_CHARS = 100_000


class ParseFailure(Exception):
    """A file we cannot use, with a reason a student can read, and its stable name (``reason``)
    and values (``args``) for a client to say it in the student's language (File.error_reason)."""

    def __init__(self, message: str, reason: str = "UNREADABLE", args: dict[str, str | int] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.reason_args = {key: str(value) for key, value in (args or {}).items()}


@dataclass(slots=True)
class Section:
    text: str
    page: int = 0
    heading: str = ""


# ---------------------------------------------------------------- formats


def parse_text(path: str) -> list[Section]:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return [Section(data.decode("utf-8-sig"))]
    except UnicodeDecodeError as exc:
        raise ParseFailure(
            f"the text file is not valid UTF-8 (byte {exc.start})", "TEXT_NOT_UTF8", {"byte": exc.start}
        ) from None


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")


def parse_markdown(path: str) -> list[Section]:
    """Sections split at Markdown headings; each carries its heading path ("A > B")."""
    (whole,) = parse_text(path)
    sections: list[Section] = []
    path_titles: list[tuple[int, str]] = []
    current: list[str] = []
    in_code = False

    def flush() -> None:
        text = "".join(current)
        if text.strip():
            sections.append(Section(text, 0, " > ".join(t for _, t in path_titles)))
        current.clear()

    for line in whole.text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _MD_HEADING.match(line.rstrip("\r\n"))
        if match:
            flush()
            level = len(match.group(1))
            path_titles = [(lvl, t) for lvl, t in path_titles if lvl < level] + [(level, match.group(2).strip())]
        current.append(line)
    flush()
    return sections


# pypdf's messages for its size limits on what a stream unpacks to (Flate, LZW, run-length, JBIG2,
# images, decoding work); its other limits are on structure (page tree, outline, form fields, name
# trees: depth and entries; arrays, dictionaries, tokens).
_PDF_STREAM_LIMIT = re.compile(
    r"Limit reached while decompressing|stream length|decoding exceeded|buffer size|image size|JBIG2"
)


def _pdf_limit(message: str, configuration: Any) -> ParseFailure:
    """Which of pypdf's safety limits the PDF went past (without one, pypdf's error failed the parser
    as a whole: "the parser failed")."""
    detail = message.splitlines()[0][:200] if message else "LimitReachedError"
    if _PDF_STREAM_LIMIT.search(message):
        mb = int(configuration.zlib_maximum_output_length) // 1_000_000
        return ParseFailure(
            f"a stream in the PDF unpacks to more than the reader's limit of {mb} MB ({detail})",
            "PDF_STREAM_LIMIT",
            {"mb": mb},
        )
    return ParseFailure(
        f"the PDF's structure is nested too deep or has too many entries for the reader ({detail})",
        "PDF_STRUCTURE_LIMIT",
    )


def parse_pdf(path: str) -> list[Section]:
    import pypdf
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 2048))
        tail = f.read()
    if b"%%EOF" not in tail:
        raise ParseFailure("the PDF is truncated or damaged (it has no end-of-file marker)", "PDF_DAMAGED")
    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            try:
                decrypted = bool(reader.decrypt(""))
            except (DependencyError, NotImplementedError):
                decrypted = False
            if not decrypted:
                raise ParseFailure("the PDF is encrypted with a password; upload an unprotected copy", "PDF_ENCRYPTED")
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            if text.strip():
                sections.append(Section(text, number))
    except FileNotDecryptedError:
        raise ParseFailure(
            "the PDF is encrypted with a password; upload an unprotected copy", "PDF_ENCRYPTED"
        ) from None
    except LimitReachedError as exc:
        raise _pdf_limit(str(exc), pypdf.get_configuration()) from None
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise ParseFailure(
            f"the PDF is damaged and cannot be read ({type(exc).__name__}: {exc})"[:300], "PDF_DAMAGED"
        ) from None
    if not sections:
        raise ParseFailure(
            "the PDF has no extractable text (a scanned PDF needs OCR, which is not supported)", "PDF_NO_TEXT"
        )
    return sections


# The ZIP end records, as zipfile reads them (APPNOTE 4.3.14 to 4.3.16).
_EOCD = struct.Struct("<4s4H2LH")  # signature, disk, directory's disk, entries here, entries, size, offset, comment
_EOCD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, directory record's disk, its offset, disks
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
# signature, record size, versions, disks, entries here, entries, size, offset
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_EOCD_SIGNATURE = b"PK\x06\x06"


def zip_directory_size(path: str) -> tuple[int, int]:
    """(entries, central directory bytes) as the archive's end records declare them.

    Reads only the end of the file, and finds the records where zipfile will (the end record with no
    comment, else the last signature in the last 64 KiB; a ZIP64 locator and record right before it),
    so the numbers are the ones zipfile would act on. ParseFailure when there is no end record or the
    archive spans several disks.
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        tail_size = min(size, _ZIP64_EOCD.size + _ZIP64_LOCATOR.size + _EOCD.size + 0xFFFF)
        f.seek(size - tail_size)
        tail = f.read(tail_size)
    at = len(tail) - _EOCD.size
    if at < 0 or tail[at : at + 4] != _EOCD_SIGNATURE or tail[-2:] != b"\0\0":
        at = tail.rfind(_EOCD_SIGNATURE, max(0, len(tail) - _EOCD.size - 0xFFFF))
        if at < 0 or at + _EOCD.size > len(tail):
            raise ParseFailure("the document is a damaged ZIP archive (no end of central directory)", "ARCHIVE_DAMAGED")
    _, disk, directory_disk, _, entries, directory_bytes, _, _ = _EOCD.unpack_from(tail, at)
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == _ZIP64_LOCATOR_SIGNATURE:
        _, zip64_disk, _, disks = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        if zip64_disk != 0 or disks > 1:
            raise ParseFailure("the document is a ZIP archive spanning several disks", "ARCHIVE_DAMAGED")
        record_at = locator_at - _ZIP64_EOCD.size
        if record_at >= 0 and tail[record_at : record_at + 4] == _ZIP64_EOCD_SIGNATURE:
            fields = _ZIP64_EOCD.unpack_from(tail, record_at)
            disk, directory_disk, entries, directory_bytes = fields[4], fields[5], fields[7], fields[8]
    if disk != 0 or directory_disk != 0:
        raise ParseFailure("the document is a ZIP archive spanning several disks", "ARCHIVE_DAMAGED")
    return entries, directory_bytes


def check_zip_directory(path: str) -> None:
    """Refuse an archive whose central directory is too big to read, before zipfile reads it."""
    entries, directory_bytes = zip_directory_size(path)
    if entries > MAX_ZIP_ENTRIES:
        raise ParseFailure(
            f"the document has {entries} parts (at most {MAX_ZIP_ENTRIES} allowed)",
            "TOO_MANY_PARTS",
            {"parts": entries, "max": MAX_ZIP_ENTRIES},
        )
    if directory_bytes > CENTRAL_DIRECTORY_SLACK_BYTES + entries * CENTRAL_DIRECTORY_BYTES_PER_ENTRY:
        raise ParseFailure(
            f"the document's table of {entries} parts takes {directory_bytes} bytes: a damaged or hostile archive",
            "ARCHIVE_HOSTILE",
        )


def check_office_package(path: str) -> None:
    """Refuse decompression bombs and XML entity bombs before any parser inflates a byte."""
    try:
        check_zip_directory(path)
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ParseFailure(f"the document is a damaged ZIP archive ({exc})", "ARCHIVE_DAMAGED") from None
    with archive:
        entries = archive.infolist()
        if len(entries) > MAX_ZIP_ENTRIES:
            raise ParseFailure(
                f"the document has {len(entries)} parts (at most {MAX_ZIP_ENTRIES} allowed)",
                "TOO_MANY_PARTS",
                {"parts": len(entries), "max": MAX_ZIP_ENTRIES},
            )
        declared = sum(e.file_size for e in entries)
        if declared > MAX_UNCOMPRESSED_BYTES:
            raise ParseFailure(
                f"the document would expand to {declared // 2**20} MiB (at most "
                f"{MAX_UNCOMPRESSED_BYTES // 2**20} MiB): a possible decompression bomb",
                "ARCHIVE_HOSTILE",
            )
        for entry in entries:
            if entry.file_size > RATIO_CHECK_MIN_BYTES and entry.file_size > MAX_ENTRY_RATIO * max(
                entry.compress_size, 1
            ):
                raise ParseFailure(
                    f"part {entry.filename!r} is compressed {entry.file_size // max(entry.compress_size, 1)}:1 "
                    "(a possible decompression bomb)",
                    "ARCHIVE_HOSTILE",
                )
        # Declared sizes can lie: inflate each part in bounded pieces, counting real bytes.
        total = 0
        for entry in entries:
            real = 0
            is_xml = entry.filename.endswith((".xml", ".rels"))
            carry = b""
            # zipfile stops reading a part at its declared size (and then fails on the checksum): read
            # through a copy declaring the whole budget, so a part that inflates past what it declares
            # is caught as such.
            probe = copy.copy(entry)
            probe.file_size = MAX_UNCOMPRESSED_BYTES + 1
            try:
                with archive.open(probe) as stream:
                    while piece := stream.read(256 * 1024):
                        real += len(piece)
                        total += len(piece)
                        if real > entry.file_size or total > MAX_UNCOMPRESSED_BYTES:
                            raise ParseFailure(
                                f"part {entry.filename!r} expands beyond its declared size "
                                "(a possible decompression bomb)",
                                "ARCHIVE_HOSTILE",
                            )
                        if is_xml:
                            window = (carry + piece).upper()
                            if b"<!DOCTYPE" in window or b"<!ENTITY" in window:
                                raise ParseFailure(
                                    f"part {entry.filename!r} declares XML entities, which Office documents "
                                    "never do (a possible XML bomb)",
                                    "ARCHIVE_HOSTILE",
                                )
                            carry = piece[-16:]
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
                raise ParseFailure(f"the document is damaged ({exc})", "ARCHIVE_DAMAGED") from None


_HEADING_STYLE = re.compile(r"^(?:heading|title)\s*(\d*)$", re.IGNORECASE)


def parse_docx(path: str) -> list[Section]:
    check_office_package(path)
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(path)
        sections: list[Section] = []
        titles: list[tuple[int, str]] = []
        current: list[str] = []

        def flush() -> None:
            text = "\n".join(current)
            if text.strip():
                sections.append(Section(text, 0, " > ".join(t for _, t in titles)))
            current.clear()

        for block in document.iter_inner_content():
            if isinstance(block, Paragraph):
                style = block.style.name if block.style is not None else ""
                match = _HEADING_STYLE.match(style or "")
                text = block.text
                if match and text.strip():
                    flush()
                    level = int(match.group(1) or 0)
                    titles = [(lvl, t) for lvl, t in titles if lvl < level] + [(level, text.strip())]
                current.append(text)
            elif isinstance(block, Table):
                for row in block.rows:
                    current.append(" | ".join(cell.text.strip() for cell in row.cells))
        flush()
    except ParseFailure:
        raise
    except Exception as exc:  # python-docx raises many kinds on damaged files
        raise ParseFailure(
            f"the Word document cannot be read ({type(exc).__name__}: {exc})"[:300], "DOCX_DAMAGED"
        ) from None
    if not sections:
        raise ParseFailure("the Word document has no text", "NO_TEXT")
    return sections


def _shape_texts(shapes: Any) -> Iterator[str]:
    for shape in shapes:
        if getattr(shape, "shape_type", None) == 6:  # MSO_SHAPE_TYPE.GROUP
            yield from _shape_texts(shape.shapes)
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            yield shape.text_frame.text
        elif getattr(shape, "has_table", False) and shape.has_table:
            for row in shape.table.rows:
                yield " | ".join(cell.text.strip() for cell in row.cells)


def parse_pptx(path: str) -> list[Section]:
    check_office_package(path)
    import pptx

    try:
        presentation = pptx.Presentation(path)
        sections = []
        for number, slide in enumerate(presentation.slides, start=1):
            title_shape = slide.shapes.title
            title = title_shape.text_frame.text.strip() if title_shape is not None else ""
            texts = [t for t in _shape_texts(slide.shapes) if t.strip()]
            if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
                notes = slide.notes_slide.notes_text_frame.text
                if notes.strip():
                    texts.append(notes)
            if texts:
                sections.append(Section("\n".join(texts), number, title))
    except Exception as exc:  # python-pptx raises many kinds on damaged files
        raise ParseFailure(
            f"the PowerPoint file cannot be read ({type(exc).__name__}: {exc})"[:300], "PPTX_DAMAGED"
        ) from None
    if not sections:
        raise ParseFailure("the presentation has no text", "NO_TEXT")
    return sections


PARSERS = {"txt": parse_text, "md": parse_markdown, "pdf": parse_pdf, "docx": parse_docx, "pptx": parse_pptx}


# ---------------------------------------------------------------- chunking


def _blocks(text: str) -> Iterator[tuple[int, str]]:
    """(offset, block) pieces of at most about BLOCK_CHARS, split at line ends or spaces."""
    start = 0
    while start < len(text):
        end = min(len(text), start + BLOCK_CHARS)
        if end < len(text):
            cut = text.rfind("\n", start + BLOCK_CHARS // 2, end)
            if cut < 0:
                cut = text.rfind(" ", start + BLOCK_CHARS // 2, end)
            if cut > start:
                end = cut + 1
        yield start, text[start:end]
        start = end


def chunk_sections(sections: list[Section], tokenizer: Any, size: int, overlap: int) -> list[dict[str, Any]]:
    """Windows of at most ``size`` tokens overlapping by about ``overlap``, cut only between words."""
    chunks: list[dict[str, Any]] = []
    for section in sections:
        for block_offset, block in _blocks(section.text.replace("\x00", " ")):
            encoding = tokenizer.encode(block, add_special_tokens=False)
            offsets: list[tuple[int, int]] = encoding.offsets
            n = len(offsets)
            if n == 0:
                continue
            # A cut before token i is clean when whitespace separates it from token i-1.
            clean = [i == 0 or offsets[i][0] > offsets[i - 1][1] for i in range(n)]
            word_ids = encoding.word_ids

            def cut_before(limit: int, floor: int, _clean: list[bool] = clean, _ids: list[Any] = word_ids) -> int:
                for i in range(limit, floor, -1):
                    if _clean[i]:
                        return i
                # One "word" longer than a chunk (a URL, a formula): cut between pre-tokenizer words.
                for i in range(limit, floor, -1):
                    if _ids[i] != _ids[i - 1]:
                        return i
                return limit

            start = 0
            while start < n:
                end = n if start + size >= n else cut_before(start + size, start)
                char_start, char_end = offsets[start][0], offsets[end - 1][1]
                text = block[char_start:char_end].strip()
                if text:
                    chunks.append(
                        {
                            "text": text,
                            "page": section.page,
                            "heading": section.heading[:500],
                            "char_start": block_offset + char_start,
                            "char_end": block_offset + char_end,
                        }
                    )
                if end >= n:
                    break
                next_start = end - overlap
                start = cut_before(next_start, start) if next_start > start else end
    return chunks


def _too_big(request: dict[str, Any]) -> dict[str, Any]:
    mib = request["memory_limit_mb"]
    return {
        "error": f"the document needs more than {mib} MiB to parse",
        "reason": "TOO_MUCH_MEMORY",
        "args": {"mib": str(mib)},
    }


def run(request: dict[str, Any]) -> dict[str, Any]:
    limit = int(request["memory_limit_mb"]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    kind = request["kind"]
    try:
        sections = PARSERS[kind](request["path"])
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(f"{request['tokenizer_dir']}/tokenizer.json")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        chunks = chunk_sections(sections, tokenizer, int(request["chunk_tokens"]), int(request["overlap_tokens"]))
    except ParseFailure as exc:
        return {"error": str(exc), "reason": exc.reason, "args": exc.reason_args}
    except MemoryError:
        return _too_big(request)
    if not chunks:
        return {"error": "the document has no text", "reason": "NO_TEXT", "args": {}}
    return {"chunks": chunks}


def main() -> None:
    request = json.loads(sys.argv[1])
    try:
        result = run(request)
    except MemoryError:
        result = _too_big(request)
    sys.stdout.write(json.dumps(result, ensure_ascii=False))
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
