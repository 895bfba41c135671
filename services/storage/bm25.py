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
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from studyassist.core.stopwords import STOP_WORDS

from storage.textfold import fold, fold_fast

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
_CLAUSE_BREAK = re.compile(r"[^\w \t]|_")
_WORD = re.compile(r"[^\W_]+")
_PAIR = "{} {}".format

STOP_FOLDED = frozenset(fold(word) for word in STOP_WORDS)
# Letters with Vietnamese diacritics (and đ): a query holding one was typed with diacritics.
_MARKED = re.compile(r"[^\x00-\x7f]")


def _clauses(text: str) -> list[list[str]]:
    """The words of each clause of ``text``: anything but letters, digits, spaces and tabs ends one
    (a line break, punctuation), and the words are what lies between spaces within it."""
    return [words for part in _CLAUSE_BREAK.split(text) if (words := part.split())]


def passage_tokens(text: str) -> tuple[list[str], int]:
    """The term occurrences of one passage, in order, and its length (its number of syllables).

    Terms are folded syllables (English words too) and the pairs of adjacent syllables within a
    clause, joined by a space (a syllable never holds one, so the two kinds cannot collide)."""
    tokens: list[str] = []
    length = 0
    for words in _clauses(fold_fast(text)):
        if max(map(len, words)) > MAX_TERM_CHARS:
            words = [w[:MAX_TERM_CHARS] for w in words]
        length += len(words)
        tokens += words
        tokens += map(_PAIR, words, words[1:])
    return tokens, min(length, MAX_LENGTH)


def document_terms(text: str) -> tuple[Counter[str], int]:
    """The terms of one passage with their frequencies, and its length."""
    tokens, length = passage_tokens(text)
    return Counter(tokens), length


def query_terms(query: str, limit: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct terms a query is scored by: its syllables but stop words, and its bigrams but
    those of two stop words, in order of appearance; bounded (a 10,000-character query is not
    10,000 terms). Empty for a query of stop words only ("là gì", "what is"): nothing to rank by."""
    query = unicodedata.normalize("NFC", query).lower()
    marked = _MARKED.search(query) is not None
    terms: dict[str, None] = {}
    for originals in _clauses(query):
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


def _build_part(texts: Sequence[str], first_item: int) -> Postings:
    """The postings of a part of a document: its tokens are collected as they come, numbered by one
    dict built from them, and numpy counts and groups the (term, item) pairs (several times faster
    than counting each passage in Python)."""
    tokens: list[str] = []
    per_item = array("q")
    lengths = array("H")
    for text in texts:
        passage, length = passage_tokens(text)
        tokens += passage
        per_item.append(len(passage))
        lengths.append(length)
    vocabulary = dict(zip(dict.fromkeys(tokens), itertools.count()))
    term_ids = np.fromiter(map(vocabulary.__getitem__, tokens), dtype=np.int64, count=len(tokens))
    items = np.repeat(np.arange(len(texts), dtype=np.int64), np.frombuffer(per_item, dtype=np.int64))
    count = len(texts)
    keys, tfs = np.unique(
        term_ids * max(count, 1) + items,
        return_counts=True,
    )
    term_of = keys // max(count, 1)
    item_of = (keys % max(count, 1) + first_item).astype("<i4")
    tf_of = np.minimum(tfs, MAX_TF).astype(np.uint8)
    starts = np.flatnonzero(np.diff(term_of, prepend=-1))
    ends = np.append(starts[1:], len(keys)) if len(keys) else starts
    terms = list(vocabulary)
    lengths_array = np.frombuffer(lengths, dtype=np.uint16)
    return Postings(
        terms=[terms[t] for t in term_of[starts].tolist()],
        items=[item_of[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
        tfs=[tf_of[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
        lengths=lengths_array.astype("<u2").tobytes(),
        total_length=int(lengths_array.sum()),
    )


# Passages tokenised at once by build_postings: their tokens are held as strings until counted
# (about 300 a passage), so a 70,000-chunk text file is indexed a part at a time in bounded memory.
BUILD_PART = 4096


def build_postings(texts: Sequence[str], first_item: int = 0) -> Postings:
    """The postings of ``texts``, numbered ``first_item``, ``first_item + 1``, ... in order."""
    if len(texts) <= BUILD_PART:
        return _build_part(texts, first_item)
    merged: dict[str, tuple[list[bytes], list[bytes]]] = {}
    lengths: list[bytes] = []
    total = 0
    for start in range(0, len(texts), BUILD_PART):
        part = _build_part(texts[start : start + BUILD_PART], first_item + start)
        for term, items, tfs in zip(part.terms, part.items, part.tfs, strict=True):
            entry = merged.setdefault(term, ([], []))
            entry[0].append(items)  # parts come in order: items stay ascending
            entry[1].append(tfs)
        lengths.append(part.lengths)
        total += part.total_length
    return Postings(
        terms=list(merged),
        items=[b"".join(items) for items, _ in merged.values()],
        tfs=[b"".join(tfs) for _, tfs in merged.values()],
        lengths=b"".join(lengths),
        total_length=total,
    )


def idf(df: np.ndarray | float, n: int) -> np.ndarray:
    """BM25's inverse document frequency (Lucene's form: never negative)."""
    return np.log1p((n - np.asarray(df, dtype=np.float64) + 0.5) / (np.asarray(df, dtype=np.float64) + 0.5))


# The collection size below which coverage's weights count as if it were this large: in a student's
# one file of three chunks every word the file holds has an idf near 0 and every other the most, so a
# question on it weighed almost nothing it found. Smoothed so, small collections weigh terms nearly
# alike; from this size on (the evaluation's 797 chunks), the weights are the plain idf.
COVERAGE_MIN_COLLECTION = 500


def term_weights(terms: Sequence[str], df: Mapping[str, int], count: int) -> dict[str, float]:
    """Each query term's idf over the searched collection (``count`` items), a term that no item holds
    included: it weighs most, as a question's words the material lacks should."""
    frequencies = np.fromiter((df.get(t, 0) for t in terms), dtype=np.float64, count=len(terms))
    values = idf(frequencies, max(count, COVERAGE_MIN_COLLECTION))
    return dict(zip(terms, values.tolist(), strict=True))


