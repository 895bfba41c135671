"""Study cards written by the LLM, held to the extractive generator's contract (:mod:`chat.cards`).

For each chosen passage the model is asked, at a low temperature and with bounded tokens, for cards
of the deck's kind as JSON. The reply is read leniently (the first JSON object or array in the text:
models wrap JSON in prose or code fences, and not every OpenAI-compatible server takes
``response_format``), each card is checked against the schema below, and a card whose answer its
passage does not hold (``cards.supported``) is dropped, as is a question already asked. What was
dropped is counted by reason; the extractive generator then fills whatever the LLM could not supply
(:func:`combine`), so a deck is as full with an LLM as without one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from studyassist.core.errors import DeadlineExceeded
from studyassist.storage.v1 import study_pb2

from chat.agents import Sampling
from chat.cards import (
    BLANK,
    CHOICES,
    CLOZE,
    MULTIPLE_CHOICE,
    CardDraft,
    SourceChunk,
    asked_keys,
    in_document_order,
    normalise,
    question_key,
    supported,
)
from chat.llm import LlmBackend, LlmUnavailable

log = logging.getLogger(__name__)

# Card text bounds: a card is read on a phone; longer is a paragraph, not a card.
MAX_FRONT = 400
MAX_BACK = 300
MAX_CHOICE = 150
# At most this many cards asked of one passage: more from one passage repeat it.
CARDS_PER_PASSAGE = 3
MAX_REQUESTS = 200
# A passage shorter than this holds no card worth an LLM call.
MIN_PASSAGE_CHARS = 80
# Low temperature: the cards should restate the passage, not invent; tokens enough for three cards.
SAMPLING = Sampling(temperature=0.2, top_p=0.9, max_tokens=512)
CONCURRENCY = 4

# Drop reasons (the keys of Deck.llm_dropped).
UNREADABLE = "unreadable"  # a reply holding no JSON cards
INVALID = "invalid"  # a card off the schema
UNSUPPORTED = "unsupported"  # its answer is not in its passage
DUPLICATE = "duplicate"  # a question already asked
FAILED = "failed"  # a request that errored or ran out of time

_BLANKS = re.compile(r"_{3,}|\[\s*(?:blank|\.\.\.|…)\s*\]|\{\{[^}]*\}\}", re.IGNORECASE)


class _Card(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    front: str = Field(min_length=1, max_length=MAX_FRONT)
    back: str = Field(min_length=1, max_length=MAX_BACK)


class _Cloze(_Card):
    @field_validator("front")
    @classmethod
    def _one_blank(cls, front: str) -> str:
        # Models write the blank many ways ("___", "[blank]", "{{c1::...}}"): one form is stored.
        unified = _BLANKS.sub(BLANK, front)
        if unified.count(BLANK) != 1:
            raise ValueError("a cloze holds exactly one blank")
        return unified

    @model_validator(mode="after")
    def _answer_hidden(self) -> _Cloze:
        if f" {normalise(self.back)} " in f" {normalise(self.front.replace(BLANK, ' '))} ":
            raise ValueError("the text gives the answer away")
        return self


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    front: str = Field(min_length=1, max_length=MAX_FRONT)
    choices: list[str] = Field(min_length=CHOICES, max_length=CHOICES)
    answer_index: int = Field(ge=0, lt=CHOICES)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list[str]) -> list[str]:
        cleaned = [c.strip() for c in choices]
        if any(not c or len(c) > MAX_CHOICE for c in cleaned):
            raise ValueError(f"each choice is 1 to {MAX_CHOICE} characters")
        if len({normalise(c) for c in cleaned}) != CHOICES:
            raise ValueError(f"{CHOICES} distinct choices")
        return cleaned

    @property
    def back(self) -> str:
        return self.choices[self.answer_index]


def first_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (prose or a code fence around it is skipped);
    None when there is none."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, (dict, list)):
            return value
    return None


def _items(value: Any) -> list[Any] | None:
    """The card objects of a reply: {"cards": [...]}, a bare list, or one card object."""
    if isinstance(value, dict):
        if isinstance(value.get("cards"), list):
            return list(value["cards"])
        if "front" in value:
            return [value]
        return None
    if isinstance(value, list):
        return value
    return None


@dataclass(slots=True)
class Read:
    cards: list[CardDraft] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def read_cards(text: str, kind: study_pb2.CardKind, source: SourceChunk) -> Read:
    """The valid cards of one reply about ``source``; the rest counted by reason."""
    result = Read()
    items = _items(first_json(text))
    if not items:
        result.dropped[UNREADABLE] += 1
        return result
    schema: type[_Card] | type[_Choice] = _Choice if kind == MULTIPLE_CHOICE else _Cloze if kind == CLOZE else _Card
    for item in items:
        try:
            card = schema.model_validate(item)
        except ValidationError:
            result.dropped[INVALID] += 1
            continue
        if not supported(card.back, source.text):
            result.dropped[UNSUPPORTED] += 1
            continue
        choices = tuple(card.choices) if isinstance(card, _Choice) else ()
        # The LLM's card ranks above the extractive ones (score) and asks about its own question.
        result.cards.append(CardDraft(kind, card.front, card.back, source, choices, 5.0, ""))
    return result


_SHAPES = {
    study_pb2.CARD_KIND_FLASHCARD: '{"cards": [{"front": "a question", "back": "its answer"}]}',
    CLOZE: f'{{"cards": [{{"front": "a sentence of the passage with one key term replaced by {BLANK}", '
    '"back": "the term"}]}',
    MULTIPLE_CHOICE: '{"cards": [{"front": "a question", "choices": ["A", "B", "C", "D"], "answer_index": 0}]}',
}


def messages(source: SourceChunk, kind: study_pb2.CardKind, count: int) -> list[ChatCompletionMessageParam]:
    system = (
        "You write study cards for a university student from one passage of their notes. "
        "Write in the passage's language. Reply with JSON only, in exactly this shape: "
        f"{_SHAPES[kind]}. The answer (back, or the right choice) must be copied word for word "
        "from the passage: a card whose answer the passage does not contain is thrown away."
    )
    if kind == MULTIPLE_CHOICE:
        system += f" Give {CHOICES} different choices; answer_index is the right one's position (0-{CHOICES - 1})."
    heading = f"Section: {source.heading}\n" if source.heading else ""
    user = f"{heading}Passage:\n{source.text}\n\nWrite up to {count} cards."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


@dataclass(slots=True)
class LlmCards:
    cards: list[CardDraft] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    requests: int = 0


def plan(chunks: Sequence[SourceChunk], size: int) -> list[tuple[SourceChunk, int]]:
    """The passages to ask, spread evenly over the material, and how many cards of each."""
    eligible = [c for c in chunks if len(c.text) >= MIN_PASSAGE_CHARS]
    if not eligible or size < 1:
        return []
    asked = min(len(eligible), size, MAX_REQUESTS)
    per = min(CARDS_PER_PASSAGE, math.ceil(size / asked))
    return [(eligible[i * len(eligible) // asked], per) for i in range(asked)]


async def write_cards(
    llm: LlmBackend, chunks: Sequence[SourceChunk], kind: study_pb2.CardKind, size: int, budget_s: float
) -> LlmCards:
    """The LLM's valid cards for a deck of ``size``, within ``budget_s`` seconds in all; requests
    still running then are cancelled and counted as failed."""
    result = LlmCards()
    loop = asyncio.get_running_loop()
    deadline_at = loop.time() + budget_s
    gate = asyncio.Semaphore(CONCURRENCY)

    async def ask(source: SourceChunk, count: int) -> Read:
        async with gate:
            left = deadline_at - loop.time()
            # An LLM found down by an earlier request is not asked again for this deck.
            if left <= 0 or not llm.available:
                return Read(dropped=Counter({FAILED: 1}))
            result.requests += 1
            try:
                text, _ = await llm.complete(messages(source, kind, count), SAMPLING, left)
            except (LlmUnavailable, DeadlineExceeded) as exc:
                log.info("llm cards request failed: %s", exc)
                return Read(dropped=Counter({FAILED: 1}))
            return read_cards(text, kind, source)

    tasks = [asyncio.create_task(ask(source, count)) for source, count in plan(chunks, size)]
    if not tasks:
        return result
    done, pending = await asyncio.wait(tasks, timeout=max(budget_s, 0.001))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    result.dropped[FAILED] += len(pending)
    # Passage order, not completion order: combine() keeps the first of two equal questions.
    for task in tasks:
        if task in done:
            read = task.result()
            result.cards += read.cards
            result.dropped += read.dropped
    return result


@dataclass(slots=True)
class Combined:
    cards: list[CardDraft]
    from_llm: int
    from_extractive: int
    # The LLM's cards dropped as questions already asked (among themselves).
    llm_duplicates: int


def combine(
    llm_cards: Sequence[CardDraft], extractive: Sequence[CardDraft], size: int, chunks: Sequence[SourceChunk]
) -> Combined:
    """Up to ``size`` cards: the LLM's first (a question asked twice once), then the extractive
    generator's that ask something new; in document order."""
    asked: set[str] = set()
    cards: list[CardDraft] = []
    duplicates = 0
    for card in llm_cards:
        key = question_key(card)
        if key in asked:
            duplicates += 1
            continue
        if len(cards) < size:
            asked.add(key)
            cards.append(card)
    from_llm = len(cards)
    for card in extractive:
        if len(cards) >= size:
            break
        keys = asked_keys(card)
        if keys & asked:
            continue  # the LLM already asks it: not a drop, just not needed
        asked |= keys
        cards.append(card)
    in_document_order(cards, chunks)
    return Combined(cards, from_llm, len(cards) - from_llm, duplicates)
