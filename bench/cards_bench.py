"""The study loop's figures (issue 21), each beside a baseline measured in the same run.

    .venv/bin/python -m bench.cards_bench            # the whole run (about 2 minutes on 2 cores)
    .venv/bin/python -m bench.cards_bench --quick    # smoke run: 10 pages, 2,000 cards

Figures:
- card quality, extractive generator, on the retrieval evaluation's Vietnamese study passages
  (bench/data/retrieval): per subject and kind, the share of cards whose answer appears in the
  passage they cite (``chat.cards.supported``, the check the generator itself runs), duplicate
  questions in a deck, candidates dropped, the time for a 50-card deck; beside it, the time to
  split the same text into sentences (the least any generator does with it);
- a 50-card deck from a 30-page PDF in extractive mode, through the real mesh (chat's
  DeckService.CreateDeck reading storage's passages, storing the deck through storage's
  StudyService), per kind; beside it, the time storage takes to ingest the same PDF (upload ->
  ready: parse in the sandboxed child, chunk, embed through the embedding service, store);
- ``GET /v1/reviews:due`` (StudyService.ListDueCards, its first page of 50 with the count of all)
  for a student with 10,000 cards, every one due (the most the query has to count), over gRPC to
  a real storage process; beside it, the same two SQL statements run directly on one asyncpg
  connection (the database's share) and ListDecks over the same cards.
The PDF's text is the evaluation's passages (tests/web/minimal_pdf.make_text_pdf writes it with a
ToUnicode map, so the parser extracts the Vietnamese exactly).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from chat.cards import BLANK, CLOZE, FLASHCARD, MULTIPLE_CHOICE, SourceChunk, generate, normalise, supported
from chat.extractive import prose_sentences
from studyassist.chat.v1 import decks_pb2, decks_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.testing import create_database, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc, study_pb2, study_pb2_grpc

from bench.report import record
from tests.web.minimal_pdf import make_text_pdf

DATA = Path(__file__).resolve().parent / "data" / "retrieval"
SUBJECTS = ("db", "dsa", "net", "os", "prob")
KINDS = {"flashcard": FLASHCARD, "cloze": CLOZE, "multiple_choice": MULTIPLE_CHOICE}
# A page of lecture notes: 60 lines of at most 95 characters at 10 pt (about 4,500 characters).
LINES_PER_PAGE = 60
LINE_CHARS = 95
DECK_SIZE = 50
# StoreDeck's largest deck (storage.study.MAX_CARDS).
STORE_BATCH = 500
NO_LLM = "http://127.0.0.1:9/v1"


def subject_chunks(subject: str) -> list[SourceChunk]:
    data = json.loads((DATA / f"{subject}.json").read_text(encoding="utf-8"))
    return [SourceChunk(subject, subject, p["id"], 0, p.get("title", ""), p["text"]) for p in data["passages"]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def spread(values_ms: list[float]) -> str:
    return (
        f"p50 {percentile(values_ms, 50):6.2f} ms  p95 {percentile(values_ms, 95):6.2f} ms"
        f"  p99 {percentile(values_ms, 99):6.2f} ms"
    )


def bench_quality() -> None:
    print("## Card quality, extractive, on the retrieval evaluation's passages (50-card decks)")
    print(
        f"{'subject':8} {'kind':16} {'cards':>5} {'in passage':>10} {'verbatim':>8} {'dup q':>5} {'same a':>6}"
        f" {'dropped':>7} {'50-card ms':>10}"
    )
    total = held = verbatim = duplicates = same_answers = decks = 0
    for subject in SUBJECTS:
        chunks = subject_chunks(subject)
        started = time.perf_counter()
        for chunk in chunks:
            prose_sentences(chunk.text)
        split_ms = (time.perf_counter() - started) * 1000
        for name, kind in KINDS.items():
            started = time.perf_counter()
            made = generate(chunks, kind, DECK_SIZE)
            elapsed_ms = (time.perf_counter() - started) * 1000
            ok = sum(supported(c.back, c.source.text) for c in made.cards)
            # Stricter than the generator's own check (which folds accents and punctuation): the
            # answer word for word in its passage, case aside, as the review screen marks it.
            exact = sum(c.back.removesuffix("…").strip().lower() in c.source.text.lower() for c in made.cards)
            # Not counted as a repeat, shown for judgement: one answer drawn twice from one passage.
            pairs = [(normalise(c.back), c.source.chunk_id) for c in made.cards]
            same = len(pairs) - len(set(pairs))
            # The same question twice: the same front once the blank and case and accents are folded.
            fronts = [normalise(c.front.replace(BLANK, " ")) for c in made.cards]
            repeated = len(fronts) - len(set(fronts))
            total += len(made.cards)
            held += ok
            verbatim += exact
            same_answers += same
            duplicates += repeated
            decks += 1
            print(
                f"{subject:8} {name:16} {len(made.cards):5} {ok / max(1, len(made.cards)):10.1%}"
                f" {exact / max(1, len(made.cards)):8.1%} {repeated:5} {same:6} {made.dropped:7} {elapsed_ms:10.0f}"
                f"   (sentence split of the same text: {split_ms:.1f} ms)"
            )
    share = 100 * held / max(1, total)
    strict = 100 * verbatim / max(1, total)
    print(
        f"all: {held}/{total} cards answer from their passage ({share:.1f} %), {verbatim} word for word"
        f" ({strict:.1f} %); {duplicates} duplicate questions; {same_answers} answers drawn twice from one passage"
    )
    print()
    record(
        "cards_in_passage",
        share,
        f"{share:.1f} % ({held}/{total} cards, {decks} decks of {DECK_SIZE}, 5 subjects x 3 kinds)",
        f"word for word, case aside (stricter than the generator's folded check): {strict:.1f} %",
    )
    record(
        "cards_duplicates",
        duplicates,
        f"{duplicates} in {decks} decks of {DECK_SIZE}",
        "fronts compared with case, accents and the cloze blank folded",
    )


def pdf_pages(pages: int) -> list[list[str]]:
    """``pages`` pages of lecture notes: the evaluation's passages, each under its title, wrapped."""
    lines: list[str] = []
    for subject in SUBJECTS:
        for chunk in subject_chunks(subject):
            if chunk.heading:
                lines.append(chunk.heading[:LINE_CHARS])
            lines += textwrap.wrap(chunk.text, LINE_CHARS)
            lines.append("")
            if len(lines) >= pages * LINES_PER_PAGE:
                return [lines[i : i + LINES_PER_PAGE] for i in range(0, pages * LINES_PER_PAGE, LINES_PER_PAGE)]
    raise ValueError(f"the passages fill fewer than {pages} pages")


