"""The sandboxed parser and chunker (the real child process), format by format, and hostile files."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from storage.config import Settings
from storage.ingest import IngestSettings, PermanentFailure, parse_in_child
from tokenizers import Tokenizer

from tests.storage.documents import encrypt_pdf, make_docx, make_pdf, make_pptx, xml_bomb_docx, zip_bomb_docx

TOKENIZER_DIR = Settings.from_env({"DATABASE_URL": "postgresql://unused/db"}).tokenizer_dir


def settings(**overrides: object) -> IngestSettings:
    values: dict[str, object] = {
        "workers": 1,
        "max_attempts": 3,
        "lease_s": 30.0,
        "chunk_tokens": 64,
        "overlap_tokens": 16,
        "tokenizer_dir": TOKENIZER_DIR,
        "embedding_dim": 384,
        "parse_memory_limit_mb": 1024,
        "parse_timeout_s": 60.0,
    }
    values.update(overrides)
    return IngestSettings(**values)  # type: ignore[arg-type]


async def parse(tmp_path: Path, kind: str, data: bytes, **overrides: object) -> list[dict[str, object]]:
    path = tmp_path / f"doc.{kind}"
    path.write_bytes(data)
    config = settings(**overrides)
    return await parse_in_child(str(path), kind, config, config.chunk_tokens)


async def test_pdf_chunks_carry_page_numbers(tmp_path: Path) -> None:
    chunks = await parse(tmp_path, "pdf", make_pdf(["Stacks are LIFO.", "Queues are FIFO.", "Heaps keep order."]))
    assert [(c["page"], c["text"]) for c in chunks] == [
        (1, "Stacks are LIFO."),
        (2, "Queues are FIFO."),
        (3, "Heaps keep order."),
    ]


async def test_docx_chunks_carry_heading_path(tmp_path: Path) -> None:
    data = make_docx(
        [
            ("h1", "Chương 1: Cấu trúc dữ liệu"),
            ("p", "Mảng lưu các phần tử liên tiếp."),
            ("h2", "Danh sách liên kết"),
            ("p", "Mỗi nút trỏ tới nút kế tiếp."),
            ("h1", "Chương 2: Đồ thị"),
            ("p", "Đồ thị gồm đỉnh và cạnh."),
        ]
    )
    chunks = await parse(tmp_path, "docx", data)
    by_heading = {c["heading"]: c["text"] for c in chunks}
    assert "Mảng lưu các phần tử liên tiếp." in str(by_heading["Chương 1: Cấu trúc dữ liệu"])
    assert "Mỗi nút trỏ tới nút kế tiếp." in str(by_heading["Chương 1: Cấu trúc dữ liệu > Danh sách liên kết"])
    assert "Đồ thị gồm đỉnh và cạnh." in str(by_heading["Chương 2: Đồ thị"])


async def test_pptx_chunks_carry_slide_numbers_and_titles(tmp_path: Path) -> None:
    data = make_pptx([("Giới thiệu", "Môn học mạng máy tính"), ("Mô hình OSI", "Bảy tầng: vật lý, liên kết dữ liệu")])
    chunks = await parse(tmp_path, "pptx", data)
    assert [(c["page"], c["heading"]) for c in chunks] == [(1, "Giới thiệu"), (2, "Mô hình OSI")]
    assert "Bảy tầng: vật lý, liên kết dữ liệu" in str(chunks[1]["text"])


async def test_markdown_headings_and_exact_diacritics(tmp_path: Path) -> None:
    text = "# Giải thuật\n\nSắp xếp nhanh (quicksort) chia để trị.\n\n## Độ phức tạp\n\nTrung bình O(n log n).\n"
    chunks = await parse(tmp_path, "md", text.encode())
    assert [c["heading"] for c in chunks] == ["Giải thuật", "Giải thuật > Độ phức tạp"]
    assert "Sắp xếp nhanh (quicksort) chia để trị." in str(chunks[0]["text"])


async def test_chunks_respect_token_budget_overlap_and_word_boundaries(tmp_path: Path) -> None:
    words = [f"từkhóa{i}" if i % 7 == 0 else f"word{i}" for i in range(1500)]
    text = " ".join(words)
    chunks = await parse(tmp_path, "txt", text.encode(), chunk_tokens=64, overlap_tokens=16)
    tokenizer = Tokenizer.from_file(f"{TOKENIZER_DIR}/tokenizer.json")
    tokenizer.no_truncation()
    tokenizer.no_padding()  # the model's tokenizer.json pads to 128
    assert len(chunks) > 10
    for chunk in chunks:
        body = str(chunk["text"])
        assert len(tokenizer.encode(body, add_special_tokens=False).ids) <= 64
        start, end = int(str(chunk["char_start"])), int(str(chunk["char_end"]))
        assert text[start:end] == body
        # Never cut mid-word: the characters around the chunk are spaces or the text's ends.
        assert start == 0 or text[start - 1] == " "
        assert end == len(text) or text[end] == " "
    # Consecutive chunks overlap (each starts before the previous one ended) and cover everything.
    for previous, current in itertools.pairwise(chunks):
        assert int(str(current["char_start"])) < int(str(previous["char_end"]))
    assert chunks[0]["char_start"] == 0 and chunks[-1]["char_end"] == len(text)


@pytest.mark.parametrize(
    ("kind", "make", "reason"),
    [
        ("docx", zip_bomb_docx, "decompression bomb"),
        ("docx", xml_bomb_docx, "XML bomb"),
        ("pdf", lambda: make_pdf(["one", "two"])[:-300], "truncated"),
        ("pdf", lambda: encrypt_pdf(make_pdf(["secret notes"])), "encrypted"),
        ("pdf", lambda: make_pdf(["   "]), "no extractable text"),
        ("pptx", lambda: make_docx([("p", "not a deck")])[:2000] + b"\0" * 100, "damaged"),
    ],
)
async def test_hostile_and_broken_files_fail_with_a_reason(
    tmp_path: Path, kind: str, make: object, reason: str
) -> None:
    with pytest.raises(PermanentFailure, match=reason):
        await parse(tmp_path, kind, make())  # type: ignore[operator]


async def test_memory_and_time_limits_end_the_child(tmp_path: Path) -> None:
    small = ("dòng văn bản tiếng Việt " * 1000).encode()
    assert await parse(tmp_path, "txt", small, parse_memory_limit_mb=128)
    with pytest.raises(PermanentFailure, match="more than 128 MiB"):
        await parse(tmp_path, "txt", b"word " * 20_000_000, parse_memory_limit_mb=128)
    with pytest.raises(PermanentFailure, match="longer than"):
        await parse(tmp_path, "txt", small * 50, parse_timeout_s=0.05)
