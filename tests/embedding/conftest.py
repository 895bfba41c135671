"""Embedding fixtures: one real model shared by the in-process servers of this package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from embedding.config import Settings
from embedding.model import SentenceEncoder, packaged_model_dir
from embedding.server import assemble
from sentence_transformers import SentenceTransformer
from studyassist.core.server import Server

# Vietnamese (with and without diacritics) and English, short and long, as students write them.
TEXTS = [
    "Học viện Công nghệ Bưu chính Viễn thông đào tạo kỹ sư công nghệ thông tin.",
    "Mạng máy tính là tập hợp các máy tính được kết nối với nhau để chia sẻ tài nguyên.",
    "Giai thuat sap xep nhanh co do phuc tap trung binh la O(n log n).",
    "Hãy giải thích mô hình OSI gồm bảy tầng và chức năng của từng tầng.",
    "A linked list stores elements in nodes that point to the next node.",
    "Explain the difference between TCP and UDP in two sentences.",
    "Dijkstra's algorithm finds shortest paths from a single source in a graph with non-negative weights.",
    "xin chào",
    "",
    "Cơ sở dữ liệu quan hệ lưu trữ dữ liệu trong các bảng; khóa chính xác định duy nhất mỗi hàng. " * 20,
]


def settings(**overrides: object) -> Settings:
    base = Settings.from_env({"EMBEDDING_PORT": "0", "EMBEDDING_MAX_WAIT_MS": "5"})
    return Settings(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def encoder() -> SentenceEncoder:
    return SentenceEncoder(device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def reference_model() -> SentenceTransformer:
    return SentenceTransformer(str(packaged_model_dir()), device="cpu")


Build = Callable[[], Awaitable[tuple[Server, int]]]


def builder(
    encoder: SentenceEncoder, *, redis_url: str = "", cache_prefix: str = "test:", **overrides: object
) -> Build:
    async def build() -> tuple[Server, int]:
        return assemble(encoder, settings(**overrides), redis_url=redis_url, cache_prefix=cache_prefix)

    return build
