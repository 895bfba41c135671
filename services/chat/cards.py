"""Study cards from the student's own passages, without an LLM (extractive mode).

Three kinds, each citing the passage it came from:
- flashcards: a sentence that defines a term ("X là ...", "X được gọi là ...", "X is ...", a section
  heading with its first sentence) becomes "X là gì?" / the definition; past the definitions, a
  sentence with its most specific term blanked out;
- cloze: a sentence with the term blanked out that the lexical statistics rate most specific to its
  passage (tf-idf over the document's passages, syllable pairs preferred: most Vietnamese words
  are two syllables);
- multiple choice: a definition or a cloze with four choices, the three wrong ones sibling terms
  of the same document (other defined terms, other specific terms of as many syllables).

One contract for every generator (an LLM's too, later): a card whose answer its passage does not
hold (``supported``) is dropped and counted, and so is a card asking what another already asks.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from studyassist.storage.v1 import study_pb2

from chat.extractive import _STOP_FOLDED, content_words, definition, prose_sentences
from chat.text import detect_language, fold_accents

FLASHCARD = study_pb2.CARD_KIND_FLASHCARD
CLOZE = study_pb2.CARD_KIND_CLOZE
MULTIPLE_CHOICE = study_pb2.CARD_KIND_MULTIPLE_CHOICE
BLANK = "_____"
CHOICES = 4
MAX_TERM_WORDS = 8
DISTRACTOR_POOL = 40
# Words that open a sentence "defining" nothing: "Đây là ...", "Điều này là ...", "It is ...".
_NOT_TERMS = frozenset(
    fold_accents(w)
    for w in ("đây", "đó", "nó", "điều này", "điều đó", "cách làm này", "việc này", "it", "this", "that", "there")
)
_TOKEN = re.compile(r"[^\W_]+")
_SPACES = re.compile(r"\s+")

_TEXT = {
    "vi": {
        "what_is": "{term} là gì?",
        "fill": "Điền vào chỗ trống: «{blanked}»",
        "which_term": "Khái niệm nào được mô tả sau đây: «{meaning}»?",
    },
    "en": {
        "what_is": "What is {term}?",
        "fill": "Fill in the blank: “{blanked}”",
        "which_term": "Which term is described here: “{meaning}”?",
    },
}


@dataclass(frozen=True, slots=True)
class SourceChunk:
    """One passage of a file, as storage's ListFileChunks gives it."""

    file_id: str
    file_name: str
    chunk_id: str
    page: int
    heading: str
    text: str
    # Offset within its section: 0 for a section's first passage (its heading's first sentence).
    char_start: int = 0


@dataclass(frozen=True, slots=True)
class CardDraft:
    kind: study_pb2.CardKind
    front: str
    back: str
    source: SourceChunk
    choices: tuple[str, ...] = ()
    # Higher first when a deck has more candidates than it wants.
    score: float = 0.0
    # What the card asks about (a defined term, a sentence): two cards never share one.
    topic: str = ""


@dataclass(slots=True)
class Generated:
    cards: list[CardDraft]
    # Candidates dropped: answer not in its passage, or a question already asked.
    unsupported: int = 0
    duplicates: int = 0
    candidates: int = 0

    @property
    def dropped(self) -> int:
        return self.unsupported + self.duplicates


def normalise(text: str) -> str:
    """What two texts are compared by: accents folded, lower case, words only."""
    return " ".join(_TOKEN.findall(fold_accents(text)))


def supported(answer: str, passage: str) -> bool:
    """The check every card passes: its answer (words, accents folded) appears in its passage."""
    wanted = normalise(answer.removesuffix("…"))
    return bool(wanted) and f" {wanted} " in f" {normalise(passage)} "


@dataclass(slots=True)
class _Definition:
    term: str
    meaning: str
    sentence: str
    source: SourceChunk


@dataclass(slots=True)
class _Cloze:
    term: str
    sentence: str
    source: SourceChunk
    score: float


@dataclass(slots=True)
class _Document:
    """The candidates of one file: its definitions and its cloze sentences, and the terms they use."""

    definitions: list[_Definition] = field(default_factory=list)
    clozes: list[_Cloze] = field(default_factory=list)


def _terms(sentence: str) -> list[tuple[str, int, str]]:
    """Candidate terms of a sentence with their syllable count: each content word, and each pair of
    adjacent content words written with one space between them (as it stands in the sentence), with
    the pair that overlaps it on the left ("mô hình" for "hình mạng"; "" when none)."""
    tokens = list(_TOKEN.finditer(sentence))
    found: list[tuple[str, int, str]] = []
    content = [fold_accents(t.group()) not in _STOP_FOLDED and not t.group().isdigit() for t in tokens]
    previous = ""
    for i, token in enumerate(tokens):
        if not content[i]:
            previous = ""
            continue
        found.append((token.group(), 1, ""))
        if i + 1 < len(tokens) and content[i + 1] and sentence[token.end() : tokens[i + 1].start()] == " ":
            pair = sentence[token.start() : tokens[i + 1].end()]
            found.append((pair, 2, previous))
            previous = fold_accents(pair)
        else:
            previous = ""
    return found


