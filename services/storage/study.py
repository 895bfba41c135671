"""StudyService: decks, cards with their FSRS state, and the review log, scoped by the caller.

Scheduling is the `fsrs` package's (py-fsrs, the scheduler Anki ships): a review loads the card's
stored state into an ``fsrs.Card``, lets ``Scheduler.review_card`` decide, and stores what it
returns, row lock held, beside a review-log row. Nothing here computes an interval.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import fsrs
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from studyassist.core.errors import FailedPrecondition, InvalidArgument, NotFound
from studyassist.storage.v1 import study_pb2, study_pb2_grpc

from storage.db import Connection, Database
from storage.ids import caller, decode_token, encode_token, page_size, parse_id
from storage.quiz import QuizMethods

MAX_CARDS = 500
CHOICES = 4
MAX_FRONT_CHARS = 2_000
MAX_BACK_CHARS = 4_000
MAX_QUOTE_CHARS = 20_000
MAX_TITLE_CHARS = 200
MAX_DURATION_MS = 24 * 3_600_000
# "Due today": due within the next day, whatever the student's time zone.
TODAY = timedelta(hours=24)
RATINGS = {"again": fsrs.Rating.Again, "hard": fsrs.Rating.Hard, "good": fsrs.Rating.Good, "easy": fsrs.Rating.Easy}
KINDS = (study_pb2.CARD_KIND_FLASHCARD, study_pb2.CARD_KIND_CLOZE, study_pb2.CARD_KIND_MULTIPLE_CHOICE)

CARD_COLUMNS = (
    "id, deck_id, kind, front, back, choices, file_id, file_name, chunk_id, page, heading, quote, suspended,"
    " state, step, stability, difficulty, due, last_review, reviews, created_at, position"
)
DECK_SELECT = """
    SELECT d.id, d.title, d.kind, d.file_ids, d.dropped, d.created_at,
           count(c.id) AS card_count,
           count(c.id) FILTER (WHERE NOT c.suspended AND c.due <= $2) AS due_count,
           count(c.id) FILTER (WHERE NOT c.suspended AND c.due <= $3) AS due_today,
           count(c.id) FILTER (WHERE c.reviews = 0) AS new_count,
           count(c.id) FILTER (WHERE c.state = 2) AS learned_count,
           (SELECT avg((r.rating > 1)::int) FROM review_logs r WHERE r.deck_id = d.id AND r.user_id = $1)
               AS retention
    FROM decks d LEFT JOIN cards c ON c.deck_id = d.id
    WHERE d.user_id = $1
