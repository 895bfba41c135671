"""BM25 over accent-folded syllables and adjacent-syllable bigrams, with its index in PostgreSQL.

Why BM25 and not PostgreSQL's ts_rank_cd: ts_rank_cd has no inverse document frequency, so the
syllables every Vietnamese question shares ("là", "có", "không", "như thế nào") weigh as much as the
rare ones that identify the passage (on a public Vietnamese QA set: recall@5 0.30 against 0.59).

Why bigrams: Vietnamese words are mostly two syllables written apart ("cấu trúc", "dữ liệu"), and a
syllable alone is often ambiguous ("không" in "không gian"); the pair of adjacent syllables is the
word. A query's unigrams that are stop syllables are not scored (they match nearly every passage),
but its bigrams are ("không gian" stays).

The index, per document: one row for each of its distinct terms with the chunks holding it and how
often (``chunk_terms``), and the documents' chunk lengths. Term statistics (document frequency,
number of chunks, average length) are summed at query time over exactly the documents searched
(the caller's ready, live files, or a file_ids filter), so they are the caller's own, replicas keep
nothing, and deleting a file needs no index update. Chat messages get the same, per session.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from storage.textfold import fold

# Stored with each document's index: when the tokenisation changes, bump it and storage re-indexes
# older documents and sessions at start (storage.reindex).
TERMS_VERSION = 1
K1 = 1.2
B = 0.75
# A query is not a document: its first this many distinct terms are scored.
MAX_QUERY_TERMS = 64
MAX_TERM_CHARS = 64
# A chunk's length in the index (uint16); chunking keeps chunks far shorter.
MAX_LENGTH = 65_535
MAX_TF = 255

# A run of text inside which adjacent syllables pair up: punctuation ends it, so "cấu trúc, dữ liệu"
# gives no "truc du".
_CLAUSE = re.compile(r"[^\W_]+(?:[^\S\n]+[^\W_]+)*")
_WORD = re.compile(r"[^\W_]+")

# Syllables that nearly every question or passage holds: function words, question words, copulas,
# pronouns; and English ones. Written with their diacritics: a query typed with diacritics drops
# "là" but keeps "lá" (nút lá, a leaf), "có" but not "cơ"; one typed without drops the folded
# forms. Only a query's unigrams are dropped (the index keeps every term, so changing this list
# needs no re-index), and only where the folded form is rarely a content word ("đã"/"đa" and
# "để"/"đệ quy" are not here: folded, "da" and "de" are content too often).
STOP_WORDS = frozenset(
    [
        "là",
        "có",
        "không",
        "của",
        "và",
        "các",
        "những",
        "được",
        "với",
        "một",
        "trong",
        "này",
        "đó",
        "thì",
        "mà",
        "ở",
        "khi",
        "như",
        "thế",
        "nào",
        "gì",
        "sao",
        "nếu",
        "hay",
        "hoặc",
        "sẽ",
        "bị",
        "rằng",
        "nhiều",
        "ít",
        "ai",
        "ấy",
        "vậy",
        "ạ",
        "ơi",
        "nhé",
        "nhỉ",
        "rồi",
        "hãy",
        "xin",
        "giúp",
        "em",
        "bạn",
        "mình",
        "tôi",
        "the",
        "a",
        "an",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "by",
        "with",
        "from",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "how",
        "why",
        "when",
        "where",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "and",
        "or",
        "not",
        "no",
        "but",
        "if",
        "then",
        "than",
        "so",
        "such",
        "there",
        "here",
        "about",
        "into",
        "over",
        "i",
        "you",
        "he",
        "she",
        "we",
        "they",
        "me",
        "my",
        "your",
        "our",
        "their",
    ]
)
STOP_FOLDED = frozenset(fold(word) for word in STOP_WORDS)
# Letters with Vietnamese diacritics (and đ): a query holding one was typed with diacritics.
_MARKED = re.compile(r"[^\x00-\x7f]")


def _clauses(folded: str) -> list[list[str]]:
    return [_WORD.findall(clause) for clause in _CLAUSE.findall(folded)]


def document_terms(text: str) -> tuple[Counter[str], int]:
    """The terms of one passage with their frequencies, and its length (its number of syllables).

    Terms are folded syllables (English words too) and the pairs of adjacent syllables within a
    clause, joined by a space (a syllable never holds one, so the two kinds cannot collide)."""
    counts: Counter[str] = Counter()
    length = 0
    for words in _clauses(fold(text)):
        words = [w[:MAX_TERM_CHARS] for w in words]
        length += len(words)
        counts.update(words)
        counts.update(f"{a} {b}" for a, b in itertools.pairwise(words))
    return counts, min(length, MAX_LENGTH)


def query_terms(query: str, limit: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct terms a query is scored by: its syllables but stop words, and its bigrams but
    those of two stop words, in order of appearance; bounded (a 10,000-character query is not
    10,000 terms). Empty for a query of stop words only ("là gì", "what is"): nothing to rank by."""
    query = unicodedata.normalize("NFC", query).lower()
    marked = _MARKED.search(query) is not None
    terms: dict[str, None] = {}
    for clause in _CLAUSE.findall(query):
        originals = _WORD.findall(clause)
        words = [fold(w)[:MAX_TERM_CHARS] for w in originals]
        stops = [(w in STOP_WORDS) if marked else (f in STOP_FOLDED) for w, f in zip(originals, words, strict=True)]
        for i, word in enumerate(words):
            if not word:
                continue
            if not stops[i]:
                terms[word] = None
            if i + 1 < len(words) and words[i + 1] and not (stops[i] and stops[i + 1]):
                terms[f"{word} {words[i + 1]}"] = None
            if len(terms) >= limit:
                return list(terms)[:limit]
    return list(terms)


