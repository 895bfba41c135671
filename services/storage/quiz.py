"""StudyService's quizzes: a timed run of a deck's multiple-choice cards, scored here, never by the client.

StartQuiz picks the cards at random and copies each as asked (its choices shuffled, the right one's
index kept beside it) so the client never holds the answers and a result reads the same after a
card is edited or deleted. SubmitQuiz scores once, row locked: a second submit, or one that comes
after the deadline and the network's allowance, cannot change a result.
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from studyassist.core.errors import FailedPrecondition, InvalidArgument, NotFound
from studyassist.storage.v1 import study_pb2

from storage.db import Database
from storage.ids import caller, decode_token, encode_token, page_size, parse_id

MAX_QUESTIONS = 100
MIN_TIME_LIMIT_S = 10
MAX_TIME_LIMIT_S = 3 * 3600
# A submit sent as the countdown ends reaches the server a little later: this much past the
# deadline still counts. Past it every answer is unanswered.
SUBMIT_GRACE = timedelta(seconds=5)

RESULT_COLUMNS = (
    "id, deck_id, deck_title, question_count, time_limit_s, started_at, deadline, submitted_at, correct,"
    " unanswered, time_taken_ms, late"
)
QUESTION_COLUMNS = (
    "position, card_id, front, choices, answer, chosen, file_id, file_name, chunk_id, page, heading, quote"
)


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def result_message(row: asyncpg.Record, questions: list[asyncpg.Record] | None = None) -> study_pb2.QuizResult:
    correct = row["correct"] or 0
    unanswered = row["unanswered"] or 0
    return study_pb2.QuizResult(
        quiz_id=str(row["id"]),
        deck_id=str(row["deck_id"] or ""),
        deck_title=row["deck_title"],
        question_count=row["question_count"],
        correct=correct,
        wrong=row["question_count"] - correct - unanswered,
        unanswered=unanswered,
        time_limit_s=row["time_limit_s"],
        time_taken_ms=row["time_taken_ms"] or 0,
        late=bool(row["late"]),
        started_at=_ts(row["started_at"]),
        submitted_at=_ts(row["submitted_at"]) if row["submitted_at"] is not None else None,
        questions=[question_result(q) for q in questions or []],
    )


def question_result(row: asyncpg.Record) -> study_pb2.QuizResultQuestion:
    chosen = -1 if row["chosen"] is None else row["chosen"]
    return study_pb2.QuizResultQuestion(
        position=row["position"],
        card_id=str(row["card_id"] or ""),
        front=row["front"],
        choices=json.loads(row["choices"]),
        chosen=chosen,
        answer=row["answer"],
        correct=chosen == row["answer"],
        source=study_pb2.CardSource(
            file_id=str(row["file_id"] or ""),
            file_name=row["file_name"],
            chunk_id=str(row["chunk_id"] or ""),
            page=row["page"],
            heading=row["heading"],
            quote=row["quote"],
        ),
    )


def _answers(request: study_pb2.SubmitQuizRequest, count: int) -> dict[int, int]:
    """position -> choice, or INVALID_ARGUMENT for an answer to no question of the quiz."""
    chosen: dict[int, int] = {}
    for n, answer in enumerate(request.answers):
        if not 0 <= answer.position < count:
            raise InvalidArgument(f"answers[{n}]: the quiz has no question {answer.position}")
        if answer.position in chosen:
            raise InvalidArgument(f"answers[{n}]: question {answer.position} is answered twice")
        if not 0 <= answer.choice < 4:
            raise InvalidArgument(f"answers[{n}].choice must be 0 to 3")
        chosen[answer.position] = answer.choice
    return chosen


class QuizMethods:
    """The quiz RPCs of StudyServicer (storage.study), which inherits them."""

    db: Database

    async def StartQuiz(self, request: study_pb2.StartQuizRequest, context: grpc.aio.ServicerContext) -> study_pb2.Quiz:
        user_id = caller(context)
        deck_id = parse_id(request.deck_id, "deck_id")
        if not 1 <= request.count <= MAX_QUESTIONS:
            raise InvalidArgument(f"a quiz has 1 to {MAX_QUESTIONS} questions, not {request.count}")
        if not MIN_TIME_LIMIT_S <= request.time_limit_s <= MAX_TIME_LIMIT_S:
            raise InvalidArgument(f"time_limit_s must be {MIN_TIME_LIMIT_S} to {MAX_TIME_LIMIT_S} seconds")
        quiz_id = uuid.uuid4()
        now = datetime.now(UTC)
        deadline = now + timedelta(seconds=request.time_limit_s)
        rng = random.SystemRandom()
        async with self.db.connection() as conn, conn.transaction():
            title = await conn.fetchval("SELECT title FROM decks WHERE id = $1 AND user_id = $2", deck_id, user_id)
            if title is None:
                raise NotFound("deck not found")
            cards = await conn.fetch(
                "SELECT id, front, back, choices, file_id, file_name, chunk_id, page, heading, quote FROM cards"
                " WHERE deck_id = $1 AND user_id = $2 AND kind = $3 AND NOT suspended ORDER BY random() LIMIT $4",
                deck_id,
                user_id,
                study_pb2.CARD_KIND_MULTIPLE_CHOICE,
                request.count,
            )
            if not cards:
                raise FailedPrecondition("the deck has no multiple-choice cards to quiz on", reason="NO_QUIZ_CARDS")
            questions = []
            for position, card in enumerate(cards):
                choices: list[str] = json.loads(card["choices"])
                rng.shuffle(choices)
                questions.append((position, card, choices, choices.index(card["back"])))
            await conn.execute(
                "INSERT INTO quizzes (id, user_id, deck_id, deck_title, question_count, time_limit_s, started_at,"
                " deadline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                quiz_id,
                user_id,
                deck_id,
                title,
                len(questions),
                request.time_limit_s,
                now,
                deadline,
            )
            await conn.executemany(
                "INSERT INTO quiz_questions (quiz_id, position, card_id, front, choices, answer, file_id, file_name,"
                " chunk_id, page, heading, quote) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                [
                    (
                        quiz_id,
                        position,
                        card["id"],
                        card["front"],
                        json.dumps(choices),
                        answer,
                        card["file_id"],
                        card["file_name"],
                        card["chunk_id"],
                        card["page"],
                        card["heading"],
                        card["quote"],
                    )
                    for position, card, choices, answer in questions
                ],
            )
        return study_pb2.Quiz(
            quiz_id=str(quiz_id),
            deck_id=str(deck_id),
            deck_title=title,
            questions=[
                study_pb2.QuizQuestion(position=p, card_id=str(c["id"]), front=c["front"], choices=ch)
                for p, c, ch, _ in questions
            ],
            time_limit_s=request.time_limit_s,
            started_at=_ts(now),
            deadline=_ts(deadline),
        )

    async def SubmitQuiz(
        self, request: study_pb2.SubmitQuizRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.QuizResult:
        user_id = caller(context)
        quiz_id = parse_id(request.quiz_id, "quiz_id")
        async with self.db.connection() as conn, conn.transaction():
            quiz = await conn.fetchrow(
                f"SELECT {RESULT_COLUMNS} FROM quizzes WHERE id = $1 AND user_id = $2 FOR UPDATE", quiz_id, user_id
            )
            if quiz is None:
                raise NotFound("quiz not found")
            if quiz["submitted_at"] is not None:
                raise FailedPrecondition("the quiz was already submitted", reason="QUIZ_SUBMITTED")
            chosen = _answers(request, quiz["question_count"])
            now = datetime.now(UTC)
            late = now > quiz["deadline"] + SUBMIT_GRACE
            if late:
                chosen = {}
            rows = await conn.fetch(
                "SELECT position, answer FROM quiz_questions WHERE quiz_id = $1 ORDER BY position", quiz_id
            )
            correct = sum(1 for r in rows if chosen.get(r["position"]) == r["answer"])
            await conn.executemany(
                "UPDATE quiz_questions SET chosen = $3 WHERE quiz_id = $1 AND position = $2",
                [(quiz_id, position, choice) for position, choice in chosen.items()],
            )
            taken = min(now - quiz["started_at"], timedelta(seconds=quiz["time_limit_s"]))
            updated = await conn.fetchrow(
                "UPDATE quizzes SET submitted_at = $2, correct = $3, unanswered = $4, time_taken_ms = $5, late = $6"
                f" WHERE id = $1 RETURNING {RESULT_COLUMNS}",
                quiz_id,
                now,
                correct,
                quiz["question_count"] - len(chosen),
                max(0, int(taken.total_seconds() * 1000)),
                late,
            )
            questions = await conn.fetch(
                f"SELECT {QUESTION_COLUMNS} FROM quiz_questions WHERE quiz_id = $1 ORDER BY position", quiz_id
            )
        assert updated is not None  # the row is locked above
        return result_message(updated, questions)

    async def ListQuizResults(
        self, request: study_pb2.ListQuizResultsRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.ListQuizResultsResponse:
        user_id = caller(context)
        size = page_size(request.page_size)
        deck_id = parse_id(request.deck_id, "deck_id") if request.deck_id else None
        after = decode_token(request.page_token, 2)
        if after is not None:
            try:
                if not all(isinstance(v, str) for v in after):
                    raise ValueError(after)
                after_at, after_id = datetime.fromisoformat(after[0]), uuid.UUID(after[1])
                if after_at.tzinfo is None:
                    raise ValueError(after)  # compared with timestamptz: a naive one would be taken as UTC
            except ValueError:
                raise InvalidArgument("page_token is not valid") from None
        async with self.db.connection() as conn:
            if deck_id is not None and (
                await conn.fetchval("SELECT 1 FROM decks WHERE id = $1 AND user_id = $2", deck_id, user_id) is None
            ):
                raise NotFound("deck not found")
            rows = await conn.fetch(
                f"SELECT {RESULT_COLUMNS} FROM quizzes WHERE user_id = $1 AND submitted_at IS NOT NULL"
                " AND ($2::uuid IS NULL OR deck_id = $2)"
                " AND ($3::timestamptz IS NULL OR (submitted_at, id) < ($3, $4))"
                " ORDER BY submitted_at DESC, id DESC LIMIT $5",
                user_id,
                deck_id,
                None if after is None else after_at,
                None if after is None else after_id,
                size + 1,
            )
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = encode_token([last["submitted_at"].isoformat(), str(last["id"])])
        return study_pb2.ListQuizResultsResponse(
            results=[result_message(r) for r in rows[:size]], next_page_token=token
        )

    async def GetQuizResult(
        self, request: study_pb2.GetQuizResultRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.QuizResult:
        user_id = caller(context)
        quiz_id = parse_id(request.quiz_id, "quiz_id")
        async with self.db.connection() as conn:
            quiz = await conn.fetchrow(
                f"SELECT {RESULT_COLUMNS} FROM quizzes WHERE id = $1 AND user_id = $2", quiz_id, user_id
            )
            if quiz is None:
                raise NotFound("quiz not found")
            if quiz["submitted_at"] is None:
                # Its answers stay hidden while it can still be answered.
                raise FailedPrecondition("the quiz has not been submitted yet", reason="QUIZ_OPEN")
            questions = await conn.fetch(
                f"SELECT {QUESTION_COLUMNS} FROM quiz_questions WHERE quiz_id = $1 ORDER BY position", quiz_id
            )
        return result_message(quiz, questions)