"""


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def card_message(row: asyncpg.Record) -> study_pb2.Card:
    return study_pb2.Card(
        card_id=str(row["id"]),
        deck_id=str(row["deck_id"]),
        kind=row["kind"],
        front=row["front"],
        back=row["back"],
        choices=json.loads(row["choices"]),
        source=study_pb2.CardSource(
            file_id=str(row["file_id"] or ""),
            file_name=row["file_name"],
            chunk_id=str(row["chunk_id"] or ""),
            page=row["page"],
            heading=row["heading"],
            quote=row["quote"],
        ),
        suspended=row["suspended"],
        state=row["state"],
        step=-1 if row["step"] is None else row["step"],
        stability=row["stability"] or 0.0,
        difficulty=row["difficulty"] or 0.0,
        due=_ts(row["due"]),
        last_review=_ts(row["last_review"]),
        reviews=row["reviews"],
        created_at=_ts(row["created_at"]),
    )


def deck_message(row: asyncpg.Record) -> study_pb2.Deck:
    return study_pb2.Deck(
        deck_id=str(row["id"]),
        title=row["title"],
        kind=row["kind"],
        file_ids=[str(f) for f in row["file_ids"]],
        card_count=row["card_count"],
        due_count=row["due_count"],
        due_today=row["due_today"],
        new_count=row["new_count"],
        learned_count=row["learned_count"],
        retention=float(row["retention"] or 0.0),
        created_at=_ts(row["created_at"]),
        dropped=row["dropped"],
    )


def _text(value: str, field: str, limit: int, *, required: bool = True) -> str:
    value = value.replace("\x00", "").strip()  # PostgreSQL text cannot hold NUL
    if required and not value:
        raise InvalidArgument(f"{field} is empty")
    if len(value) > limit:
        raise InvalidArgument(f"{field} is longer than {limit} characters")
    return value


def _validate_card(card: study_pb2.NewCard, n: int) -> None:
    if card.kind not in KINDS:
        raise InvalidArgument(f"cards[{n}].kind is not a card kind")
    _text(card.front, f"cards[{n}].front", MAX_FRONT_CHARS)
    _text(card.back, f"cards[{n}].back", MAX_BACK_CHARS)
    if card.kind == study_pb2.CARD_KIND_MULTIPLE_CHOICE:
        if len(card.choices) != CHOICES or len(set(card.choices)) != CHOICES or card.back not in card.choices:
            raise InvalidArgument(f"cards[{n}] needs {CHOICES} different choices, its answer among them")
    elif card.choices:
        raise InvalidArgument(f"cards[{n}] has choices but is not multiple choice")
    parse_id(card.source.file_id, f"cards[{n}].source.file_id")
    parse_id(card.source.chunk_id, f"cards[{n}].source.chunk_id")
    _text(card.source.quote, f"cards[{n}].source.quote", MAX_QUOTE_CHARS)


class StudyServicer(QuizMethods, study_pb2_grpc.StudyServiceServicer):
    def __init__(self, db: Database, scheduler: fsrs.Scheduler | None = None) -> None:
        self.db = db
        self.scheduler = scheduler or fsrs.Scheduler()

    async def StoreDeck(self, request: study_pb2.StoreDeckRequest, context: grpc.aio.ServicerContext) -> study_pb2.Deck:
        user_id = caller(context)
        if not 1 <= len(request.cards) <= MAX_CARDS:
            raise InvalidArgument(f"a deck has 1 to {MAX_CARDS} cards, not {len(request.cards)}")
        if request.kind not in KINDS:
            raise InvalidArgument("kind is not a card kind")
        title = _text(request.title, "title", MAX_TITLE_CHARS, required=False) or "Deck"
        for n, card in enumerate(request.cards):
            _validate_card(card, n)
        file_ids = list(dict.fromkeys(parse_id(f, "file_ids") for f in request.file_ids))
        chunk_ids = list({uuid.UUID(c.source.chunk_id) for c in request.cards})
        deck_id = uuid.uuid4()
        now = datetime.now(UTC)
        async with self.db.connection() as conn, conn.transaction():
            # Every file named and every cited passage must be the caller's, in a live file: a
            # deck never quotes another student's material.
            owned = {
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM uploaded_files WHERE user_id = $1 AND deleted_at IS NULL AND id = ANY($2::uuid[])",
                    user_id,
                    file_ids,
                )
            }
            if len(owned) != len(file_ids):
                raise NotFound("file not found")
            passages = {
                (r["chunk_id"], r["file_id"])
                for r in await conn.fetch(
                    "SELECT c.id AS chunk_id, f.id AS file_id FROM chunks c"
                    " JOIN uploaded_files f ON f.document_id = c.document_id AND f.deleted_at IS NULL"
                    " WHERE c.user_id = $1 AND f.user_id = $1 AND c.id = ANY($2::uuid[])",
                    user_id,
                    chunk_ids,
                )
            }
            for n, card in enumerate(request.cards):
                if (uuid.UUID(card.source.chunk_id), uuid.UUID(card.source.file_id)) not in passages:
                    raise NotFound(f"cards[{n}].source: passage not found")
            await conn.execute(
                "INSERT INTO decks (id, user_id, title, kind, file_ids, dropped, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                deck_id,
                user_id,
                title,
                request.kind,
                file_ids,
                max(0, request.dropped),
                now,
            )
            await conn.executemany(
                "INSERT INTO cards (id, deck_id, user_id, position, kind, front, back, choices, file_id, file_name,"
                " chunk_id, page, heading, quote, due, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $15)",
                [
                    (
                        uuid.uuid4(),
                        deck_id,
                        user_id,
                        n,
                        card.kind,
                        _text(card.front, "front", MAX_FRONT_CHARS),
                        _text(card.back, "back", MAX_BACK_CHARS),
                        json.dumps(list(card.choices)),
                        uuid.UUID(card.source.file_id),
                        card.source.file_name.replace("\x00", "")[:500],
                        uuid.UUID(card.source.chunk_id),
                        max(0, card.source.page),
                        card.source.heading.replace("\x00", "")[:500],
                        card.source.quote.replace("\x00", ""),
                        now,
                    )
                    for n, card in enumerate(request.cards)
                ],
            )
            return await self._deck(conn, user_id, deck_id)

    async def _deck(self, conn: Connection, user_id: uuid.UUID, deck_id: uuid.UUID) -> study_pb2.Deck:
        now = datetime.now(UTC)
        row = await conn.fetchrow(DECK_SELECT + " AND d.id = $4 GROUP BY d.id", user_id, now, now + TODAY, deck_id)
        if row is None:
            raise NotFound("deck not found")
        return deck_message(row)

    async def ListDecks(
        self, request: study_pb2.ListDecksRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.ListDecksResponse:
        user_id = caller(context)
        now = datetime.now(UTC)
        async with self.db.connection() as conn:
            rows = await conn.fetch(
                DECK_SELECT + " GROUP BY d.id ORDER BY d.created_at DESC, d.id DESC", user_id, now, now + TODAY
            )
        return study_pb2.ListDecksResponse(decks=[deck_message(r) for r in rows])

    async def GetDeck(self, request: study_pb2.GetDeckRequest, context: grpc.aio.ServicerContext) -> study_pb2.Deck:
        user_id = caller(context)
        deck_id = parse_id(request.deck_id, "deck_id")
        async with self.db.connection() as conn:
            return await self._deck(conn, user_id, deck_id)

    async def DeleteDeck(
        self, request: study_pb2.DeleteDeckRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.DeleteDeckResponse:
        user_id = caller(context)
        deck_id = parse_id(request.deck_id, "deck_id")
        async with self.db.connection() as conn:
            done = await conn.fetchval(
                "DELETE FROM decks WHERE id = $1 AND user_id = $2 RETURNING id", deck_id, user_id
            )
        if done is None:
            raise NotFound("deck not found")
        return study_pb2.DeleteDeckResponse()

    async def ListCards(
        self, request: study_pb2.ListCardsRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.ListCardsResponse:
        user_id = caller(context)
        deck_id = parse_id(request.deck_id, "deck_id")
        size = page_size(request.page_size)
        after = decode_token(request.page_token, 1)
        if after is not None and not isinstance(after[0], int):
            raise InvalidArgument("page_token is not valid")
        async with self.db.connection() as conn:
            if await conn.fetchval("SELECT 1 FROM decks WHERE id = $1 AND user_id = $2", deck_id, user_id) is None:
                raise NotFound("deck not found")
            rows = await conn.fetch(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE deck_id = $1 AND user_id = $2 AND position > $3"
                " ORDER BY position LIMIT $4",
                deck_id,
                user_id,
                -1 if after is None else after[0],
                size + 1,
            )
        token = encode_token([rows[size - 1]["position"]]) if len(rows) > size else ""
        return study_pb2.ListCardsResponse(cards=[card_message(r) for r in rows[:size]], next_page_token=token)

    async def UpdateCard(
        self, request: study_pb2.UpdateCardRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.Card:
        user_id = caller(context)
        card_id = parse_id(request.card_id, "card_id")
        front = _text(request.front, "front", MAX_FRONT_CHARS, required=False) or None
        back = _text(request.back, "back", MAX_BACK_CHARS, required=False) or None
        suspended = request.suspended if request.HasField("suspended") else None
        async with self.db.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT kind, choices, back FROM cards WHERE id = $1 AND user_id = $2 FOR UPDATE", card_id, user_id
            )
            if row is None:
                raise NotFound("card not found")
            choices: list[str] = json.loads(row["choices"])
            if back is not None and row["kind"] == study_pb2.CARD_KIND_MULTIPLE_CHOICE:
                # The right choice is edited with the answer, so the answer stays among the choices.
                if back in choices and back != row["back"]:
                    raise InvalidArgument("back is already one of the other choices")
                choices = [back if c == row["back"] else c for c in choices]
            updated = await conn.fetchrow(
                "UPDATE cards SET front = coalesce($3, front), back = coalesce($4, back), choices = $5,"
                " suspended = coalesce($6, suspended), updated_at = now()"
                f" WHERE id = $1 AND user_id = $2 RETURNING {CARD_COLUMNS}",
                card_id,
                user_id,
                front,
                back,
                json.dumps(choices),
                suspended,
            )
        assert updated is not None  # the row is locked above
        return card_message(updated)

    async def DeleteCard(
        self, request: study_pb2.DeleteCardRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.DeleteCardResponse:
        user_id = caller(context)
        card_id = parse_id(request.card_id, "card_id")
        async with self.db.connection() as conn:
            done = await conn.fetchval(
                "DELETE FROM cards WHERE id = $1 AND user_id = $2 RETURNING id", card_id, user_id
            )
        if done is None:
            raise NotFound("card not found")
        return study_pb2.DeleteCardResponse()

    async def ListDueCards(
        self, request: study_pb2.ListDueCardsRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.ListDueCardsResponse:
        user_id = caller(context)
        size = page_size(request.page_size)
        deck_id = parse_id(request.deck_id, "deck_id") if request.deck_id else None
        now = datetime.now(UTC)
        async with self.db.connection() as conn:
            if deck_id is not None and (
                await conn.fetchval("SELECT 1 FROM decks WHERE id = $1 AND user_id = $2", deck_id, user_id) is None
            ):
                raise NotFound("deck not found")
            # Both on the partial index cards_user_due (the deck filter is applied to its rows).
            rows = await conn.fetch(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE user_id = $1 AND NOT suspended AND due <= $2"
                " AND ($3::uuid IS NULL OR deck_id = $3) ORDER BY due, id LIMIT $4",
                user_id,
                now,
                deck_id,
                size,
            )
            due = len(rows)
            if due == size:
                due = await conn.fetchval(
                    "SELECT count(*) FROM cards WHERE user_id = $1 AND NOT suspended AND due <= $2"
                    " AND ($3::uuid IS NULL OR deck_id = $3)",
                    user_id,
                    now,
                    deck_id,
                )
        return study_pb2.ListDueCardsResponse(cards=[card_message(r) for r in rows], due_count=due)

    async def ReviewCard(
        self, request: study_pb2.ReviewCardRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.ReviewCardResponse:
        user_id = caller(context)
        card_id = parse_id(request.card_id, "card_id")
        rating = RATINGS.get(request.rating.strip().lower())
        if rating is None:
            raise InvalidArgument("rating must be one of again, hard, good, easy")
        if not 0 <= request.duration_ms <= MAX_DURATION_MS:
            raise InvalidArgument("duration_ms is out of range")
        async with self.db.connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                f"SELECT {CARD_COLUMNS} FROM cards WHERE id = $1 AND user_id = $2 FOR UPDATE", card_id, user_id
            )
            if row is None:
                raise NotFound("card not found")
            if row["suspended"]:
                raise FailedPrecondition("the card is suspended")
            now = datetime.now(UTC)
            if row["last_review"] is not None and now < row["last_review"]:
                # A clock that went backwards (a replica's, or the card's last review came from one
                # ahead): FSRS would see a negative interval, so the review is refused, not stored.
                raise FailedPrecondition("the card's last review is later than now: check the server clock")
            card = fsrs.Card(
                card_id=0,  # the package's own id is unused (without one it sleeps a millisecond to make one)
                state=fsrs.State(row["state"]),
                step=row["step"],
                stability=row["stability"],
                difficulty=row["difficulty"],
                due=row["due"].astimezone(UTC),
                last_review=None if row["last_review"] is None else row["last_review"].astimezone(UTC),
            )
            card, _ = self.scheduler.review_card(card, rating, now, request.duration_ms or None)
            updated = await conn.fetchrow(
                "UPDATE cards SET state = $3, step = $4, stability = $5, difficulty = $6, due = $7, last_review = $8,"
                f" reviews = reviews + 1, updated_at = $8 WHERE id = $1 AND user_id = $2 RETURNING {CARD_COLUMNS}",
                card_id,
                user_id,
                int(card.state),
                card.step,
                card.stability,
                card.difficulty,
                card.due,
                now,
            )
            await conn.execute(
                "INSERT INTO review_logs (user_id, card_id, deck_id, rating, reviewed_at, duration_ms, state,"
                " stability, difficulty, due) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                user_id,
                card_id,
                row["deck_id"],
                int(rating),
                now,
                request.duration_ms or None,
                int(card.state),
                card.stability,
                card.difficulty,
                card.due,
            )
        assert updated is not None  # the row is locked above
        return study_pb2.ReviewCardResponse(card=card_message(updated))
