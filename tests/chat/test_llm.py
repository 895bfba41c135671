"""Chat against a real OpenAI-compatible server: `transformers serve` on a tiny random Llama the
fixture builds on disk, reached through a TCP relay that shows when chat closes its connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import psutil
import pytest
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import user_metadata
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.chat.conftest import chat_env, chat_stub, new_user, upload_ready
from tests.chat.tinyllm import LlmServer, Relay

NOTES = "# Heaps\n\nA binary heap keeps the smallest key at the root; insert and extract-min take O(log n).\n"
# A question the notes answer, for the "long" agent's answers that run for many seconds.
ESSAY = "Write a very long essay on how a binary heap keeps the smallest key at the root"


@pytest.fixture
async def chat(llm_chat_service: ServiceProcess) -> AsyncIterator[chat_pb2_grpc.ChatServiceAsyncStub]:
    channel, stub = chat_stub(llm_chat_service.address)
    yield stub
    await channel.close(None)


async def test_streams_tokens_from_the_llm_with_citations(
    chat: chat_pb2_grpc.ChatServiceAsyncStub,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    llm_server: LlmServer,
) -> None:
    user = await new_user(storage)
    heap = await upload_ready(storage, user, "heaps.md", NOTES)
    call = chat.StreamChat(
        chat_pb2.ChatRequest(agent_id="brief", message="What does a binary heap keep at the root?"),
        metadata=user_metadata(user),
        timeout=60,
    )
    events = [event async for event in call]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-2:] == ["citations", "done"]
    assert events[0].started.backend == f"llm:{llm_server.model}"
    deltas = [e.delta.text for e in events if e.HasField("delta")]
    assert len(deltas) >= 3  # relayed token by token, not buffered into one message
    done = events[-1].done
    assert done.usage.completion_tokens == 12  # the agent's max_tokens; the tiny model never stops early
    assert done.usage.prompt_tokens > 0
    assert 0 < done.timings.first_token_ms <= done.timings.total_ms
    # The random model writes no [n] markers, so every passage it was given is a source.
    assert [c.file_id for c in events[-2].citations.citations] == [heap.file_id]
    history = await storage.ListMessages(
        storage_pb2.ListMessagesRequest(session_id=events[0].started.session_id), metadata=user_metadata(user)
    )
    assert history.messages[-1].content == "".join(deltas)
    assert history.messages[-1].backend == f"llm:{llm_server.model}"


async def test_whole_answer_from_the_llm(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub, llm_server: LlmServer
) -> None:
    user = await new_user(storage)
    await upload_ready(storage, user, "heaps.md", NOTES)
    response = await chat.Chat(
        chat_pb2.ChatRequest(agent_id="brief", message="How long does extract-min take?"),
        metadata=user_metadata(user),
        timeout=60,
    )
    assert response.backend == f"llm:{llm_server.model}"
    assert response.answer and response.usage.completion_tokens == 12 and response.message_id
    assert "A binary heap keeps the smallest key" in response.citations[0].snippet


async def test_memory_sends_earlier_turns_to_the_model(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    question = "Tell me about unrelated topics please"
    first = await chat.Chat(chat_pb2.ChatRequest(agent_id="brief", message=question), metadata=user_metadata(user))
    follow_up = await chat.Chat(
        chat_pb2.ChatRequest(agent_id="brief", session_id=first.session_id, message=question),
        metadata=user_metadata(user),
    )
    # Same question, same (empty) retrieval: only the remembered turns make the prompt longer.
    assert follow_up.usage.prompt_tokens > first.usage.prompt_tokens
    assert not follow_up.cached


async def test_a_caller_that_goes_away_cancels_the_llm_request(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub, llm_relay: Relay
) -> None:
    user = await new_user(storage)
    await upload_ready(storage, user, "heaps.md", NOTES)
    asked_at = time.monotonic()
    call = chat.StreamChat(chat_pb2.ChatRequest(agent_id="long", message=ESSAY), metadata=user_metadata(user))
    async for event in call:
        if event.HasField("delta"):
            break
    [upstream] = llm_relay.completions_since(asked_at)
    assert not upstream.closed_at  # a 4000-token answer is still being generated
    cancelled_at = time.monotonic()
    call.cancel()
    while not upstream.closed_at and time.monotonic() < cancelled_at + 5:  # noqa: ASYNC110 (set by a thread)
        await asyncio.sleep(0.01)
    assert upstream.closed_by == "client", "the LLM request outlived the caller"
    assert upstream.closed_at - cancelled_at < 1.0


async def test_a_stopped_answer_keeps_the_question_and_the_text_so_far(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    await upload_ready(storage, user, "heaps.md", NOTES)
    call = chat.StreamChat(chat_pb2.ChatRequest(agent_id="long", message=ESSAY), metadata=user_metadata(user))
    session_id, streamed = "", ""
    async for event in call:
        if event.HasField("started"):
            session_id = event.started.session_id
        if event.HasField("delta"):
            streamed += event.delta.text
            break
    call.cancel()
    deadline = time.monotonic() + 10
    while True:
        history = await storage.ListMessages(
            storage_pb2.ListMessagesRequest(session_id=session_id), metadata=user_metadata(user)
        )
        if history.messages or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    question, stopped = history.messages
    assert question.role == storage_pb2.ROLE_USER and question.content == ESSAY
    assert stopped.role == storage_pb2.ROLE_ASSISTANT
    assert stopped.content.startswith(streamed) and stopped.content.endswith("(Stopped.)")
    assert stopped.backend.startswith("llm:")


async def test_an_llm_that_comes_up_later_is_used_without_restart(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    llm_server: LlmServer,
    test_agents_file: object,
) -> None:
    relay = Relay(llm_server.port, enabled=False)
    relay.start()
    service = spawn_service(
        "chat",
        chat_env(storage_service, embedding_service, relay.base_url, CHAT_AGENTS_FILE=str(test_agents_file)),
    )
    channel, chat = chat_stub(service.address)
    try:
        user = await new_user(storage)
        ask = chat_pb2.ChatRequest(agent_id="brief", message="What is a heap?")
        down = await chat.Chat(ask, metadata=user_metadata(user))
        assert down.backend == "extractive"
        relay.enabled = True
        deadline = time.monotonic() + 10
        status = await chat.GetChatStatus(chat_pb2.GetChatStatusRequest())
        while not status.llm_available and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            status = await chat.GetChatStatus(chat_pb2.GetChatStatusRequest())
        assert status.backend == f"llm:{llm_server.model}"
        up = await chat.Chat(ask, metadata=user_metadata(user))
        assert up.backend == f"llm:{llm_server.model}" and not up.cached
    finally:
        await channel.close(None)
        service.stop()
        relay.stop()


def llm_unavailable_logged(service: ServiceProcess) -> int:
    return sum('"msg": "llm unavailable"' in line for line in service.log_lines)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
async def test_deadline_is_enforced_and_leaves_the_llm_in_use(
    chat: chat_pb2_grpc.ChatServiceAsyncStub,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    llm_chat_service: ServiceProcess,
    streamed: bool,
) -> None:
    """One caller's short deadline ends that call with DEADLINE_EXCEEDED; it says nothing about the
    LLM, which stays in use for everyone (no switch to extractive mode until the next probe)."""
    user = await new_user(storage)
    # A question the notes answer: an abstaining answer is capped far below the "long" agent's tokens.
    await upload_ready(storage, user, "heaps.md", NOTES)
    switched_before = llm_unavailable_logged(llm_chat_service)
    request = chat_pb2.ChatRequest(agent_id="long", message=ESSAY)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streamed:
            async for _ in chat.StreamChat(request, metadata=user_metadata(user), timeout=1.5):
                pass
        else:
            await chat.Chat(request, metadata=user_metadata(user), timeout=1.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    status = await chat.GetChatStatus(chat_pb2.GetChatStatusRequest())
    assert status.llm_available and status.backend.startswith("llm:"), status
    # The probe (every 0.5 s here) would hide a switch from GetChatStatus; the log keeps it.
    await asyncio.sleep(1.0)
    assert llm_unavailable_logged(llm_chat_service) == switched_before, "the deadline switched the LLM off"


async def test_chat_serves_a_local_model_directory(
    storage_service: ServiceProcess,
    embedding_service: ServiceProcess,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    tiny_llm_dir: Path,
    test_agents_file: Path,
) -> None:
    """LLM_MODEL_DIR: chat starts `transformers serve` for it as a child, answers with it, and the
    child is gone once chat has stopped (SIGTERM)."""
    env = chat_env(
        storage_service,
        embedding_service,
        "http://127.0.0.1:9/v1",  # nothing there: LLM_MODEL_DIR takes its place
        LLM_MODEL_DIR=str(tiny_llm_dir),
        CHAT_AGENTS_FILE=str(test_agents_file),
    )
    service = await asyncio.to_thread(spawn_service, "chat", env, timeout=240)
    channel, chat = chat_stub(service.address)
    try:
        [model_server] = [p for p in psutil.Process(service.process.pid).children() if "serve" in p.cmdline()]
        assert str(tiny_llm_dir) in model_server.cmdline()
        status = await chat.GetChatStatus(chat_pb2.GetChatStatusRequest())
        assert status.llm_available and status.backend.startswith("llm:"), status
        # Pointed at its own child, not at LLM_BASE_URL.
        port = urlsplit(status.llm_base_url).port
        assert urlsplit(status.llm_base_url).hostname == "127.0.0.1"
        listening = [c.laddr.port for c in model_server.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        assert listening == [port]

        user = await new_user(storage)
        await upload_ready(storage, user, "heaps.md", NOTES)
        call = chat.StreamChat(
            chat_pb2.ChatRequest(agent_id="brief", message="What does a binary heap keep at the root?"),
            metadata=user_metadata(user),
            timeout=60,
        )
        events = [event async for event in call]
        assert events[0].started.backend == status.backend
        assert len([e for e in events if e.HasField("delta") and e.delta.text]) >= 3  # streamed token by token
        assert events[-1].done.usage.completion_tokens == 12
    finally:
        await channel.close(None)
        code = service.stop()
    assert code == 0
    assert not running(model_server), "transformers serve outlived chat"


def running(process: psutil.Process) -> bool:
    """Still running: neither gone nor a zombie waiting to be reaped."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