def coverage(weights: Mapping[str, float], text: str) -> float:
    """The idf-weighted share of the query's terms that ``text`` holds, 0..1: how much of what the
    question asks about the passage mentions. Unlike a BM25 score it is comparable across questions,
    so one threshold can tell a passage about the question from one sharing a common word with it."""
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    tokens = set(passage_tokens(text)[0])
    return sum(w for term, w in weights.items() if _holds(tokens, term)) / total


# English inflections a passage may use where the question does not ("what does recursion use" and
# "recursion uses the call stack"). No folded Vietnamese syllable ends in one of them, so Vietnamese
# terms match exactly. Coverage only: the ranking's terms stay exact.
_INFLECTIONS = ("s", "es", "d", "ed", "ing", "er", "ers")


def _forms(word: str) -> set[str]:
    if not word.isascii() or len(word) < 3:
        return {word}
    stems = {word} | {word[: -len(end)] for end in _INFLECTIONS if word.endswith(end) and len(word) - len(end) >= 3}
    return stems | {stem + end for stem in stems for end in _INFLECTIONS}


def _holds(tokens: set[str], term: str) -> bool:
    if term in tokens:
        return True
    words = term.split(" ")
    return any(" ".join(form) in tokens for form in itertools.product(*map(_forms, words)))


@dataclass(frozen=True, slots=True)
class Scored:
    owner: object  # the document (or session) id
    item: int  # the chunk index (or message position) within it
    score: float


# Postings the rarest query terms bring before rank first asks whether the rest can be pruned.
FIRST_PASS_POSTINGS = 20_000
# Scores the pruning floor is taken from, at most (a spread sample of the rest).
FLOOR_SAMPLE = 16_384


