"""File names as shown (issue 18, "Smaller defects"): right-to-left overrides and other bidi, control
and invisible format characters are stripped where storage takes the name in, so
``invoice\\u202etxt.exe`` can no longer show as ``invoiceexe.txt``."""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage.uploads import clean_file_name

from tests.gateway.conftest import bearer, serve_gateway
from tests.security.test_accounts import storage_server

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("invoice\u202etxt.exe", "invoicetxt.exe"),
        ("\u2067slides\u2069.pdf", "slides.pdf"),
        ("bài\u200bgiảng\ufeff.pdf", "bàigiảng.pdf"),  # zero-width space, BOM
        ("a\u2028b\u2029c\x85d\x1be.txt", "abcde.txt"),  # separators, C1 and C0 controls
        ("Cấu trúc dữ liệu (chương 1).pdf", "Cấu trúc dữ liệu (chương 1).pdf"),
        ("👩\u200d💻 ghi chú.md", "👩\u200d💻 ghi chú.md"),  # the joiner of an emoji sequence stays
        ("C:\\Users\\sv\\bai\u202etap.docx", "baitap.docx"),
        ("\u202e\u202e", "untitled"),
    ],
)
def test_invisible_and_reordering_characters_are_stripped(raw: str, shown: str) -> None:
    assert clean_file_name(raw) == shown


@given(st.text(alphabet=st.sampled_from([*BIDI_CONTROLS, "a", ".", "ấ", " ", "\u200b", "\x00", "/"])))
def test_no_bidi_control_survives(raw: str) -> None:
    name = clean_file_name(raw)
    assert not any(
        unicodedata.bidirectional(ch) in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI") for ch in name
    )
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name)
    assert 1 <= len(name) <= 255 and "/" not in name


@pytest.fixture
async def client(database_url: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        storage_server(database_url, tmp_path) as (address, _),
        serve_gateway({"STORAGE_ADDR": address}, tmp_path) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield http


async def test_an_uploaded_name_is_stored_and_listed_without_its_override(client: httpx.AsyncClient) -> None:
    reply = await client.post(
        "/v1/auth/register",
        json={"email": f"sv{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn", "password": "mật khẩu đúng", "display_name": "SV"},
    )
    token = reply.json()["access_token"]
    names = []
    for raw, text in (("invoice\u202etxt.exe", "Hoá đơn"), ("ghi chú.md\u200f", "# Ghi chú")):
        files = {"file": (raw, f"{text}\n\nSố tiền: 100.000 đ\n".encode(), "text/plain")}
        uploaded = await client.post("/v1/files", files=files, headers=bearer(token))
        assert uploaded.status_code == 200, uploaded.text
        names.append(uploaded.json()["file_name"])
        # The kind comes from the name as shown: a trailing mark hid the Markdown suffix.
        assert uploaded.json()["kind"] == ("FILE_KIND_MD" if raw.startswith("ghi") else "FILE_KIND_TXT")
    assert names == ["invoicetxt.exe", "ghi chú.md"]
    listed = await client.get("/v1/files", headers=bearer(token))
    assert sorted(f["file_name"] for f in listed.json()["files"]) == sorted(names)