async def upload(name: str, data: bytes) -> AsyncIterator[storage_pb2.UploadFileRequest]:
    yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=name))
    yield storage_pb2.UploadFileRequest(chunk=data)


async def ingest(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, me: tuple[tuple[str, str], ...], name: str, data: bytes
) -> storage_pb2.File:
    file = await stub.UploadFile(upload(name, data), metadata=me)
    last = file
    async for update in stub.WatchFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me):
        last = update
    if last.status != storage_pb2.FILE_STATUS_READY:
        raise RuntimeError(f"{name} did not become ready: {last.error}")
    return last


async def bench_deck(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    decks: decks_pb2_grpc.DeckServiceAsyncStub,
    study: study_pb2_grpc.StudyServiceAsyncStub,
    me: tuple[tuple[str, str], ...],
    pages: int,
    rounds: int,
) -> storage_pb2.File:
    # Warm-up: the embedding model's first batch, the parser child's first start, chat's first deck.
    warm = await ingest(stub, me, "warm.md", "# Ngăn xếp\n\nNgăn xếp là cấu trúc dữ liệu LIFO.\n".encode())
    await study.DeleteDeck(
        study_pb2.DeleteDeckRequest(
            deck_id=(
                await decks.CreateDeck(decks_pb2.CreateDeckRequest(size=1, file_ids=[warm.file_id]), metadata=me)
            ).deck_id
        ),
        metadata=me,
    )
    data = make_text_pdf(pdf_pages(pages))
    started = time.perf_counter()
    pdf = await ingest(stub, me, "bai-giang.pdf", data)
    ingest_s = time.perf_counter() - started
    print(
        f"## A {DECK_SIZE}-card deck from a {pages}-page PDF, extractive ({len(data) / 1e3:.0f} kB, "
        f"{pdf.chunks_total} passages), CreateDeck through chat and storage, {rounds} rounds per kind"
    )
    print(f"baseline: ingest of the same PDF (upload -> ready: parse, chunk, embed, store): {ingest_s:6.2f} s")
    worst_kind, worst_s = "", 0.0
    for name, kind in KINDS.items():
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            deck = await decks.CreateDeck(
                decks_pb2.CreateDeckRequest(size=DECK_SIZE, kind=kind, file_ids=[pdf.file_id]), metadata=me
            )
            times.append(time.perf_counter() - started)
            if deck.card_count != DECK_SIZE:
                raise RuntimeError(f"a {name} deck of {deck.card_count} cards, not {DECK_SIZE}")
            await study.DeleteDeck(study_pb2.DeleteDeckRequest(deck_id=deck.deck_id), metadata=me)
        median = statistics.median(times)
        print(f"CreateDeck {name:16} median {median:6.3f} s  max {max(times):6.3f} s  ({deck.dropped} dropped)")
        if median > worst_s:
            worst_kind, worst_s = name, median
    print()
    record(
        "cards_deck_pdf",
        worst_s,
        f"{worst_s:.2f} s median, slowest kind ({worst_kind}), {pages}-page PDF, {pdf.chunks_total} passages",
        f"ingesting the same PDF {ingest_s:.2f} s",
    )
    return pdf


