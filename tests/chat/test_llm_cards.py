"""Cards written by an LLM: its reply read leniently and held to the extractive generator's contract
(schema, answer in the passage, no question twice), the drops counted by reason, and the extractive
generator filling the rest; then POST /v1/decks' RPC through real chat talking to the tiny random
model (whose garbage is all dropped, the deck still full), storage and PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from chat.cards import BLANK, CLOZE, FLASHCARD, MULTIPLE_CHOICE, SourceChunk, generate, supported
from chat.llmcards import (
    DUPLICATE,
    FAILED,
    INVALID,
    SAMPLING,
    UNREADABLE,
    UNSUPPORTED,
    combine,
    first_json,
    plan,
    read_cards,
)
from studyassist.chat.v1 import decks_pb2, decks_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess
from studyassist.storage.v1 import storage_pb2_grpc, study_pb2, study_pb2_grpc

from tests.chat.conftest import new_user, upload_ready
from tests.chat.test_cards import NOTES, passages
from tests.chat.tinyllm import Relay

STACK = SourceChunk(
    "f",
    "ctdl.txt",
    "c1",
    3,
    "Ngăn xếp",
    "Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO). "
    "Hai thao tác chính là push để thêm phần tử và pop để lấy phần tử ở đỉnh ra.",
)


def test_the_first_json_in_a_reply_is_read() -> None:
    fenced = 'Sure! Here are your cards:\n```json\n{"cards": [{"front": "a", "back": "b"}]}\n```\nEnjoy.'
    assert first_json(fenced) == {"cards": [{"front": "a", "back": "b"}]}
    assert first_json("noise [not json} then [1, 2]") == [1, 2]
    assert first_json("no json here") is None
    assert first_json('{"unterminated": ') is None


def test_good_flashcards_are_kept_with_their_passage() -> None:
    reply = json.dumps(
        {
            "cards": [
                {"front": "Ngăn xếp hoạt động theo nguyên tắc nào?", "back": "vào sau ra trước (LIFO)"},
                {"front": "Thao tác nào thêm phần tử?", "back": "push", "extra": "ignored"},
            ]
        },
        ensure_ascii=False,
    )
    read = read_cards(reply, FLASHCARD, STACK)
    assert [(c.front, c.back) for c in read.cards] == [
        ("Ngăn xếp hoạt động theo nguyên tắc nào?", "vào sau ra trước (LIFO)"),
        ("Thao tác nào thêm phần tử?", "push"),
    ]
    assert all(c.source == STACK and c.kind == FLASHCARD and c.choices == () for c in read.cards)
    assert not read.dropped
    # A bare list, or one card object, is read as well.
    assert len(read_cards('[{"front": "Q?", "back": "pop"}]', FLASHCARD, STACK).cards) == 1
    assert len(read_cards('{"front": "Q?", "back": "pop"}', FLASHCARD, STACK).cards) == 1


def test_bad_shapes_and_unsupported_answers_are_dropped_and_counted() -> None:
    reply = json.dumps(
        {
            "cards": [
                {"front": "", "back": "push"},  # empty front
                {"front": "Q?"},  # no back
                {"front": "Q?", "back": "x" * 301},  # too long
                "not an object",
                {"front": "Ngăn xếp là gì?", "back": "một cây nhị phân cân bằng"},  # not in the passage
                {"front": "Thao tác lấy phần tử ở đỉnh?", "back": "pop"},  # kept
            ]
        },
        ensure_ascii=False,
    )
    read = read_cards(reply, FLASHCARD, STACK)
    assert [c.back for c in read.cards] == ["pop"]
    assert read.dropped == {INVALID: 4, UNSUPPORTED: 1}
    for garbage in ("", "lorem ipsum dolor", '{"answer": 42}', "[]", '{"cards": "none"}'):
        read = read_cards(garbage, FLASHCARD, STACK)
        assert read.cards == [] and read.dropped == {UNREADABLE: 1}, garbage


def test_multiple_choice_needs_four_distinct_choices_and_one_right_index() -> None:
    def card(choices: list[str], index: object) -> str:
        return json.dumps({"cards": [{"front": "Nguyên tắc?", "choices": choices, "answer_index": index}]})

    good = read_cards(card(["FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên"], 1), MULTIPLE_CHOICE, STACK)
    assert [(c.back, c.choices) for c in good.cards] == [("LIFO", ("FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên"))]
    for choices, index in (
        (["FIFO", "LIFO", "Ngẫu nhiên"], 1),  # three
        (["FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên", "Khác"], 1),  # five
        (["FIFO", "LIFO", "lifo", "Ưu tiên"], 1),  # two the same (case and accents aside)
        (["FIFO", "LIFO", "Ngẫu nhiên", ""], 1),  # an empty one
        (["FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên"], 4),  # index out of range
        (["FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên"], None),  # no index
    ):
        assert read_cards(card(choices, index), MULTIPLE_CHOICE, STACK).dropped == {INVALID: 1}, (choices, index)
    # The right choice must be in the passage: "FIFO" is not.
    assert read_cards(card(["FIFO", "LIFO", "Ngẫu nhiên", "Ưu tiên"], 0), MULTIPLE_CHOICE, STACK).dropped == {
        UNSUPPORTED: 1
    }


def test_a_cloze_holds_one_blank_that_hides_its_answer() -> None:
    def card(front: str, back: str) -> str:
        return json.dumps({"cards": [{"front": front, "back": back}]}, ensure_ascii=False)

    kept = read_cards(card("Thao tác ___ dùng để thêm phần tử.", "push"), CLOZE, STACK)
    assert [(c.front, c.back) for c in kept.cards] == [(f"Thao tác {BLANK} dùng để thêm phần tử.", "push")]
    for front in (
        "Thao tác push dùng để thêm phần tử.",  # no blank
        "Thao tác ___ dùng để ___ phần tử.",  # two
        "Thao tác ___ (push) dùng để thêm phần tử.",  # gives the answer away
    ):
        assert read_cards(card(front, "push"), CLOZE, STACK).dropped == {INVALID: 1}, front


def test_the_extractive_generator_fills_what_the_llm_could_not_supply() -> None:
    chunks = passages("dsa")
    extractive = generate(chunks, FLASHCARD, 10).cards
    source = chunks[0]
    answer = extractive[0].back if extractive[0].source == source else source.text.split()[0]
    llm = read_cards(
        json.dumps({"cards": [{"front": "Câu hỏi của LLM?", "back": answer}] * 2}, ensure_ascii=False),
        FLASHCARD,
        source,
    ).cards
    assert len(llm) == 2
    combined = combine(llm, extractive, 10, chunks)
    assert len(combined.cards) == 10
    assert (combined.from_llm, combined.from_extractive, combined.llm_duplicates) == (1, 9, 1)
    assert sum(c.front == "Câu hỏi của LLM?" for c in combined.cards) == 1
    assert all(supported(c.back, c.source.text) for c in combined.cards)
    order = {c.chunk_id: n for n, c in enumerate(chunks)}
    positions = [order[c.source.chunk_id] for c in combined.cards]
    assert positions == sorted(positions)
    # Without any LLM card the deck is the extractive one.
    assert combine([], extractive, 10, chunks).cards == sorted(extractive, key=lambda c: order[c.source.chunk_id])


def test_the_llm_is_asked_about_passages_spread_over_the_material() -> None:
    chunks = passages("dsa")
    asked = plan(chunks, 5)
    assert len(asked) == 5 and all(count == 1 for _, count in asked)
    ids = [order for order, c in enumerate(chunks) if c in {a for a, _ in asked}]
    assert ids[0] == 0 and ids[-1] >= len(chunks) // 2  # not the first five only
    few = plan(chunks[:2], 30)
    assert len(few) == 2 and all(count == 3 for _, count in few)  # at most three cards from one passage
    assert plan([SourceChunk("f", "f", "c", 0, "", "Ngắn.")], 5) == []


@pytest.fixture
async def llm_decks(llm_chat_service: ServiceProcess) -> AsyncIterator[decks_pb2_grpc.DeckServiceAsyncStub]:
    channel = create_channel(llm_chat_service.address, default_timeout=120.0)
    yield decks_pb2_grpc.DeckServiceStub(channel)  # type: ignore[misc]
    await channel.close(None)


async def test_the_tiny_llms_garbage_is_dropped_and_the_deck_still_full(
    llm_decks: decks_pb2_grpc.DeckServiceAsyncStub,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    storage_service: ServiceProcess,
    llm_relay: Relay,
) -> None:
    user = await new_user(storage)
    me = user_metadata(user)
    file = await upload_ready(storage, user, "ctdl.txt", NOTES)
    started = time.monotonic()
    llm_relay.record = True
    try:
        deck = await llm_decks.CreateDeck(
            decks_pb2.CreateDeckRequest(size=4, kind=study_pb2.CARD_KIND_MULTIPLE_CHOICE), metadata=me
        )
    finally:
        llm_relay.record = False
    # The model was asked, once per chosen passage, at the cards' sampling.
    # (A pooled connection may also hold an earlier test's bodies: only the cards' prompt is looked at.)
    bodies = [json.loads(b) for c in llm_relay.completions_since(started) for b in c.request_bodies]
    cards_requests = [b for b in bodies if "study cards" in str(b["messages"][0]["content"])]
    assert cards_requests, "the LLM was not asked for cards"
    for body in cards_requests:
        assert body["temperature"] == SAMPLING.temperature and body["max_tokens"] == SAMPLING.max_tokens
        assert "answer_index" in body["messages"][0]["content"]
    # Its random output holds no valid card: every reply dropped and counted, none stored.
    assert deck.llm_cards == 0
    dropped = dict(deck.llm_dropped)
    assert set(dropped) <= {UNREADABLE, INVALID, UNSUPPORTED, DUPLICATE, FAILED}
    assert sum(dropped.get(r, 0) for r in (UNREADABLE, INVALID, UNSUPPORTED)) >= 1, dropped
    assert deck.dropped >= sum(dropped.values())
    # The extractive generator filled the deck.
    assert deck.card_count == 4 and deck.extractive_cards == 4
    channel = create_channel(storage_service.address)
    try:
        study = study_pb2_grpc.StudyServiceStub(channel)
        cards = (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards
    finally:
        await channel.close(None)
    assert len(cards) == 4
    for card in cards:
        assert card.source.file_id == file.file_id and len(card.choices) == 4
        assert supported(card.back, card.source.quote)
