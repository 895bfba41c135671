"""Chat with the real mesh says when the material does not answer, in the student's language, and each
agent answers its own way without an LLM; with the tiny real LLM, chat's notice still leads and the
model is asked to translate a cross-language question for retrieval."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import user_metadata
from studyassist.core.testing import ServiceProcess
from studyassist.storage.v1 import storage_pb2_grpc

from tests.chat.conftest import chat_stub, new_user, upload_ready
from tests.chat.tinyllm import Relay

NOTES = """# Ngăn xếp

Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO). Thao tác push thêm phần \
tử vào đỉnh ngăn xếp, còn thao tác pop lấy phần tử ở đỉnh ngăn xếp ra.

Lời gọi đệ quy được máy tính quản lý bằng ngăn xếp lời gọi hàm. Kiểm tra dấu ngoặc cân bằng là một ứng \
dụng quen thuộc của ngăn xếp.

# Hàng đợi

Hàng đợi là cấu trúc dữ liệu vào trước ra trước (FIFO). Phần tử mới được thêm vào cuối hàng đợi và được \
lấy ra ở đầu hàng đợi. Hàng đợi được dùng khi duyệt đồ thị theo chiều rộng.
"""
OFF_TOPIC = "Thủ đô của nước Pháp là gì?"


@pytest.fixture
async def chat(chat_service: ServiceProcess) -> AsyncIterator[chat_pb2_grpc.ChatServiceAsyncStub]:
    channel, stub = chat_stub(chat_service.address)
    yield stub
    await channel.close(None)


@pytest.fixture
async def llm_chat(llm_chat_service: ServiceProcess) -> AsyncIterator[chat_pb2_grpc.ChatServiceAsyncStub]:
    channel, stub = chat_stub(llm_chat_service.address)
    yield stub
    await channel.close(None)


async def ask(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, user: str, message: str, **fields: object
) -> chat_pb2.ChatResponse:
    request = chat_pb2.ChatRequest(message=message, **fields)  # type: ignore[arg-type]
    return await chat.Chat(request, metadata=user_metadata(user), timeout=60)


async def test_an_off_topic_question_is_not_answered_from_unrelated_passages(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    notes = await upload_ready(storage, user, "ctdl.md", NOTES)
    response = await ask(chat, user, OFF_TOPIC)
    assert response.backend == "extractive"
    assert response.answer.startswith("Tài liệu của bạn không trả lời câu hỏi này")
    assert "tải lên" in response.answer and list(response.citations) == []
    # Asked within selected files, it says so, and where to widen the search.
    within = await ask(chat, user, "Thủ đô của nước Pháp nằm ở đâu?", file_ids=[notes.file_id])
    assert "1 tài liệu đã chọn" in within.answer and list(within.citations) == []
    # The same material answers a question about it, citing it.
    on_topic = await ask(chat, user, "Ngăn xếp hoạt động theo nguyên tắc nào?", agent_id="explainer")
    assert on_topic.citations and on_topic.citations[0].file_id == notes.file_id
    assert "vào sau ra trước" in on_topic.answer


async def test_an_english_question_about_vietnamese_notes_says_what_it_needs(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    await upload_ready(storage, user, "ctdl.md", NOTES)
    response = await ask(chat, user, "What principle does a stack follow when elements are removed?")
    assert response.answer.startswith("Your material does not answer this question")
    assert "EMBEDDING_MODEL" in response.answer and "language model" in response.answer
    assert list(response.citations) == []


async def test_agents_answer_their_own_way_without_an_llm(
    chat: chat_pb2_grpc.ChatServiceAsyncStub, storage: storage_pb2_grpc.StorageServiceAsyncStub
) -> None:
    user = await new_user(storage)
    notes = await upload_ready(storage, user, "ctdl.md", NOTES)
    question = "Ngăn xếp và hàng đợi là gì?"
    answers = {
        agent: await ask(chat, user, question, agent_id=agent)
        for agent in ("tutor", "explainer", "programming_mentor", "exam_coach", "summarizer")
    }
    assert len({a.answer for a in answers.values()}) == 5
    for response in answers.values():
        assert response.backend == "extractive" and response.citations[0].file_id == notes.file_id
    assert "Ý chính:" in answers["explainer"].answer
    assert "Câu hỏi ôn tập" in answers["exam_coach"].answer and "Đáp án" in answers["exam_coach"].answer
    assert "Tóm tắt" in answers["summarizer"].answer
    assert "câu hỏi gợi mở" in answers["tutor"].answer
    assert "> — ctdl.md" in answers["programming_mentor"].answer


async def test_with_an_llm_chat_says_it_first_and_asks_for_a_translation(
    llm_chat: chat_pb2_grpc.ChatServiceAsyncStub,
    storage: storage_pb2_grpc.StorageServiceAsyncStub,
    llm_relay: Relay,
) -> None:
    user = await new_user(storage)
    await upload_ready(storage, user, "ctdl.md", NOTES)
    off_topic = await ask(llm_chat, user, OFF_TOPIC, agent_id="brief")
    assert off_topic.backend.startswith("llm:")
    assert off_topic.answer.startswith("Tài liệu của bạn không trả lời câu hỏi này")
    assert list(off_topic.citations) == []

    before = len(llm_relay.connections)
    llm_relay.record = True
    try:
        await ask(llm_chat, user, "What principle does a stack follow when elements are removed?", agent_id="brief")
    finally:
        llm_relay.record = False
    bodies = [json.loads(body) for c in llm_relay.connections[before:] for body in c.request_bodies]
    bodies += [json.loads(body) for c in llm_relay.connections[:before] for body in c.request_bodies]
    systems = [str(b["messages"][0]["content"]) for b in bodies]
    assert any(s.startswith("Dịch câu hỏi của sinh viên sang tiếng Việt") for s in systems)
