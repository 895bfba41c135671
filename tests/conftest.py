"""Fixtures shared across services: each backing service as a real process on a free port.

Service-specific fixtures live in tests/<service>/conftest.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from studyassist.core.testing import ServiceProcess, create_database, spawn_service

pytest_plugins = ["studyassist.core.testing"]

# An address nothing listens on: chat falls back to its extractive mode.
NO_LLM = "http://127.0.0.1:9/v1"


def _create_database(postgres_url: str) -> str:
    return asyncio.run(create_database(postgres_url, f"svc_{uuid.uuid4().hex[:12]}"))


def spawn_embedding(extra: dict[str, str] | None = None) -> ServiceProcess:
    return spawn_service("embedding", {"EMBEDDING_PORT": "0", "REDIS_URL": "", **(extra or {})})


# The database of each storage service spawn_storage started, by its address (for what a test does
# as an operator: `python -m storage.admin grant EMAIL` on it).
STORAGE_DATABASES: dict[str, str] = {}


def spawn_storage(
    postgres_url: str, embedding_addr: str, blob_dir: Path, extra: dict[str, str] | None = None
) -> ServiceProcess:
    """Storage with a database of its own."""
    database_url = _create_database(postgres_url)
    service = spawn_service(
        "storage",
        {
            "STORAGE_PORT": "0",
            "DATABASE_URL": database_url,
            "EMBEDDING_ADDR": embedding_addr,
            "BLOB_DIR": str(blob_dir),
            "REDIS_URL": "",
            **(extra or {}),
        },
    )
    STORAGE_DATABASES[service.address] = database_url
    return service


def spawn_chat(storage_addr: str, embedding_addr: str, extra: dict[str, str] | None = None) -> ServiceProcess:
    return spawn_service(
        "chat",
        {
            "CHAT_PORT": "0",
            "STORAGE_ADDR": storage_addr,
            "EMBEDDING_ADDR": embedding_addr,
            "LLM_BASE_URL": NO_LLM,
            "REDIS_URL": "",
            **(extra or {}),
        },
    )


def spawn_gateway(
    chat_addr: str, storage_addr: str, data_dir: Path, extra: dict[str, str] | None = None
) -> ServiceProcess:
    return spawn_service(
        "gateway",
        {
            "GATEWAY_PORT": "0",
            "CHAT_ADDR": chat_addr,
            "STORAGE_ADDR": storage_addr,
            "METRICS_ADDR": "127.0.0.1:9",
            "DATA_DIR": str(data_dir),
            "REDIS_URL": "",
            # Stopped at once by tests (no other replica to send clients to); test_drain sets its own.
            "DRAIN_S": "0",
            **(extra or {}),
        },
    )


@pytest.fixture(scope="session")
def embedding_service() -> Iterator[ServiceProcess]:
    service = spawn_embedding()
    yield service
    service.stop()


@pytest.fixture(scope="session")
def storage_service(
    postgres_url: str, embedding_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = spawn_storage(postgres_url, embedding_service.address, tmp_path_factory.mktemp("blobs"))
    yield service
    service.stop()


@pytest.fixture(scope="session")
def chat_service(storage_service: ServiceProcess, embedding_service: ServiceProcess) -> Iterator[ServiceProcess]:
    service = spawn_chat(storage_service.address, embedding_service.address)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def gateway_service(
    chat_service: ServiceProcess, storage_service: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = spawn_gateway(chat_service.address, storage_service.address, tmp_path_factory.mktemp("gateway-data"))
    yield service
    service.stop()