def _floor(scores: np.ndarray, limit: int) -> float:
    """A floor under the ``limit``-th best score: that of the scores, or of an evenly spread sample of
    them (a subset's k-th best is never above the whole set's): selecting among 200,000 scores with
    many ties took 9 ms."""
    sample = scores[:: len(scores) // FLOOR_SAMPLE + 1] if len(scores) > FLOOR_SAMPLE else scores
    positive = sample[sample > 0]
    if len(positive) < limit:
        return 0.0
    return float(np.partition(positive, len(positive) - limit)[len(positive) - limit])


def rank(
    postings: Iterable[tuple[object, str, bytes, bytes]],
    lengths: dict[object, bytes],
    *,
    count: int,
    total_length: int,
    limit: int,
    first_pass_postings: int = FIRST_PASS_POSTINGS,
) -> list[Scored]:
    """The ``limit`` best items by BM25, best first (ties: owner order, then item).

    ``postings`` are (owner, term, items, tfs) rows of the searched owners for the query's terms;
    ``lengths`` each owner's item lengths; ``count`` and ``total_length`` the number of items and
    their summed length over every searched owner (the collection the statistics describe).

    Exact, with MaxScore pruning (Turtle and Flood 1995): a term adds at most idf * (k1 + 1) to an
    item. Terms are scored rarest first; the k-th best score so far is a floor under the final k-th
    best. Once the terms left could add less than that floor in all, an item scoring under
    ``floor - what is left`` cannot reach the top k, and the terms left are added only to the items
    above it (a few), instead of to all of them. At
    200,000 chunks a question's common syllables ("dữ liệu", "thực hiện") hold hundreds of
    thousands of postings each.
    """
    rows = list(postings)
    if not rows or count <= 0 or limit <= 0:
        return []
    avg_length = max(total_length / count, 1.0)
    by_term: dict[str, list[tuple[object, bytes, bytes]]] = {}
    df: Counter[str] = Counter()
    owners: dict[object, None] = {}
    for owner, term, items, tfs in rows:
        owners[owner] = None
        by_term.setdefault(term, []).append((owner, items, tfs))
        df[term] += len(items) // 4
    weight = dict(zip(df, idf(np.fromiter(df.values(), dtype=np.float64), count).tolist(), strict=True))
    # One flat score array over the items of the owners that matched, each owner at an offset.
    # Everything below is a few numpy passes per term, not per (term, owner) row: a student's 500
    # one-page files give a query thousands of rows.
    offsets: dict[object, int] = {}
    sizes: dict[object, int] = {}
    size = 0
    for owner in owners:
        offsets[owner], sizes[owner] = size, len(lengths.get(owner, b"")) // 2
        size += sizes[owner]
    owner_lengths = np.frombuffer(b"".join(lengths.get(owner, b"")[: 2 * sizes[owner]] for owner in owners), "<u2")
    norm = (K1 * (1.0 - B + B * owner_lengths.astype(np.float64) / avg_length)).astype(np.float32)
    scores = np.zeros(size, dtype=np.float32)

    def postings_of(term: str) -> tuple[np.ndarray, np.ndarray]:
        """The term's postings over every owner: flat item numbers and frequencies."""
        term_rows = by_term[term]
        found = np.frombuffer(b"".join(items for _, items, _ in term_rows), dtype="<i4")
        frequencies = np.frombuffer(b"".join(tfs[: len(items) // 4] for _, items, tfs in term_rows), dtype=np.uint8)
        if len(term_rows) == 1:
            owner = term_rows[0][0]
            starts, ends = offsets[owner], offsets[owner] + sizes[owner]
            where = found + starts if starts else found.astype(np.int64)
            if len(found) and found[-1] >= sizes[owner]:  # never written so; a corrupt row must not crash
                keep = where < ends
                where, frequencies = where[keep], frequencies[keep]
            return where, frequencies
        counts = [len(items) // 4 for _, items, _ in term_rows]
        base = np.repeat(np.fromiter((offsets[o] for o, _, _ in term_rows), dtype=np.int64, count=len(counts)), counts)
        limit_of = np.repeat(
            np.fromiter((sizes[o] for o, _, _ in term_rows), dtype=np.int64, count=len(counts)), counts
        )
        keep = found < limit_of
        where = found + base
        if not keep.all():
            where, frequencies = where[keep], frequencies[keep]
        return where, frequencies

    def add_everywhere(term: str) -> None:
        where, frequencies = postings_of(term)
        tf = frequencies.astype(np.float32)
        # w * tf * (k1 + 1) / (tf + norm), in place: a pass less per step over long postings.
        part = norm[where]
        part += tf
        np.divide(tf, part, out=part)
        part *= np.float32(weight[term] * (K1 + 1.0))
        scores[where] += part

    def add_on(term: str, candidates: np.ndarray) -> None:
        where, frequencies = postings_of(term)
        keep = candidates[where]
        where = where[keep]
        if len(where):
            tf = frequencies[keep].astype(np.float32)
            scores[where] += np.float32(weight[term] * (K1 + 1.0)) * tf / (tf + norm[where])

    bound = {term: weight[term] * (K1 + 1.0) for term in df}
    rarest_first = sorted(df, key=lambda term: df[term])
    remaining = sum(bound.values())  # the most the terms not scored yet can add to any item
    scored = 0
    next_check = first_pass_postings
    for position, term in enumerate(rarest_first):
        if scored >= next_check and size >= limit:
            floor = _floor(scores, limit)
            if remaining < floor:
                # The rest cannot lift an item from below ``floor - remaining`` into the top k:
                # they are added only to the items above it (a mask looked up along their
                # postings: no arithmetic, no scattered writes for the many items left out).
                candidates = scores >= floor - remaining
                for lazy in rarest_first[position:]:
                    add_on(lazy, candidates)
                break
            next_check = 2 * max(next_check, 1)  # checks at doubling counts: a handful per query
        add_everywhere(term)
        remaining -= bound[term]
        scored += df[term]
    matched = np.flatnonzero(scores)
    if len(matched) > limit:
        matched = matched[np.argpartition(-scores[matched], limit - 1)[:limit]]
    matched = matched[np.lexsort((matched, -scores[matched]))]
    starts = np.fromiter(offsets.values(), dtype=np.int64)
    owner_list = list(offsets)
    out: list[Scored] = []
    for flat in matched.tolist():
        slot = int(np.searchsorted(starts, flat, side="right")) - 1
        owner = owner_list[slot]
        out.append(Scored(owner, flat - offsets[owner], float(scores[flat])))
    return out
