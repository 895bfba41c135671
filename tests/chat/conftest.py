"""Chat test fixtures: a tiny random causal LM served by `transformers serve`, a TCP relay in front
of it that shows when the chat service closes its LLM connection, and helpers that upload files
and create users through the real storage service."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from studyassist.chat.v1 import chat_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from tests.chat.tinyllm import LlmServer, Relay, build_tiny_llm, start_llm_server


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random causal LM, built on disk once per session (a transformers model directory)."""
    directory = tmp_path_factory.mktemp("tiny-llm")
    build_tiny_llm(directory)
    return directory


@pytest.fixture(scope="session")
def llm_server(tiny_llm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmServer]:
    server = start_llm_server(tiny_llm_dir, tmp_path_factory.mktemp("tiny-llm-log") / "serve.log")
    yield server
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def llm_relay(llm_server: LlmServer) -> Iterator[Relay]:
    relay = Relay(llm_server.port)
    relay.start()
    yield relay
    relay.stop()


def chat_env(storage: ServiceProcess, embedding: ServiceProcess, llm_base_url: str, **extra: str) -> dict[str, str]:
    return {
        "CHAT_PORT": "0",
        "STORAGE_ADDR": storage.address,
        "EMBEDDING_ADDR": embedding.address,
        "LLM_BASE_URL": llm_base_url,
        "LLM_PROBE_INTERVAL_S": "0.5",
        "REDIS_URL": "",
        **extra,
    }


# Test agents: "brief" keeps the tiny model's answers short (fast tests); "long" generates for
# many seconds, so a stream is surely still running when a test cancels it.
TEST_AGENTS = """
[[agents]]
id = "brief"
name_vi = "Ngắn"
name_en = "Brief"
description_vi = "Trả lời ngắn"
description_en = "Short answers"
instructions_vi = "Trả lời ngắn gọn."
instructions_en = "Answer briefly."
[agents.retrieval]
top_k = 4
[agents.sampling]
temperature = 0.7
top_p = 0.95
max_tokens = 12

[[agents]]
id = "long"
name_vi = "Dài"
name_en = "Long"
description_vi = "Trả lời dài"
description_en = "Long answers"
instructions_vi = "Trả lời thật chi tiết."
instructions_en = "Answer at length."
[agents.retrieval]
top_k = 4
[agents.sampling]
temperature = 0.7
top_p = 0.95
max_tokens = 4000
"""


@pytest.fixture(scope="session")
def test_agents_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("agents") / "agents.toml"
    path.write_text(TEST_AGENTS, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def llm_chat_service(
    storage_service: ServiceProcess, embedding_service: ServiceProcess, llm_relay: Relay, test_agents_file: Path
) -> Iterator[ServiceProcess]:
    """Chat talking to the tiny model through the relay."""
    service = spawn_service(
        "chat",
        chat_env(storage_service, embedding_service, llm_relay.base_url, CHAT_AGENTS_FILE=str(test_agents_file)),
    )
    yield service
    service.stop()


@pytest.fixture
async def storage(storage_service: ServiceProcess) -> AsyncIterator[storage_pb2_grpc.StorageServiceAsyncStub]:
    channel = create_channel(storage_service.address)
    yield storage_pb2_grpc.StorageServiceStub(channel)
    await channel.close(None)


async def new_user(storage: storage_pb2_grpc.StorageServiceAsyncStub) -> str:
    user = await storage.CreateUser(
        storage_pb2.CreateUserRequest(
            email=f"u{uuid.uuid4().hex[:12]}@stu.ptit.edu.vn", display_name="Sinh viên", password_hash="$argon2id$x"
        )
    )
    return user.user_id


async def upload_ready(
    storage: storage_pb2_grpc.StorageServiceAsyncStub, user_id: str, name: str, content: str
) -> storage_pb2.File:
    """Upload a text file as ``user_id`` and wait until it is chunked and embedded."""

    async def parts() -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=name))
        yield storage_pb2.UploadFileRequest(chunk=content.encode())

    file = await storage.UploadFile(parts(), metadata=user_metadata(user_id), timeout=30)
    deadline = time.monotonic() + 90
    while file.status not in (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED):
        assert time.monotonic() < deadline, f"{name} not ready: {file}"
        await _sleep(0.2)
        file = await storage.GetFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=user_metadata(user_id))
    assert file.status == storage_pb2.FILE_STATUS_READY, file.error
    return file


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def chat_stub(address: str) -> tuple[grpc.aio.Channel, chat_pb2_grpc.ChatServiceAsyncStub]:
    channel = create_channel(address, default_timeout=60.0)
    return channel, chat_pb2_grpc.ChatServiceStub(channel)
