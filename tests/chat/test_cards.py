"""Cards from the student's material without an LLM: the generator on the retrieval evaluation's
Vietnamese study passages (answers in their cited passage, no question asked twice, distractors
from the same document), and POST /v1/decks' RPC through real chat, storage and PostgreSQL."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from chat.cards import BLANK, CLOZE, FLASHCARD, MULTIPLE_CHOICE, SourceChunk, generate, normalise, supported
from studyassist.chat.v1 import decks_pb2, decks_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess
from studyassist.storage.v1 import storage_pb2_grpc, study_pb2, study_pb2_grpc

from tests.chat.conftest import new_user, upload_ready

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "retrieval"
SUBJECTS = ("db", "dsa", "net", "os", "prob")


def passages(subject: str) -> list[SourceChunk]:
    data = json.loads((DATA / f"{subject}.json").read_text())
    return [
        SourceChunk(subject, f"{subject}.json", p["id"], 0, p.get("title", ""), p["text"]) for p in data["passages"]
    ]


@pytest.mark.parametrize("kind", [FLASHCARD, CLOZE, MULTIPLE_CHOICE])
@pytest.mark.parametrize("subject", SUBJECTS)
def test_cards_answer_from_their_passage_and_never_repeat(subject: str, kind: int) -> None:
    chunks = passages(subject)
    made = generate(chunks, kind, 50)  # type: ignore[arg-type]
    assert len(made.cards) == 50
    # Every card's answer is in the passage it cites (the share the issue asks >= 90 %; here all).
    held = sum(supported(c.back, c.source.text) for c in made.cards)
    assert held / len(made.cards) >= 0.9
    fronts = [normalise(c.front.replace(BLANK, " ")) for c in made.cards]
    assert len(set(fronts)) == len(fronts)
    by_id = {c.chunk_id: c for c in chunks}
    for card in made.cards:
        assert by_id[card.source.chunk_id] == card.source
        assert card.kind == kind
        if kind == MULTIPLE_CHOICE:
            assert len(card.choices) == 4 and len(set(card.choices)) == 4 and card.back in card.choices
        if kind == CLOZE:
            # The blanked term is not given away elsewhere in the sentence.
            assert BLANK in card.front
            assert re.search(rf"(?<!\w){re.escape(card.back)}(?!\w)", card.front, re.IGNORECASE) is None


def test_a_deck_covers_the_material_before_going_deep() -> None:
    chunks = passages("dsa")
    made = generate(chunks, FLASHCARD, len(chunks))
    # One card per passage while every passage still has one to give.
    assert len({c.source.chunk_id for c in made.cards}) >= 0.9 * len(chunks)


def test_no_material_no_cards() -> None:
    assert generate([], FLASHCARD, 10).cards == []
    short = SourceChunk("f", "f.txt", "c", 0, "", "Ngắn.")
    assert generate([short], CLOZE, 10).cards == []


@pytest.fixture
async def decks(chat_service: ServiceProcess) -> AsyncIterator[decks_pb2_grpc.DeckServiceAsyncStub]:
    channel = create_channel(chat_service.address, default_timeout=60.0)
    yield decks_pb2_grpc.DeckServiceStub(channel)  # type: ignore[misc]
    await channel.close(None)


NOTES = "\n".join(p.text for p in passages("dsa")[:12])


async def test_create_deck_through_chat_and_storage(
    decks: decks_pb2_grpc.DeckServiceAsyncStub,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    storage_service: ServiceProcess,
) -> None:
    user = await new_user(storage)
    me = user_metadata(user)
    with pytest.raises(grpc.aio.AioRpcError) as none_ready:
        await decks.CreateDeck(decks_pb2.CreateDeckRequest(size=10), metadata=me)
    assert none_ready.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    file = await upload_ready(storage, user, "ctdl.txt", NOTES)
    for size in (0, 501, 10_000):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await decks.CreateDeck(decks_pb2.CreateDeckRequest(size=size), metadata=me)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    other = await new_user(storage)
    with pytest.raises(grpc.aio.AioRpcError) as not_theirs:
        await decks.CreateDeck(
            decks_pb2.CreateDeckRequest(size=5, file_ids=[file.file_id]), metadata=user_metadata(other)
        )
    assert not_theirs.value.code() == grpc.StatusCode.NOT_FOUND

    deck = await decks.CreateDeck(
        decks_pb2.CreateDeckRequest(size=20, kind=study_pb2.CARD_KIND_MULTIPLE_CHOICE), metadata=me
    )
    assert deck.card_count == 20 and deck.due_count == 20 and list(deck.file_ids) == [file.file_id]
    channel = create_channel(storage_service.address)
    try:
        study = study_pb2_grpc.StudyServiceStub(channel)
        cards = (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards
        assert len(cards) == 20
        for card in cards:
            assert card.source.file_id == file.file_id and card.source.chunk_id and card.source.file_name == "ctdl.txt"
            assert supported(card.back, card.source.quote) and len(card.choices) == 4
        assert not (await study.ListDecks(study_pb2.ListDecksRequest(), metadata=user_metadata(other))).decks
    finally:
        await channel.close(None)
