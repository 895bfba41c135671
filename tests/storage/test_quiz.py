"""StudyService's quizzes through the real storage service and PostgreSQL: the server picks the
questions and keeps the answers to itself, scores one submit (right, wrong, unanswered, the time
taken), counts a submit past the time limit as unanswered, keeps each question's source, and
refuses bad input and other users with a clear status, writing nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta

import asyncpg
import grpc
import pytest
from storage.ids import encode_token
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.errors import reason_from_metadata
from studyassist.storage.v1 import storage_pb2, study_pb2, study_pb2_grpc

from tests.storage.conftest import StorageClient
from tests.storage.test_study import deck_request, material

TERMS = ["Ngăn xếp", "Hàng đợi", "Cây nhị phân", "Bảng băm", "Đồ thị", "Danh sách liên kết"]


@pytest.fixture
async def study(storage: StorageClient) -> AsyncIterator[study_pb2_grpc.StudyServiceAsyncStub]:
    channel = create_channel(storage.address, default_timeout=30)
    yield study_pb2_grpc.StudyServiceStub(channel)  # type: ignore[misc]
    await channel.close(None)


def mc_deck(file_id: str, chunk: storage_pb2.FileChunk, count: int) -> study_pb2.StoreDeckRequest:
    request = deck_request(file_id, chunk, count)
    request.kind = study_pb2.CARD_KIND_MULTIPLE_CHOICE
    for n, new in enumerate(request.cards):
        new.kind = study_pb2.CARD_KIND_MULTIPLE_CHOICE
        new.back = TERMS[n % len(TERMS)]
        new.choices[:] = [new.back, *[t for t in TERMS if t != new.back][:3]]
    return request


async def refused(call: Awaitable[object]) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code()


async def test_quiz_is_scored_by_the_server_and_kept(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub
) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    file_id, chunk = await material(storage, user)
    deck = await study.StoreDeck(mc_deck(file_id, chunk, 5), metadata=me)
    cards = {
        c.card_id: c
        for c in (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards
    }

    quiz = await study.StartQuiz(
        study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=3, time_limit_s=60), metadata=me
    )
    assert len(quiz.questions) == 3 and quiz.deck_title == "CTDL" and quiz.time_limit_s == 60
    assert [q.position for q in quiz.questions] == [0, 1, 2]
    assert len({q.card_id for q in quiz.questions}) == 3
    assert (quiz.deadline.ToDatetime() - quiz.started_at.ToDatetime()) == timedelta(seconds=60)
    for question in quiz.questions:
        asked = cards[question.card_id]
        assert question.front == asked.front and sorted(question.choices) == sorted(asked.choices)
    # The reply holds no answer: a client cannot read the score off the quiz.
    assert "back" not in study_pb2.QuizQuestion.DESCRIPTOR.fields_by_name

    right = [list(q.choices).index(cards[q.card_id].back) for q in quiz.questions]
    # Question 0 right, question 1 wrong, question 2 left out.
    answers = [
        study_pb2.QuizAnswer(position=0, choice=right[0]),
        study_pb2.QuizAnswer(position=1, choice=(right[1] + 1) % 4),
    ]
    result = await study.SubmitQuiz(study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id, answers=answers), metadata=me)
    assert (result.question_count, result.correct, result.wrong, result.unanswered) == (3, 1, 1, 1)
    assert not result.late and 0 <= result.time_taken_ms <= 60_000
    assert [(q.chosen, q.answer, q.correct) for q in result.questions] == [
        (right[0], right[0], True),
        ((right[1] + 1) % 4, right[1], False),
        (-1, right[2], False),
    ]
    wrong = result.questions[1]
    assert wrong.source.file_id == file_id and wrong.source.chunk_id == chunk.chunk_id
    assert wrong.source.file_name == "ctdl.txt" and wrong.source.quote == chunk.text

    # Once only: the second submit changes nothing.
    again = study.SubmitQuiz(
        study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id, answers=[study_pb2.QuizAnswer(position=2, choice=right[2])]),
        metadata=me,
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await again
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The reason the web app says in the student's language (and reads the kept result on).
    assert reason_from_metadata(error.value.trailing_metadata()) == ("QUIZ_SUBMITTED", {})
    kept = await study.GetQuizResult(study_pb2.GetQuizResultRequest(quiz_id=quiz.quiz_id), metadata=me)
    assert kept == result

    # A result reads the same after its card is edited and its deck deleted.
    await study.UpdateCard(study_pb2.UpdateCardRequest(card_id=wrong.card_id, front="Sửa"), metadata=me)
    second = await study.StartQuiz(
        study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=100, time_limit_s=10), metadata=me
    )
    assert len(second.questions) == 5  # all the deck has
    await study.SubmitQuiz(study_pb2.SubmitQuizRequest(quiz_id=second.quiz_id), metadata=me)
    await study.DeleteDeck(study_pb2.DeleteDeckRequest(deck_id=deck.deck_id), metadata=me)
    kept = await study.GetQuizResult(study_pb2.GetQuizResultRequest(quiz_id=quiz.quiz_id), metadata=me)
    assert kept.questions[1].front == wrong.front and kept.deck_id == "" and kept.correct == 1

    # Past results, newest first, paged.
    page = await study.ListQuizResults(study_pb2.ListQuizResultsRequest(page_size=1), metadata=me)
    assert [r.quiz_id for r in page.results] == [second.quiz_id] and page.next_page_token
    assert not page.results[0].questions and page.results[0].unanswered == 5
    rest = await study.ListQuizResults(
        study_pb2.ListQuizResultsRequest(page_size=1, page_token=page.next_page_token), metadata=me
    )
    assert [r.quiz_id for r in rest.results] == [quiz.quiz_id] and not rest.next_page_token
    assert rest.results[0].correct == 1 and rest.results[0].deck_title == "CTDL"


async def test_answers_after_the_time_limit_count_as_unanswered(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub, database_url: str
) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    file_id, chunk = await material(storage, user)
    deck = await study.StoreDeck(mc_deck(file_id, chunk, 2), metadata=me)
    backs = {
        c.card_id: c.back
        for c in (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards
    }
    quiz = await study.StartQuiz(
        study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=30), metadata=me
    )
    # The quiz started a minute ago (its clock moved back, not waited for).
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE quizzes SET started_at = started_at - interval '60 seconds',"
            " deadline = deadline - interval '60 seconds' WHERE id = $1",
            quiz.quiz_id,
        )
    finally:
        await conn.close()
    answers = [
        study_pb2.QuizAnswer(position=q.position, choice=list(q.choices).index(backs[q.card_id]))
        for q in quiz.questions
    ]
    result = await study.SubmitQuiz(study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id, answers=answers), metadata=me)
    assert result.late and (result.correct, result.wrong, result.unanswered) == (0, 0, 2)
    assert result.time_taken_ms == 30_000  # the time limit, not the minute
    assert all(q.chosen == -1 and not q.correct for q in result.questions)


async def test_other_users_quizzes_are_not_found(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub
) -> None:
    owner, other = await storage.new_user(), await storage.new_user()
    mine, them = user_metadata(owner), user_metadata(other)
    file_id, chunk = await material(storage, owner)
    deck = await study.StoreDeck(mc_deck(file_id, chunk, 2), metadata=mine)
    quiz = await study.StartQuiz(
        study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=60), metadata=mine
    )
    calls: list[Awaitable[object]] = [
        study.StartQuiz(study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=60), metadata=them),
        study.SubmitQuiz(study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id), metadata=them),
        study.GetQuizResult(study_pb2.GetQuizResultRequest(quiz_id=quiz.quiz_id), metadata=them),
        study.ListQuizResults(study_pb2.ListQuizResultsRequest(deck_id=deck.deck_id), metadata=them),
    ]
    for call in calls:
        assert await refused(call) == grpc.StatusCode.NOT_FOUND
    # The owner's quiz is untouched: still open, answers hidden until it is submitted.
    assert (
        await refused(study.GetQuizResult(study_pb2.GetQuizResultRequest(quiz_id=quiz.quiz_id), metadata=mine))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    done = await study.SubmitQuiz(study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id), metadata=mine)
    assert done.unanswered == 2
    assert not (await study.ListQuizResults(study_pb2.ListQuizResultsRequest(), metadata=them)).results
    assert len((await study.ListQuizResults(study_pb2.ListQuizResultsRequest(), metadata=mine)).results) == 1


async def test_bad_input_is_refused_and_writes_nothing(
    storage: StorageClient, study: study_pb2_grpc.StudyServiceAsyncStub
) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    file_id, chunk = await material(storage, user)
    flashcards = await study.StoreDeck(deck_request(file_id, chunk, 2), metadata=me)
    deck = await study.StoreDeck(mc_deck(file_id, chunk, 2), metadata=me)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for request, code in [
        (
            study_pb2.StartQuizRequest(deck_id=flashcards.deck_id, count=2, time_limit_s=60),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=0, time_limit_s=60), invalid),
        (study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=101, time_limit_s=60), invalid),
        (study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=0), invalid),
        (study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=3 * 3600 + 1), invalid),
        (study_pb2.StartQuizRequest(deck_id="not-an-id", count=2, time_limit_s=60), invalid),
    ]:
        assert await refused(study.StartQuiz(request, metadata=me)) == code, request

    quiz = await study.StartQuiz(
        study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=60), metadata=me
    )
    answer = study_pb2.QuizAnswer
    for answers in (
        [answer(position=2, choice=0)],  # the quiz has questions 0 and 1
        [answer(position=-1, choice=0)],
        [answer(position=0, choice=4)],
        [answer(position=0, choice=1), answer(position=0, choice=2)],
    ):
        bad = study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id, answers=answers)
        assert await refused(study.SubmitQuiz(bad, metadata=me)) == invalid, answers
    # Nothing was scored: the quiz is still open and takes a good submit.
    assert not (await study.ListQuizResults(study_pb2.ListQuizResultsRequest(), metadata=me)).results
    result = await study.SubmitQuiz(
        study_pb2.SubmitQuizRequest(quiz_id=quiz.quiz_id, answers=[answer(position=1, choice=3)]), metadata=me
    )
    assert result.unanswered == 1 and result.correct + result.wrong == 1
    for token in ("bm90IGEgdG9rZW4", encode_token([1, 2]), encode_token(["2026-01-01", "not-an-id"])):
        bad_token = study_pb2.ListQuizResultsRequest(page_token=token)
        assert await refused(study.ListQuizResults(bad_token, metadata=me)) == invalid, token

    # Suspended cards are never asked: with both suspended the deck has nothing to quiz on.
    for asked in (await study.ListCards(study_pb2.ListCardsRequest(deck_id=deck.deck_id), metadata=me)).cards:
        await study.UpdateCard(study_pb2.UpdateCardRequest(card_id=asked.card_id, suspended=True), metadata=me)
    none_left = study_pb2.StartQuizRequest(deck_id=deck.deck_id, count=2, time_limit_s=60)
    assert await refused(study.StartQuiz(none_left, metadata=me)) == grpc.StatusCode.FAILED_PRECONDITION
    assert len((await study.ListQuizResults(study_pb2.ListQuizResultsRequest(), metadata=me)).results) == 1