def _is_term(term: str) -> bool:
    folded = normalise(term)
    words = folded.split()
    return (
        bool(words)
        and len(words) <= MAX_TERM_WORDS
        and "," not in term
        and folded not in _NOT_TERMS
        and not any(folded.startswith(f"{w} ") for w in _NOT_TERMS)
        and bool(content_words(term))
    )


def _clean_meaning(text: str) -> str:
    return text.strip().rstrip(".;:").strip()


def _blank(sentence: str, term: str) -> str | None:
    """The sentence with ``term`` (whole words) blanked once; None when it is there more than once
    (the other one would give the answer away)."""
    pattern = re.compile(rf"(?<![^\W_]){re.escape(term)}(?![^\W_])", re.IGNORECASE)
    if len(pattern.findall(sentence)) != 1:
        return None
    return pattern.sub(BLANK, sentence, count=1)


def _collect(chunks: Sequence[SourceChunk]) -> dict[str, _Document]:
    """Every file's definitions and cloze candidates, terms scored by tf-idf over its passages."""
    by_file: dict[str, list[SourceChunk]] = defaultdict(list)
    for chunk in chunks:
        by_file[chunk.file_id].append(chunk)
    documents: dict[str, _Document] = {}
    for file_id, passages in by_file.items():
        document = _Document()
        sentences = [(chunk, prose_sentences(chunk.text)) for chunk in passages]
        # Document frequency of each term over the file's passages (its own lexical statistics), and
        # how often it occurs in all: a syllable pair seen once is as likely two words' edges
        # ("thay đổi lược đồ" -> "đổi lược") as a word, so only a repeated pair counts as a term.
        frequency: Counter[str] = Counter()
        occurrences: Counter[str] = Counter()
        for chunk, _ in sentences:
            terms = [fold_accents(t) for t, _, _ in _terms(chunk.text)]
            frequency.update(set(terms))
            occurrences.update(terms)
        n = len(passages)
        for chunk, found in sentences:
            counts = Counter(fold_accents(t) for t, _, _ in _terms(chunk.text))
            heading = chunk.heading.rsplit(">", 1)[-1].strip()
            if heading and chunk.char_start == 0 and found and _is_term(heading):
                document.definitions.append(_Definition(heading, _clean_meaning(found[0]), found[0], chunk))
            for sentence in found:
                defined = definition(sentence)
                if defined is not None and _is_term(defined[0]):
                    document.definitions.append(_Definition(defined[0], _clean_meaning(defined[1]), sentence, chunk))
                best: tuple[float, str] | None = None
                for term, syllables, left in _terms(sentence):
                    folded = fold_accents(term)
                    # Segmentation by counts: a pair is a word when it repeats, and more often
                    # than the pair overlapping it on the left.
                    if syllables == 2 and (occurrences[folded] < 2 or occurrences[left] >= occurrences[folded]):
                        continue
                    idf = math.log((n + 1) / (frequency[folded] + 0.5)) + 1.0
                    # Pairs beat single syllables; longer words beat short ones; a term the text
                    # glosses, "Mức khái niệm (conceptual level)", is a key term.
                    glossed = 1.5 if sentence[sentence.find(term) + len(term) :].startswith(" (") else 1.0
                    score = (1 + math.log(counts[folded])) * idf * (1.6 if syllables == 2 else 1.0) * glossed
                    score += len(term) / 40
                    if len(term) >= 4 and (best is None or score > best[0]):
                        best = (score, term)
                if best is not None:
                    document.clozes.append(_Cloze(best[1], sentence, chunk, best[0]))
        documents[file_id] = document
    return documents


def _siblings(answer: str, pool: Iterable[str], avoid: str, rng: random.Random) -> list[str] | None:
    """Three wrong choices from ``pool`` (the same document's terms), none of them in ``avoid`` (the
    question's text), most like the answer in length first; None when there are fewer than three."""
    seen = {normalise(answer)}
    avoided = f" {normalise(avoid)} "
    options: list[str] = []
    for term in pool:
        key = normalise(term)
        if key in seen or f" {key} " in avoided:
            continue
        seen.add(key)
        options.append(term)
    if len(options) < CHOICES - 1:
        return None
    # Like the answer in case and length, so the right one does not stand out by its look.
    options.sort(key=lambda t: (t[:1].isupper() != answer[:1].isupper(), abs(len(t) - len(answer)), rng.random()))
    return options[: CHOICES - 1]


def _language(chunk: SourceChunk, cache: dict[str, str]) -> str:
    found = cache.get(chunk.chunk_id)
    if found is None:
        found = cache[chunk.chunk_id] = detect_language(chunk.text)
    return found


