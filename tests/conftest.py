"""Fixtures shared across services: each backing service as a real process on a free port.

Service-specific fixtures live in tests/<service>/conftest.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from studyassist.core.testing import ServiceProcess, spawn_service

pytest_plugins = ["studyassist.core.testing"]

# An address nothing listens on: chat falls back to its extractive mode.
NO_LLM = "http://127.0.0.1:9/v1"


def _create_database(postgres_url: str) -> str:
    name = f"svc_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()

    asyncio.run(create())
    base, sep, query = postgres_url.partition("?")
    return f"{base.rpartition('/')[0]}/{name}{sep}{query}"


@pytest.fixture(scope="session")
def embedding_service() -> Iterator[ServiceProcess]:
    service = spawn_service("embedding", {"EMBEDDING_PORT": "0", "REDIS_URL": ""})
    yield service
    service.stop()


@pytest.fixture(scope="session")
def storage_service(
    postgres_url: str, embedding_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": _create_database(postgres_url),
            "EMBEDDING_ADDR": embedding_service.address,
            "BLOB_DIR": str(tmp_path_factory.mktemp("blobs")),
            "REDIS_URL": "",
        },
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def chat_service(storage_service: ServiceProcess, embedding_service: ServiceProcess) -> Iterator[ServiceProcess]:
    service = spawn_service(
        "chat",
        {
            "CHAT_PORT": "0",
            "STORAGE_ADDR": storage_service.address,
            "EMBEDDING_ADDR": embedding_service.address,
            "LLM_BASE_URL": NO_LLM,
            "REDIS_URL": "",
        },
    )
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway_service(
    chat_service: ServiceProcess, storage_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    data_dir: Path = tmp_path_factory.mktemp("gateway-data")
    service = spawn_service(
        "gateway",
        {
            "GATEWAY_PORT": "0",
            "CHAT_ADDR": chat_service.address,
            "STORAGE_ADDR": storage_service.address,
            "METRICS_ADDR": "127.0.0.1:9",
            "DATA_DIR": str(data_dir),
            "REDIS_URL": "",
        },
    )
    yield service
    service.stop()
