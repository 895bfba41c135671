"""ChatService: retrieval-augmented answers with citations, streamed from the LLM or extractive."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import metrics
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.common.v1 import common_pb2
from studyassist.core.channels import caller_user_id, user_metadata
from studyassist.core.errors import DeadlineExceeded, InvalidArgument, NotFound, StudyAssistError, Unavailable
from studyassist.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from chat.agents import AgentRegistry, AgentSpec, Sampling
from chat.context import Passage, answer_citations, pack_passages
from chat.extractive import extractive_answer
from chat.grounding import Grounding, abstention_notice, fuse_hits, material_language
from chat.llm import LlmBackend, LlmUnavailable, StreamUsage
from chat.prompts import Turn, build_messages, translation_messages, trim_memory
from chat.responses import ResponseCache, cache_key
from chat.tasks import TaskStore
from chat.text import detect_language, estimate_tokens, greeting_reply, is_greeting, make_title

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 8000
MAX_FILE_IDS = 100
# Deadlines of the calls one answer makes (each also bounded by the caller's own deadline).
STORAGE_TIMEOUT_S = 5.0
EMBED_TIMEOUT_S = 5.0
# Of the caller's deadline, the LLM request leaves this much to finish the exchange (save both turns)
# and to answer DEADLINE_EXCEEDED itself, cleanly, rather than being cancelled by gRPC mid-request.
FINISH_RESERVE_S = 0.25
# Memory gets at most this share of the context budget; passages get the rest.
MEMORY_SHARE = 0.25
HISTORY_PAGE = 100
MAX_HISTORY_PAGES = 20
# Messages considered for memory before trimming to the token budget.
MEMORY_MESSAGES = 40
# A question translated into the material's language for retrieval (cross-language questions).
TRANSLATE_TIMEOUT_S = 20.0
TRANSLATE_SAMPLING = Sampling(temperature=0.0, top_p=1.0, max_tokens=200)
# What the model may add after chat has said that the material does not answer (a suggestion).
ABSTAIN_MAX_TOKENS = 160
GREETING = "greeting"
STOPPED = {"vi": "(Đã dừng.)", "en": "(Stopped.)"}
EXTRACTIVE = "extractive"
# Buckets of llm.tokens_per_second: from a big model on a CPU to a small one on a GPU.
TOKENS_PER_SECOND_BUCKETS = (1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 5000)

T = TypeVar("T")


@dataclass(slots=True)
class Answer:
    """What one exchange produced; the events are built from it as it fills."""

    session_id: str = ""
    backend: str = ""
    text: list[str] = field(default_factory=list)
    citations: list[common_pb2.Citation] = field(default_factory=list)
    usage: StreamUsage = field(default_factory=StreamUsage)
    message_id: str = ""
    cached: bool = False
    retrieval_ms: float = 0.0
    first_token_ms: float = 0.0
    total_ms: float = 0.0

    def response(self) -> chat_pb2.ChatResponse:
        return chat_pb2.ChatResponse(
            session_id=self.session_id,
            message_id=self.message_id,
            answer="".join(self.text),
            citations=self.citations,
            backend=self.backend,
            usage=self.usage_message(),
            timings=self.timings(),
            cached=self.cached,
        )

    def usage_message(self) -> chat_pb2.Usage:
        return chat_pb2.Usage(prompt_tokens=self.usage.prompt_tokens, completion_tokens=self.usage.completion_tokens)

    def timings(self) -> chat_pb2.Timings:
        return chat_pb2.Timings(
            retrieval_ms=self.retrieval_ms, first_token_ms=self.first_token_ms, total_ms=self.total_ms
        )


def _storage_error(exc: grpc.aio.AioRpcError, what: str) -> StudyAssistError:
    """A failed storage/embedding call as the domain error our caller should see."""
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(exc.details() or f"{what}: not found")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(exc.details() or f"{what}: invalid argument")
    return Unavailable(f"{what} failed: {code.name}")


def _validate(request: chat_pb2.ChatRequest) -> str:
    question = request.message.strip()
    if not question:
        raise InvalidArgument("message is required")
    if len(request.message) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"message is longer than {MAX_MESSAGE_CHARS} characters")
    if len(request.file_ids) > MAX_FILE_IDS:
        raise InvalidArgument(f"at most {MAX_FILE_IDS} file_ids")
    if any(not f or len(f) > 64 for f in request.file_ids):
        raise InvalidArgument("file_ids must be non-empty ids of at most 64 characters")
    if len(request.session_id) > 64:
        raise InvalidArgument("session_id is at most 64 characters")
    return question


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    def __init__(
        self,
        agents: AgentRegistry,
        storage: storage_pb2_grpc.StorageServiceAsyncStub,
        embedding: embedding_pb2_grpc.EmbeddingServiceAsyncStub,
        llm: LlmBackend,
        cache: ResponseCache,
        tasks: TaskStore,
        context_tokens: int,
        *,
        grounding: Grounding | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.agents = agents
        self.grounding = grounding or Grounding()
        self.storage = storage
        self.embedding = embedding
        self.llm = llm
        self.cache = cache
        self.tasks = tasks
        self.context_tokens = context_tokens
        # Saves of stopped answers, which outlive the call that was cancelled (held so they finish).
        self._background: set[asyncio.Task[str]] = set()
        meter = meter or metrics.NoOpMeter("chat")
        # Both only for answers an LLM wrote (not cached, greeting or extractive ones), with the model
        # and whether it was streamed as attributes.
        self._time_to_first_token = meter.create_histogram(
            "llm.time_to_first_token",
            unit="s",
            description="From the chat request's arrival to the LLM's first token (retrieval and prompt included)",
        )
        self._tokens_per_second = meter.create_histogram(
            "llm.tokens_per_second",
            unit="{token}/s",
            description="LLM output speed: streamed, tokens after the first over the time since it; "
            "not streamed, all output tokens over the whole request",
            explicit_bucket_boundaries_advisory=TOKENS_PER_SECOND_BUCKETS,
        )

    def _llm_attributes(self, streamed: bool) -> dict[str, str | bool]:
        return {"gen_ai.request.model": self.llm.model, "gen_ai.request.stream": streamed}

    # --- RPCs -------------------------------------------------------------------------------

    async def ListAgents(
        self, request: chat_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ListAgentsResponse:
        return chat_pb2.ListAgentsResponse(
            agents=[
                chat_pb2.Agent(
                    agent_id=a.agent_id,
                    name_vi=a.name_vi,
                    name_en=a.name_en,
                    description_vi=a.description_vi,
                    description_en=a.description_en,
                )
                for a in self.agents.agents
            ]
        )

    async def StreamChat(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        user_id = caller_user_id(context)
        async for event in self._exchange(user_id, request, streaming=True, deadline_s=context.time_remaining()):
            yield event

    async def Chat(self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext) -> chat_pb2.ChatResponse:
        user_id = caller_user_id(context)
        return await self._whole(user_id, request, context.time_remaining())

    async def SubmitChatTask(
        self, request: chat_pb2.ChatRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ChatTask:
        user_id = caller_user_id(context)
        _validate(request)
        self.agents.get(request.agent_id)
        # The task outlives this call, so it gets its own (generous) deadline, not the caller's.
        copied = chat_pb2.ChatRequest()
        copied.CopyFrom(request)
        return await self.tasks.submit(user_id, lambda: self._whole(user_id, copied, self.llm.timeout_s + 30))

    async def GetChatTask(
        self, request: chat_pb2.GetChatTaskRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ChatTask:
        user_id = caller_user_id(context)
        return (await self.tasks.get(user_id, request.task_id)).message()

    async def WatchChatTask(
        self, request: chat_pb2.GetChatTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[chat_pb2.ChatTask]:
        user_id = caller_user_id(context)
        async for task in self.tasks.watch(user_id, request.task_id, context.time_remaining()):
            yield task

    async def GetChatStatus(
        self, request: chat_pb2.GetChatStatusRequest, context: grpc.aio.ServicerContext
    ) -> chat_pb2.ChatStatus:
        return chat_pb2.ChatStatus(
            backend=self.llm.backend_name,
            llm_base_url=self.llm.base_url,
            llm_available=self.llm.available,
            llm_error=self.llm.last_error,
            agent_ids=[a.agent_id for a in self.agents.agents],
        )

    # --- one exchange -------------------------------------------------------------------------

    async def _whole(
        self, user_id: str, request: chat_pb2.ChatRequest, deadline_s: float | None
    ) -> chat_pb2.ChatResponse:
        answer = Answer()
        async for _ in self._exchange(user_id, request, streaming=False, deadline_s=deadline_s, answer=answer):
            pass
        return answer.response()

    async def _exchange(
        self,
        user_id: str,
        request: chat_pb2.ChatRequest,
        *,
        streaming: bool,
        deadline_s: float | None,
        answer: Answer | None = None,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """The events of one exchange; ``answer`` (when given) is filled in as they are produced."""
        started = time.perf_counter()
        deadline_at = None if deadline_s is None else time.monotonic() + deadline_s
        answer = answer if answer is not None else Answer()
        question = _validate(request)
        agent = self.agents.get(request.agent_id)
        language = detect_language(question)
        metadata = user_metadata(user_id)

        def within(limit: float) -> float:
            if deadline_at is None:
                return limit
            left = deadline_at - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded("the chat request ran out of time")
            return min(limit, left)

        greeting = is_greeting(question)
        new_session = not request.session_id
        # Everything that does not need another step's result starts at once, so that what chat adds
        # before its LLM request is the question's embedding and the search that needs it, and nothing
        # in series with them: the session (created, or an existing one's history), the document-set
        # version and the response-cache lookup run alongside the embedding (a hit cancels it).
        if new_session:
            session_task: asyncio.Future[str] = asyncio.ensure_future(
                self._create_session(agent, question, metadata, within)
            )
            history_task: asyncio.Future[list[Turn]] | None = None
        else:
            session_task = asyncio.get_running_loop().create_future()
            session_task.set_result(request.session_id)
            history_task = asyncio.ensure_future(self._load_history(request.session_id, metadata, within))
        embed_task: asyncio.Future[list[float] | None] | None = None
        lookup_task: asyncio.Future[tuple[str, chat_pb2.ChatResponse | None]] | None = None
        if not greeting:
            embed_task = asyncio.ensure_future(self._embed(question, metadata, within))
            lookup_task = asyncio.ensure_future(
                self._lookup(user_id, agent, question, request.file_ids, metadata, within, history_task)
            )
        try:
            async for event in self._answer(
                answer, request, question, agent, language, within, started,
                session_task, history_task, embed_task, lookup_task, metadata, greeting, new_session, streaming,
            ):  # fmt: skip
                yield event
        finally:
            for task in (session_task, history_task, embed_task, lookup_task):
                if task is None:
                    continue
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a failure already surfaced elsewhere is not logged twice

    async def _answer(
        self,
        answer: Answer,
        request: chat_pb2.ChatRequest,
        question: str,
        agent: AgentSpec,
        language: str,
        within: Callable[[float], float],
        started: float,
        session_task: asyncio.Future[str],
        history_task: asyncio.Future[list[Turn]] | None,
        embed_task: asyncio.Future[list[float] | None] | None,
        lookup_task: asyncio.Future[tuple[str, chat_pb2.ChatResponse | None]] | None,
        metadata: tuple[tuple[str, str], ...],
        greeting: bool,
        new_session: bool,
        streaming: bool,
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        memory: list[Turn] = []
        if history_task is not None:
            memory = await history_task

        async def session_id() -> str:
            answer.session_id = await session_task
            return answer.session_id

        key = ""
        passages: list[Passage] = []
        if greeting:
            answer.backend = GREETING
            answer.text.append(greeting_reply(question, language))
        else:
            assert embed_task is not None and lookup_task is not None
            key, hit = await lookup_task
            if hit is not None:
                embed_task.cancel()  # not needed: no search
                answer.cached = True
                answer.backend = hit.backend
                answer.text.append(hit.answer)
                answer.citations = list(hit.citations)
                answer.usage = StreamUsage(hit.usage.prompt_tokens, hit.usage.completion_tokens)
            else:
                embedding = await embed_task
                retrieval_started = time.perf_counter()
                hits = await self._search(question, embedding, agent.top_k, request.file_ids, metadata, within)
                material = material_language(hits)
                cross_language = material is not None and material != language
                if cross_language and self.llm.available:
                    assert material is not None
                    hits = await self._search_translated(
                        question, material, hits, agent.top_k, request.file_ids, metadata, within
                    )
                answer.retrieval_ms = (time.perf_counter() - retrieval_started) * 1000
                memory_turns = trim_memory(memory, int(self.context_tokens * MEMORY_SHARE))
                fixed = estimate_tokens(agent.instructions(language)) + estimate_tokens(question) + 200
                memory_cost = sum(estimate_tokens(t.content) + 4 for t in memory_turns)
                grounded = self.grounding.passages(hits)
                passages = pack_passages(grounded, max(256, self.context_tokens - fixed - memory_cost))
                lead = ""
                if not passages:
                    # Nothing is about the question: say so, with what to upload or where to look,
                    # and quote nothing (the nearest passages of an off-topic question are noise).
                    closest = hits[0] if hits and hits[0].query_coverage > 0 else None
                    lead = abstention_notice(
                        language,
                        hits,
                        selected_files=len(request.file_ids),
                        cross_language=cross_language and not self.llm.available,
                        closest=Passage(1, closest, "").source_label(language) if closest is not None else "",
                    )
                messages = build_messages(agent, language, passages, memory_turns, question)
                try:
                    async for event in self._generate(
                        answer,
                        agent,
                        messages,
                        passages,
                        question,
                        lead,
                        language,
                        streaming,
                        within,
                        started,
                        session_id,
                    ):
                        yield event
                except (asyncio.CancelledError, GeneratorExit):
                    # The student stopped the answer (or left): the question and what was answered
                    # so far are still theirs, in the session's history.
                    self._save_stopped(session_task, new_session, question, answer, agent, language, metadata, passages)
                    raise

        if answer.cached or greeting:
            answer.first_token_ms = (time.perf_counter() - started) * 1000
            yield chat_pb2.ChatEvent(
                started=chat_pb2.ChatStarted(session_id=await session_id(), backend=answer.backend)
            )
            yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text="".join(answer.text)))
        elif not answer.cached:
            answer.citations = answer_citations("".join(answer.text), passages)
        yield chat_pb2.ChatEvent(citations=chat_pb2.ChatCitations(citations=answer.citations))

        text = "".join(answer.text)
        answer.message_id = await self._save(
            await session_id(), new_session, question, text, answer, agent, metadata, within
        )
        if key and not answer.cached and answer.backend != GREETING and text:
            await self.cache.put(key, answer.response())
        answer.total_ms = (time.perf_counter() - started) * 1000
        yield chat_pb2.ChatEvent(
            done=chat_pb2.ChatDone(
                message_id=answer.message_id,
                usage=answer.usage_message(),
                timings=answer.timings(),
                cached=answer.cached,
            )
        )

    async def _generate(
        self,
        answer: Answer,
        agent: AgentSpec,
        messages: list[ChatCompletionMessageParam],
        passages: list[Passage],
        question: str,
        lead: str,
        language: str,
        streaming: bool,
        within: Callable[[float], float],
        started: float,
        session_id: Callable[[], Awaitable[str]],
    ) -> AsyncIterator[chat_pb2.ChatEvent]:
        """Started, then the deltas: from the LLM when it is up, else the extractive answer; ``lead``
        (chat's own abstention notice) first, whoever writes the rest."""
        sampling = agent.sampling
        lead_text = ""
        if lead:
            sampling = Sampling(sampling.temperature, sampling.top_p, min(sampling.max_tokens, ABSTAIN_MAX_TOKENS))
            lead_text = f"{lead}\n\n"
        if self.llm.available:
            try:
                # The caller's deadline (inf: none) bounds the request; so does LLM_TIMEOUT_S.
                llm_deadline_s = within(math.inf) - FINISH_RESERVE_S
                if streaming:
                    stream = await self.llm.open_stream(messages, sampling, llm_deadline_s)
                    broke = False
                    try:
                        answer.backend = self.llm.model_backend_name
                        yield chat_pb2.ChatEvent(
                            started=chat_pb2.ChatStarted(session_id=await session_id(), backend=answer.backend)
                        )
                        if lead:
                            answer.text.append(lead_text)
                            yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text=lead_text))
                        first = True
                        async for piece in stream.deltas():
                            if first:
                                first = False
                                answer.first_token_ms = (time.perf_counter() - started) * 1000
                                self._time_to_first_token.record(
                                    answer.first_token_ms / 1000, self._llm_attributes(streamed=True)
                                )
                            answer.text.append(piece)
                            yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text=piece))
                    except LlmUnavailable as exc:
                        # Text already went out; say the model stopped rather than switching answers mid-way.
                        log.warning("llm stream broke", extra={"fields": {"error": str(exc)}})
                        broke = True
                        notice = (
                            "\n\n(Mô hình ngôn ngữ đã ngừng trả lời.)"
                            if language == "vi"
                            else "\n\n(The language model stopped answering.)"
                        )
                        answer.text.append(notice)
                        yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text=notice))
                    finally:
                        await stream.close()
                    answer.usage = stream.usage
                    self._estimate_usage(answer, messages)
                    speed = None if broke else stream.tokens_per_second(answer.usage.completion_tokens)
                else:
                    asked = time.perf_counter()
                    text, usage = await self.llm.complete(messages, sampling, llm_deadline_s)
                    answered = time.perf_counter()
                    answer.backend = self.llm.model_backend_name
                    answer.first_token_ms = (answered - started) * 1000
                    self._time_to_first_token.record(answer.first_token_ms / 1000, self._llm_attributes(streamed=False))
                    generated = text
                    if lead:
                        text = lead_text + text
                    answer.text.append(text)
                    answer.usage = usage
                    yield chat_pb2.ChatEvent(
                        started=chat_pb2.ChatStarted(session_id=await session_id(), backend=answer.backend)
                    )
                    yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text=text))
                    self._estimate_usage(answer, messages)
                    elapsed = answered - asked
                    speed = answer.usage.completion_tokens / elapsed if generated and elapsed > 0 else None
                if speed is not None:
                    self._tokens_per_second.record(speed, self._llm_attributes(streamed=streaming))
                return
            except LlmUnavailable as exc:
                if answer.backend:
                    return
                log.warning("llm unavailable, answering extractively", extra={"fields": {"error": str(exc)}})
        answer.backend = EXTRACTIVE
        text = extractive_answer(agent.extractive, passages, question, language) if passages else lead
        answer.first_token_ms = (time.perf_counter() - started) * 1000
        answer.text.append(text)
        answer.usage = StreamUsage(0, estimate_tokens(text))
        yield chat_pb2.ChatEvent(started=chat_pb2.ChatStarted(session_id=await session_id(), backend=answer.backend))
        yield chat_pb2.ChatEvent(delta=chat_pb2.ChatDelta(text=text))

    @staticmethod
    def _estimate_usage(answer: Answer, messages: list[ChatCompletionMessageParam]) -> None:
        """Token counts estimated from the text when the server reported none."""
        if not answer.usage.completion_tokens:
            answer.usage = StreamUsage(
                sum(estimate_tokens(str(m)) for m in messages), estimate_tokens("".join(answer.text))
            )

    # --- calls to storage and embedding -------------------------------------------------------

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise _storage_error(exc, what) from None

    async def _create_session(
        self,
        agent: AgentSpec,
        question: str,
        metadata: tuple[tuple[str, str], ...],
        within: Callable[[float], float],
    ) -> str:
        """A new session for an exchange whose request names none; its id."""
        session = await self._call(
            "CreateSession",
            self.storage.CreateSession(
                storage_pb2.CreateSessionRequest(title=make_title(question), agent_id=agent.agent_id),
                metadata=metadata,
                timeout=within(STORAGE_TIMEOUT_S),
            ),
        )
        return session.session_id

    async def _load_history(
        self, session_id: str, metadata: tuple[tuple[str, str], ...], within: Callable[[float], float]
    ) -> list[Turn]:
        """The recent turns of an existing session (NotFound when it is not the caller's)."""
        # Storage lists a session's messages oldest first; memory wants the newest, so page to the
        # end keeping only the last few (bounded: a very long session's memory may lag behind).
        recent: deque[storage_pb2.Message] = deque(maxlen=MEMORY_MESSAGES)
        page_token = ""
        for _ in range(MAX_HISTORY_PAGES):
            page = await self._call(
                "ListMessages",
                self.storage.ListMessages(
                    storage_pb2.ListMessagesRequest(
                        session_id=session_id, page_size=HISTORY_PAGE, page_token=page_token
                    ),
                    metadata=metadata,
                    timeout=within(STORAGE_TIMEOUT_S),
                ),
            )
            recent.extend(page.messages)
            page_token = page.next_page_token
            if not page_token:
                break
        return [
            Turn("assistant" if m.role == storage_pb2.ROLE_ASSISTANT else "user", m.content)
            for m in recent
            if m.content
        ]

    async def _lookup(
        self,
        user_id: str,
        agent: AgentSpec,
        question: str,
        file_ids: Sequence[str],
        metadata: tuple[tuple[str, str], ...],
        within: Callable[[float], float],
        history: asyncio.Future[list[Turn]] | None,
    ) -> tuple[str, chat_pb2.ChatResponse | None]:
        """The response-cache key for this exchange ("": not cached) and the answer cached under it."""
        version = await self._docset_version(metadata, within)
        # A follow-up depends on the conversation, so only a session's first question is cached.
        if history is not None and await history:
            return "", None
        if version is None:
            return "", None
        key = cache_key(user_id, agent.agent_id, question, file_ids, version, self.llm.backend_name)
        return key, await self.cache.get(key)

    async def _embed(
        self, question: str, metadata: tuple[tuple[str, str], ...], within: Callable[[float], float]
    ) -> list[float] | None:
        """The question's embedding; None (full-text search only) when the embedding service fails."""
        try:
            response = await self.embedding.Embed(
                embedding_pb2.EmbedRequest(texts=[question.encode()]),
                metadata=metadata,
                timeout=within(EMBED_TIMEOUT_S),
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("embedding failed, searching full text only", extra={"fields": {"code": exc.code().name}})
            return None
        return list(response.embeddings[0].values) if response.embeddings else None

    async def _docset_version(
        self, metadata: tuple[tuple[str, str], ...], within: Callable[[float], float]
    ) -> str | None:
        """The user's document-set version; None (no caching this time) when storage cannot say."""
        try:
            version = await self.storage.GetDocumentSetVersion(
                storage_pb2.GetDocumentSetVersionRequest(), metadata=metadata, timeout=within(STORAGE_TIMEOUT_S)
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("no document-set version, not caching", extra={"fields": {"code": exc.code().name}})
            return None
        return version.version

    async def _search(
        self,
        question: str,
        embedding: list[float] | None,
        top_k: int,
        file_ids: Sequence[str],
        metadata: tuple[tuple[str, str], ...],
        within: Callable[[float], float],
    ) -> list[storage_pb2.ChunkHit]:
        response = await self._call(
            "SearchChunks",
            self.storage.SearchChunks(
                storage_pb2.SearchChunksRequest(
                    query=question, query_embedding=embedding or [], top_k=top_k, file_ids=list(file_ids)
                ),
                metadata=metadata,
                timeout=within(STORAGE_TIMEOUT_S),
            ),
        )
        return list(response.hits)

    async def _search_translated(
        self,
        question: str,
        material: str,
        hits: list[storage_pb2.ChunkHit],
        top_k: int,
        file_ids: Sequence[str],
        metadata: tuple[tuple[str, str], ...],
        within: Callable[[float], float],
    ) -> list[storage_pb2.ChunkHit]:
        """``hits`` fused with those of the question translated by the LLM into the material's
        language (an English question about Vietnamese notes shares no word with them); ``hits``
        alone when the model cannot translate."""
        try:
            text, _ = await self.llm.complete(
                translation_messages(question, material), TRANSLATE_SAMPLING, within(TRANSLATE_TIMEOUT_S)
            )
        except LlmUnavailable as exc:
            log.warning("translating the question failed", extra={"fields": {"error": str(exc)}})
            return hits
        translated = " ".join(text.split())[:MAX_MESSAGE_CHARS]
        if not translated or translated.casefold() == question.casefold():
            return hits
        embedding = await self._embed(translated, metadata, within)
        try:
            more = await self._search(translated, embedding, top_k, file_ids, metadata, within)
        except InvalidArgument:  # the model's output held no word to search by
            return hits
        return fuse_hits(hits, more, top_k)

    def _save_stopped(
        self,
        session_task: asyncio.Future[str],
        new_session: bool,
        question: str,
        answer: Answer,
        agent: AgentSpec,
        language: str,
        metadata: tuple[tuple[str, str], ...],
        passages: list[Passage],
    ) -> None:
        """Save, in the background, an exchange whose answer was stopped: the question and the text so
        far, marked stopped, with the citations it made (nothing when its session was never made)."""
        if not session_task.done() or session_task.cancelled() or session_task.exception() is not None:
            return
        text = "".join(answer.text)
        text = f"{text}\n\n{STOPPED[language]}" if text else STOPPED[language]
        answer.citations = answer_citations(text, passages) if answer.text and passages else []
        answer.backend = answer.backend or EXTRACTIVE
        task = asyncio.create_task(
            self._save(session_task.result(), new_session, question, text, answer, agent, metadata, lambda s: s)
        )
        self._background.add(task)
        task.add_done_callback(self._saved_stopped)

    def _saved_stopped(self, task: asyncio.Task[str]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("saving a stopped answer failed", extra={"fields": {"error": str(task.exception())}})

    async def _save(
        self,
        session_id: str,
        new_session: bool,
        question: str,
        text: str,
        answer: Answer,
        agent: AgentSpec,
        metadata: tuple[tuple[str, str], ...],
        within: Callable[[float], float],
    ) -> str:
        """Both turns, with the answer's citations and backend; the assistant message's id."""
        saved = await self._call(
            "AppendMessages",
            self.storage.AppendMessages(
                storage_pb2.AppendMessagesRequest(
                    session_id=session_id,
                    title=make_title(question) if new_session else "",
                    messages=[
                        storage_pb2.Message(role=storage_pb2.ROLE_USER, content=question, agent_id=agent.agent_id),
                        storage_pb2.Message(
                            role=storage_pb2.ROLE_ASSISTANT,
                            content=text,
                            citations=answer.citations,
                            agent_id=agent.agent_id,
                            backend=answer.backend,
                        ),
                    ],
                ),
                metadata=metadata,
                timeout=within(STORAGE_TIMEOUT_S),
            ),
        )
        return saved.messages[-1].message_id if saved.messages else ""
