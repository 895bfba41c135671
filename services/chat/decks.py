"""DeckService: a deck of cards generated from the caller's passages, stored through storage.

Generation lives in chat, beside retrieval and the LLM: the passages come from storage's
ListFileChunks, the cards from the LLM when it is up (:mod:`chat.llmcards`, held to the same checks)
and from :mod:`chat.cards` for the rest (all of them without an LLM), and storage's
StudyService.StoreDeck keeps the deck and its cards in one transaction, checking again that every
cited passage is the caller's. Every other study call (decks, cards, reviews) is storage's own.
"""

from __future__ import annotations

import asyncio
import zlib
from collections import Counter

import grpc
from studyassist.chat.v1 import decks_pb2, decks_pb2_grpc
from studyassist.core.channels import caller_user_id, user_metadata
from studyassist.core.errors import FailedPrecondition, InvalidArgument, NotFound, StudyAssistError, Unavailable
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc, study_pb2, study_pb2_grpc

from chat.cards import FLASHCARD, CardDraft, SourceChunk, generate
from chat.llm import LlmBackend
from chat.llmcards import DUPLICATE, combine, write_cards

MAX_SIZE = 500
MAX_FILES = 100
KINDS = (study_pb2.CARD_KIND_FLASHCARD, study_pb2.CARD_KIND_CLOZE, study_pb2.CARD_KIND_MULTIPLE_CHOICE)
# A deck reads at most this many passages (a few hundred pages of slides); more would only be slower.
MAX_CHUNKS = 5_000
PAGE = 200
STORAGE_TIMEOUT_S = 20.0
# The LLM's share of a deck request, in all: past it, the extractive generator writes the rest.
LLM_BUDGET_S = 60.0
# Kept of the caller's deadline for generating the rest and storing the deck.
STORE_RESERVE_S = 10.0


def _error(exc: grpc.aio.AioRpcError, what: str) -> StudyAssistError:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"{what}: not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details() or f"{what}: invalid argument")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(exc.details() or f"{what}: failed precondition")
    return Unavailable(f"{what} failed: {code.name}")


class DeckServicer(decks_pb2_grpc.DeckServiceServicer):
    def __init__(
        self,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        study: study_pb2_grpc.StudyServiceAsyncStub,
        llm: LlmBackend | None = None,
        *,
        llm_budget_s: float = LLM_BUDGET_S,
    ) -> None:
        self.storage = storage
        self.study = study
        self.llm = llm
        self.llm_budget_s = llm_budget_s

    async def _ready_files(self, file_ids: list[str], metadata: tuple[tuple[str, str], ...]) -> list[storage_pb2.File]:
        if file_ids:
            files = []
            for file_id in dict.fromkeys(file_ids):
                found = await self.storage.GetFile(
                    storage_pb2.GetFileRequest(file_id=file_id), metadata=metadata, timeout=STORAGE_TIMEOUT_S
                )
                if found.status != storage_pb2.FILE_STATUS_READY:
                    raise FailedPrecondition(f"file {found.file_name} is not ready", reason="FILE_NOT_READY")
                files.append(found)
            return files
        files, token = [], ""
        while True:
            page = await self.storage.ListFiles(
                storage_pb2.ListFilesRequest(page_size=PAGE, page_token=token),
                metadata=metadata,
                timeout=STORAGE_TIMEOUT_S,
            )
            files += [f for f in page.files if f.status == storage_pb2.FILE_STATUS_READY]
            token = page.next_page_token
            if not token or len(files) >= MAX_FILES:
                break
        if not files:
            raise FailedPrecondition("no file is ready to make cards from", reason="NO_READY_FILES")
        # Oldest first: a deck from "all files" follows the course in the order it was uploaded.
        return list(reversed(files[:MAX_FILES]))

    async def _chunks(self, file: storage_pb2.File, metadata: tuple[tuple[str, str], ...]) -> list[SourceChunk]:
        found: list[SourceChunk] = []
        token = ""
        while len(found) < MAX_CHUNKS:
            page = await self.storage.ListFileChunks(
                storage_pb2.ListFileChunksRequest(file_id=file.file_id, page_size=PAGE, page_token=token),
                metadata=metadata,
                timeout=STORAGE_TIMEOUT_S,
            )
            found += [
                SourceChunk(file.file_id, file.file_name, c.chunk_id, c.page, c.heading, c.text, c.char_start)
                for c in page.chunks
            ]
            token = page.next_page_token
            if not token:
                break
        return found

    async def CreateDeck(
        self, request: decks_pb2.CreateDeckRequest, context: grpc.aio.ServicerContext
    ) -> study_pb2.Deck:
        user_id = caller_user_id(context)
        if not 1 <= request.size <= MAX_SIZE:
            raise InvalidArgument(f"size must be 1 to {MAX_SIZE}", reason="DECK_SIZE", args={"max": MAX_SIZE})
        kind = request.kind or FLASHCARD
        if kind not in KINDS:
            raise InvalidArgument("kind is not a card kind")
        if len(request.file_ids) > MAX_FILES:
            raise InvalidArgument(f"at most {MAX_FILES} file_ids")
        metadata = user_metadata(user_id)
        try:
            files = await self._ready_files(list(request.file_ids), metadata)
            chunks = [c for file in files for c in await self._chunks(file, metadata)][:MAX_CHUNKS]
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, "reading the material") from None
        # Off the event loop: a large deck's generation takes a second or so of CPU.
        seed = zlib.crc32(f"{user_id}:{','.join(f.file_id for f in files)}".encode())
        made = await asyncio.to_thread(generate, chunks, kind, request.size, seed=seed)
        llm_cards: list[CardDraft] = []
        llm_dropped: Counter[str] = Counter()
        if self.llm is not None and self.llm.available:
            remaining = context.time_remaining()
            budget = self.llm_budget_s if remaining is None else min(self.llm_budget_s, remaining - STORE_RESERVE_S)
            if budget > 0:
                written = await write_cards(self.llm, chunks, kind, request.size, budget)
                llm_cards, llm_dropped = written.cards, written.dropped
        combined = combine(llm_cards, made.cards, request.size, chunks)
        if combined.llm_duplicates:
            llm_dropped[DUPLICATE] += combined.llm_duplicates
        if not combined.cards:
            raise FailedPrecondition("the material yields no cards of this kind", reason="NO_CARDS")
        title = request.title.strip() or ", ".join(f.file_name for f in files[:3]) + ("…" if len(files) > 3 else "")
        try:
            deck: study_pb2.Deck = await self.study.StoreDeck(
                study_pb2.StoreDeckRequest(
                    title=title[:200],
                    kind=kind,
                    file_ids=[f.file_id for f in files],
                    dropped=made.dropped + llm_dropped.total(),
                    cards=[
                        study_pb2.NewCard(
                            kind=card.kind,
                            front=card.front,
                            back=card.back,
                            choices=list(card.choices),
                            source=study_pb2.CardSource(
                                file_id=card.source.file_id,
                                file_name=card.source.file_name,
                                chunk_id=card.source.chunk_id,
                                page=card.source.page,
                                heading=card.source.heading,
                                quote=card.source.text,
                            ),
                        )
                        for card in combined.cards
                    ],
                ),
                metadata=metadata,
                timeout=STORAGE_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc, "storing the deck") from None
        deck.llm_cards = combined.from_llm
        deck.extractive_cards = combined.from_extractive
        deck.llm_dropped.update(llm_dropped)
        return deck