async def file_chunks(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, me: tuple[tuple[str, str], ...], file: storage_pb2.File
) -> list[storage_pb2.FileChunk]:
    found: list[storage_pb2.FileChunk] = []
    token = ""
    while True:
        page = await stub.ListFileChunks(
            storage_pb2.ListFileChunksRequest(file_id=file.file_id, page_size=200, page_token=token), metadata=me
        )
        found += page.chunks
        token = page.next_page_token
        if not token:
            return found


async def timed(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(20):  # warm-up: the connection pool, the plan cache
        await call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def bench_due(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    study: study_pb2_grpc.StudyServiceAsyncStub,
    database_url: str,
    me: tuple[tuple[str, str], ...],
    user_id: str,
    pdf: storage_pb2.File,
    cards: int,
    calls: int,
) -> None:
    # The cards cite the PDF's passages (StoreDeck checks that each is the caller's); every one is
    # due from the moment it is stored, so each call counts all of them.
    passages = await file_chunks(stub, me, pdf)
    deck_ids = []
    for start in range(0, cards, STORE_BATCH):
        batch = [
            study_pb2.NewCard(
                kind=study_pb2.CARD_KIND_FLASHCARD,
                front=f"Câu hỏi {n}: {chunk.text[:80]}?",
                back=chunk.text[80:200] or chunk.text[:40],
                source=study_pb2.CardSource(
                    file_id=pdf.file_id,
                    file_name=pdf.file_name,
                    chunk_id=chunk.chunk_id,
                    page=chunk.page,
                    heading=chunk.heading,
                    quote=chunk.text,
                ),
            )
            for n in range(start, min(cards, start + STORE_BATCH))
            for chunk in [passages[n % len(passages)]]
        ]
        deck = await study.StoreDeck(
            study_pb2.StoreDeckRequest(
                title=f"Bộ {start}", kind=study_pb2.CARD_KIND_FLASHCARD, file_ids=[pdf.file_id], cards=batch
            ),
            metadata=me,
        )
        deck_ids.append(deck.deck_id)
    conn = await asyncpg.connect(database_url)
    try:
        # What autovacuum does after a bulk load, done now so the planner sees 10,000 rows.
        await conn.execute("ANALYZE cards")
        user = uuid.UUID(user_id)
        select = await conn.prepare(
            "SELECT id, deck_id, kind, front, back, choices, file_id, file_name, chunk_id, page, heading, quote,"
            " suspended, state, step, stability, difficulty, due, last_review, reviews, created_at, position"
            " FROM cards WHERE user_id = $1 AND NOT suspended AND due <= $2 AND ($3::uuid IS NULL OR deck_id = $3)"
            " ORDER BY due, id LIMIT $4"
        )
        count = await conn.prepare(
            "SELECT count(*) FROM cards WHERE user_id = $1 AND NOT suspended AND due <= $2"
            " AND ($3::uuid IS NULL OR deck_id = $3)"
        )

        async def sql() -> None:
            now = datetime.now(UTC)
            await select.fetch(user, now, None, 50)
            await count.fetchval(user, now, None)

        due_check = await study.ListDueCards(study_pb2.ListDueCardsRequest(), metadata=me)
        if due_check.due_count != cards or len(due_check.cards) != 50:
            raise RuntimeError(f"{due_check.due_count} due, {len(due_check.cards)} on the page; expected {cards}, 50")
        rpc = await timed(lambda: study.ListDueCards(study_pb2.ListDueCardsRequest(), metadata=me), calls)
        one_deck = await timed(
            lambda: study.ListDueCards(study_pb2.ListDueCardsRequest(deck_id=deck_ids[-1]), metadata=me), calls
        )
        plain = await timed(sql, calls)
        listed = await timed(lambda: study.ListDecks(study_pb2.ListDecksRequest(), metadata=me), max(50, calls // 4))
    finally:
        await conn.close()
    print(
        f"## GET /v1/reviews:due: {cards} cards for the student, all due, first page of 50 and the count, "
        f"{calls} calls one at a time"
    )
    print(f"ListDueCards (gRPC, storage process), all decks  : {spread(rpc)}")
    print(f"ListDueCards (gRPC, storage process), one deck   : {spread(one_deck)}")
    print(f"baseline: the same two SQL statements, asyncpg   : {spread(plain)}")
    label = f"baseline: ListDecks ({len(deck_ids)} decks' statistics)"
    print(f"{label:49}: {spread(listed)}")
    print()
    record(
        "reviews_due_p95",
        percentile(rpc, 95),
        f"p95 {percentile(rpc, 95):.1f} ms (p50 {percentile(rpc, 50):.1f}, p99 {percentile(rpc, 99):.1f}), "
        f"{cards} cards all due",
        f"same SQL direct p95 {percentile(plain, 95):.1f} ms; ListDecks p95 {percentile(listed, 95):.1f} ms",
    )


async def bench_mesh(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="cb-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        server = start_embedded_postgres(tmp / "pg", cleanup_mode="stop")
        services = []
        try:
            database_url = await create_database(server.get_uri(), f"bench_{uuid.uuid4().hex[:8]}")
            embedding = spawn_service("embedding", {"EMBEDDING_PORT": "0", "REDIS_URL": ""})
            services.append(embedding)
            storage = spawn_service(
                "storage",
                {
                    "STORAGE_PORT": "0",
                    "DATABASE_URL": database_url,
                    "BLOB_DIR": str(tmp / "blobs"),
                    "EMBEDDING_ADDR": embedding.address,
                    "REDIS_URL": "",
                },
            )
            services.append(storage)
            chat = spawn_service(
                "chat",
                {
                    "CHAT_PORT": "0",
                    "STORAGE_ADDR": storage.address,
                    "EMBEDDING_ADDR": embedding.address,
                    "LLM_BASE_URL": NO_LLM,  # extractive mode: no LLM
                    "REDIS_URL": "",
                },
            )
            services.append(chat)
            storage_channel = create_channel(storage.address, default_timeout=300)
            chat_channel = create_channel(chat.address, default_timeout=300)
            stub = storage_pb2_grpc.StorageServiceStub(storage_channel)
            study = study_pb2_grpc.StudyServiceStub(storage_channel)
            decks = decks_pb2_grpc.DeckServiceStub(chat_channel)
            user_id = (
                await stub.CreateUser(storage_pb2.CreateUserRequest(email="cards@ptit.edu.vn", password_hash="h"))
            ).user_id
            me = user_metadata(user_id)
            pdf = await bench_deck(stub, decks, study, me, args.pages, args.rounds)
            await bench_due(stub, study, database_url, me, user_id, pdf, args.cards, args.calls)
            await storage_channel.close(None)
            await chat_channel.close(None)
        finally:
            for service in reversed(services):
                service.stop()
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 pages, 2,000 cards, fewer calls")
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--cards", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help="decks made per kind")
    args = parser.parse_args()
    if args.quick:
        args.pages, args.cards, args.calls, args.rounds = 10, 2_000, 100, 1
    print(f"cards_bench ({'quick' if args.quick else 'full'}), machine cores: {os.cpu_count()}\n")
    bench_quality()
    asyncio.run(bench_mesh(args))


if __name__ == "__main__":
    main()