def query_words(query: str) -> bool:
    """Whether a query holds any word at all (letters or digits in any script)."""
    return _WORD.search(query) is not None


def highlight_words(terms: Iterable[str]) -> list[str]:
    """The single words to mark in a snippet, from the scored terms (a bigram marks both words)."""
    words: dict[str, None] = {}
    for term in terms:
        for word in term.split(" "):
            words[word] = None
    return list(words)


@dataclass(frozen=True, slots=True)
class Postings:
    """One document's (or session's) index: for each term, the items holding it and how often, as
    little-endian int32 item numbers and uint8 frequencies; and each item's length (uint16)."""

    terms: list[str]
    items: list[bytes]
    tfs: list[bytes]
    lengths: bytes
    total_length: int

    @property
    def count(self) -> int:
        return len(self.lengths) // 2

    def with_offset(self, offset: int) -> Postings:
        """The same postings with every item number moved up by ``offset``."""
        if offset == 0:
            return self
        shifted = [(np.frombuffer(items, dtype="<i4") + offset).astype("<i4").tobytes() for items in self.items]
        return Postings(self.terms, shifted, self.tfs, self.lengths, self.total_length)


def build_postings(texts: Sequence[str], first_item: int = 0) -> Postings:
    """The postings of ``texts``, numbered ``first_item``, ``first_item + 1``, ... in order."""
    by_term: dict[str, tuple[list[int], list[int]]] = {}
    lengths: list[int] = []
    for offset, text in enumerate(texts):
        counts, length = document_terms(text)
        lengths.append(length)
        item = first_item + offset
        for term, tf in counts.items():
            entry = by_term.get(term)
            if entry is None:
                entry = by_term[term] = ([], [])
            entry[0].append(item)
            entry[1].append(min(tf, MAX_TF))
    terms = list(by_term)
    return Postings(
        terms=terms,
        items=[np.asarray(by_term[t][0], dtype="<i4").tobytes() for t in terms],
        tfs=[np.asarray(by_term[t][1], dtype=np.uint8).tobytes() for t in terms],
        lengths=np.asarray(lengths, dtype="<u2").tobytes(),
        total_length=sum(lengths),
    )


def idf(df: np.ndarray | float, n: int) -> np.ndarray:
    """BM25's inverse document frequency (Lucene's form: never negative)."""
    return np.log1p((n - np.asarray(df, dtype=np.float64) + 0.5) / (np.asarray(df, dtype=np.float64) + 0.5))


@dataclass(frozen=True, slots=True)
class Scored:
    owner: object  # the document (or session) id
    item: int  # the chunk index (or message position) within it
    score: float


def rank(
    postings: Iterable[tuple[object, str, bytes, bytes]],
    lengths: dict[object, bytes],
    *,
    count: int,
    total_length: int,
    limit: int,
) -> list[Scored]:
    """The ``limit`` best items by BM25, best first (ties: owner order, then item).

    ``postings`` are (owner, term, items, tfs) rows of the searched owners for the query's terms;
    ``lengths`` each owner's item lengths; ``count`` and ``total_length`` the number of items and
    their summed length over every searched owner (the collection the statistics describe)."""
    rows = list(postings)
    if not rows or count <= 0 or limit <= 0:
        return []
    avg_length = max(total_length / count, 1.0)
    owners: dict[object, int] = {}
    df: Counter[str] = Counter()
    for owner, term, items, _ in rows:
        owners.setdefault(owner, len(owners))
        df[term] += len(items) // 4
    term_idf = idf(np.fromiter(df.values(), dtype=np.float64), count)
    weights = {term: float(w) for term, w in zip(df, term_idf, strict=True)}
    # One flat score array over the items of the owners that matched, each owner at an offset.
    offsets: dict[object, int] = {}
    norms: list[np.ndarray] = []
    size = 0
    for owner in owners:
        owner_lengths = np.frombuffer(lengths.get(owner, b""), dtype="<u2").astype(np.float64)
        offsets[owner] = size
        norms.append(K1 * (1.0 - B + B * owner_lengths / avg_length))
        size += len(owner_lengths)
    norm = np.concatenate(norms) if norms else np.zeros(0)
    scores = np.zeros(size, dtype=np.float64)
    for owner, term, items, tfs in rows:
        index = np.frombuffer(items, dtype="<i4") + offsets[owner]
        index = index[index < offsets[owner] + len(lengths.get(owner, b"")) // 2]  # a stale posting
        tf = np.frombuffer(tfs, dtype=np.uint8)[: len(index)].astype(np.float64)
        scores[index] += weights[term] * tf * (K1 + 1.0) / (tf + norm[index])
    matched = np.flatnonzero(scores)
    if len(matched) > limit:
        matched = matched[np.argpartition(-scores[matched], limit - 1)[:limit]]
    matched = matched[np.lexsort((matched, -scores[matched]))]
    starts = np.asarray(list(offsets.values()))
    owner_list = list(offsets)
    out: list[Scored] = []
    for flat in matched.tolist():
        slot = int(np.searchsorted(starts, flat, side="right")) - 1
        owner = owner_list[slot]
        out.append(Scored(owner, flat - offsets[owner], float(scores[flat])))
    return out
