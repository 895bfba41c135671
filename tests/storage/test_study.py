"""StudyService through the real storage service and PostgreSQL: decks stored whole, FSRS state
written by the `fsrs` package's scheduler on each review, the review log, per-user isolation, and
bad input refused with a clear status and nothing written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import grpc
import pytest
from studyassist.core.channels import create_channel, user_metadata
from studyassist.storage.v1 import storage_pb2, study_pb2, study_pb2_grpc

from tests.storage.conftest import StorageClient

TEXT = (
    "Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO).\n"
    "Hàng đợi là cấu trúc dữ liệu hoạt động theo nguyên tắc vào trước ra trước (FIFO).\n"
).encode()


@pytest.fixture
async def study(storage: StorageClient) -> AsyncIterator[study_pb2_grpc.StudyServiceAsyncStub]:
    channel = create_channel(storage.address, default_timeout=30)
    yield study_pb2_grpc.StudyServiceStub(channel)  # type: ignore[misc]
    await channel.close(None)


async def material(storage: StorageClient, user: str) -> tuple[str, storage_pb2.FileChunk]:
    uploaded = await storage.upload(user, "ctdl.txt", TEXT)
    done = await storage.wait_done(user, uploaded.file_id)
    assert done.status == storage_pb2.FILE_STATUS_READY, done.error
    chunks = await storage.stub.ListFileChunks(
        storage_pb2.ListFileChunksRequest(file_id=done.file_id), metadata=user_metadata(user)
    )
    return done.file_id, chunks.chunks[0]


def card(file_id: str, chunk: storage_pb2.FileChunk, n: int) -> study_pb2.NewCard:
    return study_pb2.NewCard(
        kind=study_pb2.CARD_KIND_FLASHCARD,
        front=f"Câu hỏi {n}: Ngăn xếp là gì?",
        back="cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước",
        source=study_pb2.CardSource(file_id=file_id, chunk_id=chunk.chunk_id, quote=chunk.text, file_name="ctdl.txt"),
    )


def deck_request(file_id: str, chunk: storage_pb2.FileChunk, count: int) -> study_pb2.StoreDeckRequest:
    return study_pb2.StoreDeckRequest(
        title="CTDL",
        kind=study_pb2.CARD_KIND_FLASHCARD,
        file_ids=[file_id],
        cards=[card(file_id, chunk, n) for n in range(count)],
    )


async def test_deck_review_fsrs_state_and_log(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub
) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    file_id, chunk = await material(storage, user)
    deck = await study.StoreDeck(deck_request(file_id, chunk, 3), metadata=me)
    assert (deck.card_count, deck.due_count, deck.new_count, deck.learned_count) == (3, 3, 3, 0)
    cards = await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id, page_size=2), metadata=me)
    assert len(cards.cards) == 2 and cards.next_page_token
    rest = await study.ListCards(
        study_pb2.ListCardsRequest(deck_id=deck.deck_id, page_token=cards.next_page_token), metadata=me
    )
    assert len(rest.cards) == 1 and not rest.next_page_token
    first = cards.cards[0]
    assert first.source.chunk_id == chunk.chunk_id and first.source.quote == chunk.text
    assert first.state == study_pb2.CARD_STATE_LEARNING and first.stability == 0

    due = await study.ListDueCards(study_pb2.ListDueCardsRequest(), metadata=me)
    assert due.due_count == 3
    reviewed = (
        await study.ReviewCard(study_pb2.ReviewCardRequest(card_id=first.card_id, rating="easy"), metadata=me)
    ).card
    # The scheduler's answer is stored: an easy first review graduates the card days ahead.
    assert reviewed.state == study_pb2.CARD_STATE_REVIEW and reviewed.stability > 0 and reviewed.difficulty > 0
    assert reviewed.due.ToDatetime() > reviewed.last_review.ToDatetime()
    assert reviewed.reviews == 1
    again = (
        await study.ReviewCard(study_pb2.ReviewCardRequest(card_id=cards.cards[1].card_id, rating="again"), metadata=me)
    ).card
    assert again.state == study_pb2.CARD_STATE_LEARNING and again.due.ToDatetime() > again.last_review.ToDatetime()
    after = await study.GetDeck(study_pb2.GetDeckRequest(deck_id=deck.deck_id), metadata=me)
    assert (after.due_count, after.new_count, after.learned_count) == (1, 1, 1)
    assert after.retention == pytest.approx(0.5)
    due = await study.ListDueCards(study_pb2.ListDueCardsRequest(deck_id=deck.deck_id), metadata=me)
    assert [c.card_id for c in due.cards] == [rest.cards[0].card_id]

    # Suspend, edit, delete.
    suspended = await study.UpdateCard(
        study_pb2.UpdateCardRequest(card_id=rest.cards[0].card_id, suspended=True, front="Sửa: ngăn xếp?"), metadata=me
    )
    assert suspended.suspended and suspended.front == "Sửa: ngăn xếp?"
    assert (await study.ListDueCards(study_pb2.ListDueCardsRequest(), metadata=me)).due_count == 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await study.ReviewCard(study_pb2.ReviewCardRequest(card_id=suspended.card_id, rating="good"), metadata=me)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await study.DeleteCard(study_pb2.DeleteCardRequest(card_id=first.card_id), metadata=me)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await study.ReviewCard(study_pb2.ReviewCardRequest(card_id=first.card_id, rating="good"), metadata=me)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await study.ListDecks(study_pb2.ListDecksRequest(), metadata=me)
    assert [d.card_count for d in listed.decks] == [2]
    await study.DeleteDeck(study_pb2.DeleteDeckRequest(deck_id=deck.deck_id), metadata=me)
    assert not (await study.ListDecks(study_pb2.ListDecksRequest(), metadata=me)).decks


async def test_other_users_see_nothing(storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub) -> None:
    owner, other = await storage.new_user(), await storage.new_user()
    file_id, chunk = await material(storage, owner)
    deck = await study.StoreDeck(deck_request(file_id, chunk, 1), metadata=user_metadata(owner))
    card_id = (
        (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=user_metadata(owner)))
        .cards[0]
        .card_id
    )
    them = user_metadata(other)
    calls: list[Awaitable[object]] = [
        study.GetDeck(study_pb2.GetDeckRequest(deck_id=deck.deck_id), metadata=them),
        study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=them),
        study.DeleteDeck(study_pb2.DeleteDeckRequest(deck_id=deck.deck_id), metadata=them),
        study.UpdateCard(study_pb2.UpdateCardRequest(card_id=card_id, suspended=True), metadata=them),
        study.DeleteCard(study_pb2.DeleteCardRequest(card_id=card_id), metadata=them),
        study.ReviewCard(study_pb2.ReviewCardRequest(card_id=card_id, rating="good"), metadata=them),
        study.ListDueCards(study_pb2.ListDueCardsRequest(deck_id=deck.deck_id), metadata=them),
        # A deck citing another user's passage.
        study.StoreDeck(deck_request(file_id, chunk, 1), metadata=them),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await study.ListDecks(study_pb2.ListDecksRequest(), metadata=them)).decks
    assert (await study.ListDueCards(study_pb2.ListDueCardsRequest(), metadata=them)).due_count == 0
    mine = await study.GetDeck(study_pb2.GetDeckRequest(deck_id=deck.deck_id), metadata=user_metadata(owner))
    assert mine.card_count == 1 and mine.due_count == 1 and mine.retention == 0


async def test_bad_input_is_refused_and_writes_nothing(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub
) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    file_id, chunk = await material(storage, user)
    wrong_choices = deck_request(file_id, chunk, 2)
    wrong_choices.cards[1].kind = study_pb2.CARD_KIND_MULTIPLE_CHOICE
    wrong_choices.cards[1].choices[:] = ["a", "b", "c"]
    bad_chunk = deck_request(file_id, chunk, 2)
    bad_chunk.cards[1].source.chunk_id = "00000000-0000-0000-0000-000000000000"
    for request, code in [
        (deck_request(file_id, chunk, 0), grpc.StatusCode.INVALID_ARGUMENT),
        (deck_request(file_id, chunk, 501), grpc.StatusCode.INVALID_ARGUMENT),
        (wrong_choices, grpc.StatusCode.INVALID_ARGUMENT),
        (bad_chunk, grpc.StatusCode.NOT_FOUND),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await study.StoreDeck(request, metadata=me)
        assert refused.value.code() == code
    assert not (await study.ListDecks(study_pb2.ListDecksRequest(), metadata=me)).decks

    deck = await study.StoreDeck(deck_request(file_id, chunk, 1), metadata=me)
    card_id = (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards[0].card_id
    for rating in ("", "perfect", "5"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await study.ReviewCard(study_pb2.ReviewCardRequest(card_id=card_id, rating=rating), metadata=me)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await study.ReviewCard(study_pb2.ReviewCardRequest(card_id="not-an-id", rating="good"), metadata=me)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unchanged = await study.GetDeck(study_pb2.GetDeckRequest(deck_id=deck.deck_id), metadata=me)
    assert unchanged.new_count == 1 and unchanged.retention == 0