def _candidates(kind: study_pb2.CardKind, documents: dict[str, _Document], rng: random.Random) -> list[list[CardDraft]]:
    """Per passage (document order), its candidate cards, best first."""
    languages: dict[str, str] = {}
    per_chunk: dict[str, list[CardDraft]] = defaultdict(list)
    order: list[str] = []
    for document in documents.values():
        defined_terms = [d.term for d in document.definitions]
        # Distractors: the document's best terms of each syllable count (the top ones only: a lower
        # one is more likely a fragment).
        same_size: dict[int, list[str]] = defaultdict(list)
        for cloze in sorted(document.clozes, key=lambda c: -c.score):
            pool = same_size[len(cloze.term.split())]
            if len(pool) < DISTRACTOR_POOL:
                pool.append(cloze.term)
        for d in document.definitions:
            text = _TEXT[_language(d.source, languages)]
            topic = f"term:{normalise(d.term)}"
            if kind == MULTIPLE_CHOICE:
                wrong = _siblings(d.term, defined_terms, d.meaning, rng)
                if wrong is None:
                    continue
                choices = [d.term, *wrong]
                rng.shuffle(choices)
                draft = CardDraft(
                    kind, text["which_term"].format(meaning=d.meaning), d.term, d.source, tuple(choices), 3.0, topic
                )
            elif kind == FLASHCARD:
                draft = CardDraft(kind, text["what_is"].format(term=d.term), d.meaning, d.source, (), 3.0, topic)
            else:
                continue  # a cloze of a definition is made below, from its sentence
            per_chunk[d.source.chunk_id].append(draft)
        for c in document.clozes:
            blanked = _blank(c.sentence, c.term)
            if blanked is None:
                continue
            text = _TEXT[_language(c.source, languages)]
            topic = f"sentence:{normalise(c.sentence)}"
            if kind == CLOZE:
                draft = CardDraft(kind, blanked, c.term, c.source, (), c.score, topic)
            elif kind == FLASHCARD:
                draft = CardDraft(kind, text["fill"].format(blanked=blanked), c.term, c.source, (), c.score / 10, topic)
            else:
                wrong = _siblings(c.term, same_size[len(c.term.split())], c.sentence, rng)
                if wrong is None:
                    continue
                choices = [c.term, *wrong]
                rng.shuffle(choices)
                draft = CardDraft(
                    kind, text["fill"].format(blanked=blanked), c.term, c.source, tuple(choices), c.score, topic
                )
            per_chunk[c.source.chunk_id].append(draft)
    for document in documents.values():
        for c in document.clozes:
            if c.source.chunk_id not in order:
                order.append(c.source.chunk_id)
        for d in document.definitions:
            if d.source.chunk_id not in order:
                order.append(d.source.chunk_id)
    return [sorted(per_chunk[chunk_id], key=lambda d: -d.score) for chunk_id in order if per_chunk[chunk_id]]


def question_key(draft: CardDraft) -> str:
    return normalise(draft.front.replace(BLANK, " "))


def asked_keys(draft: CardDraft) -> set[str]:
    """What a card asks, for telling repeats apart: its question, and the term it defines (overlapping
    passages repeat sentences, and a term may be defined twice)."""
    return {question_key(draft), draft.topic or question_key(draft)}


def in_document_order(cards: list[CardDraft], chunks: Sequence[SourceChunk]) -> None:
    """Sort ``cards`` in place by where their passage stands in ``chunks``."""
    position = {chunk.chunk_id: n for n, chunk in enumerate(chunks)}
    cards.sort(key=lambda d: position.get(d.source.chunk_id, 0))


def generate(chunks: Sequence[SourceChunk], kind: study_pb2.CardKind, size: int, *, seed: int = 0) -> Generated:
    """Up to ``size`` cards of ``kind`` from ``chunks`` (one or more files' passages in order): every
    passage's best card first, round after round, so a deck covers the material before it goes deep;
    the cards then in document order."""
    rng = random.Random(seed)
    per_chunk = _candidates(kind, _collect(chunks), rng)
    result = Generated(cards=[], candidates=sum(len(c) for c in per_chunk))
    asked: set[str] = set()
    depth = 0
    while len(result.cards) < size and any(depth < len(c) for c in per_chunk):
        for candidates in per_chunk:
            if depth >= len(candidates) or len(result.cards) >= size:
                continue
            draft = candidates[depth]
            if not supported(draft.back, draft.source.text):
                result.unsupported += 1
                continue
            keys = asked_keys(draft)
            if keys & asked:
                result.duplicates += 1
                continue
            asked |= keys
            result.cards.append(draft)
        depth += 1
    # Left-over candidates beyond `size` are not "dropped": only the rejected ones are.
    in_document_order(result.cards, chunks)
    return result
