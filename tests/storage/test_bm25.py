"""BM25's tokenisation and scoring (storage.bm25), against the textbook formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage import bm25


def textbook(texts: list[str], query: list[str]) -> list[float]:
    """BM25 as written in the books, term by term, for comparison."""
    docs = [bm25.document_terms(t) for t in texts]
    n = len(docs)
    average = sum(length for _, length in docs) / n
    scores = []
    for counts, length in docs:
        score = 0.0
        for term in query:
            df = sum(1 for c, _ in docs if term in c)
            tf = counts.get(term, 0)
            if tf:
                idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
                score += idf * tf * (bm25.K1 + 1) / (tf + bm25.K1 * (1 - bm25.B + bm25.B * length / average))
        scores.append(score)
    return scores


def test_terms_are_folded_syllables_and_bigrams_within_a_clause() -> None:
    counts, length = bm25.document_terms("Cấu trúc dữ liệu, CẤU TRÚC cây.")
    assert length == 7
    assert counts["cau"] == 2 and counts["truc"] == 2 and counts["cau truc"] == 2
    assert counts["du lieu"] == 1 and counts["truc cay"] == 1
    assert "lieu cau" not in counts  # the comma ends the clause


def test_query_terms_drop_stop_words_but_keep_their_bigrams() -> None:
    assert bm25.query_terms("là gì") == []
    assert bm25.query_terms("what is the") == []
    terms = bm25.query_terms("Không gian địa chỉ là gì?")
    assert "khong" not in terms and "khong gian" in terms and "gian" in terms
    assert "la gi" not in terms  # two stop words
    assert "chi la" in terms  # one content word


def test_diacritics_on_the_query_decide_which_words_are_stop_words() -> None:
    # "lá" (a leaf) is a content word; "là" (is) is not. Folded, both are "la": a query typed without
    # diacritics cannot tell them apart and drops both.
    assert "la" in bm25.query_terms("nút lá")
    assert "la" not in bm25.query_terms("nút là")
    assert "la" not in bm25.query_terms("nut la")
    assert "nut la" in bm25.query_terms("nut la")


def test_queries_are_bounded() -> None:
    query = " ".join(f"từ{i}" for i in range(5000))
    assert len(bm25.query_terms(query)) == bm25.MAX_QUERY_TERMS
    long_word = "a" * 10_000
    assert bm25.query_terms(long_word) == ["a" * bm25.MAX_TERM_CHARS]
    assert bm25.query_terms("!!! ??? ...") == [] and not bm25.query_words("!!! ??? ...")
    assert bm25.query_words("数据结构")


TEXTS = [
    "Ngăn xếp (stack) hoạt động theo nguyên tắc vào sau ra trước.",
    "Hàng đợi (queue) hoạt động theo nguyên tắc vào trước ra trước.",
    "Cây nhị phân tìm kiếm: khóa nhỏ hơn ở cây con trái, lớn hơn ở cây con phải. Cây cân bằng AVL.",
    "Thuật toán Dijkstra tìm đường đi ngắn nhất khi trọng số không âm.",
]


def test_rank_matches_the_textbook_formula_across_owners() -> None:
    query = bm25.query_terms("cây nhị phân vào sau ra trước ngắn nhất")
    # The same four passages split over two owners (documents): statistics are over both.
    first, second = bm25.build_postings(TEXTS[:2]), bm25.build_postings(TEXTS[2:])
    rows = []
    for owner, postings in (("a", first), ("b", second)):
        for term, items, tfs in zip(postings.terms, postings.items, postings.tfs, strict=True):
            if term in query:
                rows.append((owner, term, items, tfs))
    ranked = bm25.rank(
        rows,
        {"a": first.lengths, "b": second.lengths},
        count=first.count + second.count,
        total_length=first.total_length + second.total_length,
        limit=10,
    )
    expected = textbook(TEXTS, query)
    places: dict[tuple[object, int], int] = {("a", 0): 0, ("a", 1): 1, ("b", 0): 2, ("b", 1): 3}
    assert [places[(s.owner, s.item)] for s in ranked] == sorted(
        (i for i in range(4) if expected[i] > 0), key=lambda i: -expected[i]
    )
    for s in ranked:
        assert math.isclose(s.score, expected[places[(s.owner, s.item)]], rel_tol=1e-5)
    # The rare syllables identify the passage: the stack passage beats the queue passage, which
    # shares "ra trước" with the query but not "vào sau".
    assert places[(ranked[0].owner, ranked[0].item)] in (0, 2)
    assert bm25.rank(rows, {"a": first.lengths, "b": second.lengths}, count=4, total_length=10, limit=1)[0].score > 0


def test_with_offset_moves_item_numbers() -> None:
    postings = bm25.build_postings(["một hai", "hai ba"]).with_offset(5)
    items = dict(zip(postings.terms, postings.items, strict=True))
    assert np.frombuffer(items["hai"], dtype="<i4").tolist() == [5, 6]


@given(st.lists(st.text(max_size=80), min_size=1, max_size=6), st.text(max_size=40))
def test_rank_never_fails_and_orders_by_score(texts: list[str], query: str) -> None:
    postings = bm25.build_postings(texts)
    terms = set(bm25.query_terms(query))
    rows = [("d", t, i, f) for t, i, f in zip(postings.terms, postings.items, postings.tfs, strict=True) if t in terms]
    ranked = bm25.rank(rows, {"d": postings.lengths}, count=postings.count, total_length=postings.total_length, limit=3)
    scores = [s.score for s in ranked]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert len({s.item for s in ranked}) == len(ranked) and all(0 <= s.item < len(texts) for s in ranked)


WORDS = ["cây", "nhị", "phân", "dữ", "liệu", "ngăn", "xếp", "hàng", "đợi", "đồ", "thị", "đỉnh", "cung", "khóa"]


@given(
    st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30), min_size=1, max_size=40),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6),
    st.integers(1, 12),
    st.integers(1, 3),
)
def test_pruning_never_changes_the_top_k(passages: list[list[str]], query: list[str], limit: int, owners: int) -> None:
    # Common words over many passages: the pruned ranking (after the first term) must give exactly
    # the scores of the full one.
    texts = [" ".join(words) for words in passages]
    split = [texts[i::owners] for i in range(owners)]
    built = [bm25.build_postings(part) for part in split if part]
    terms = set(bm25.query_terms(" ".join(query)))
    rows = [
        (n, t, i, f)
        for n, postings in enumerate(built)
        for t, i, f in zip(postings.terms, postings.items, postings.tfs, strict=True)
        if t in terms
    ]
    lengths: dict[object, bytes] = {n: p.lengths for n, p in enumerate(built)}
    count, total = sum(p.count for p in built), sum(p.total_length for p in built)
    full = bm25.rank(rows, lengths, count=count, total_length=total, limit=limit, first_pass_postings=10**9)
    pruned = bm25.rank(rows, lengths, count=count, total_length=total, limit=limit, first_pass_postings=0)
    assert len(full) == len(pruned)
    for a, b in zip(full, pruned, strict=True):
        assert math.isclose(a.score, b.score, rel_tol=1e-5)


def test_a_large_document_is_built_in_parts_with_the_same_postings(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} đoạn {i}" for i in range(50)]
    whole = bm25.build_postings(texts, 7)
    monkeypatch.setattr(bm25, "BUILD_PART", 8)
    parts = bm25.build_postings(texts, 7)
    assert dict(zip(whole.terms, zip(whole.items, whole.tfs, strict=True), strict=True)) == dict(
        zip(parts.terms, zip(parts.items, parts.tfs, strict=True), strict=True)
    )
    assert (whole.lengths, whole.total_length) == (parts.lengths, parts.total_length)
