"""The embedded PostgreSQL is started with shared_buffers sized for the vector index, once per data dir."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from studyassist.core.embeddedpg import (
    SHARED_BUFFERS_MAX_MB,
    SHARED_BUFFERS_MIN_MB,
    _setting_mb,
    shared_buffers_mb,
    start_embedded_postgres,
)

GiB = 1024**3


def test_shared_buffers_is_a_quarter_of_memory_within_bounds() -> None:
    assert shared_buffers_mb(2 * GiB) == 512
    assert shared_buffers_mb(256 * 1024**2) == SHARED_BUFFERS_MIN_MB
    assert shared_buffers_mb(64 * GiB) == SHARED_BUFFERS_MAX_MB
    assert SHARED_BUFFERS_MIN_MB <= shared_buffers_mb() <= SHARED_BUFFERS_MAX_MB


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # Short path: PostgreSQL's unix socket path must stay under ~100 bytes.
    path = Path("/tmp") / f"sa-epg-{uuid.uuid4().hex[:8]}"
    yield path
    assert not path.exists() or not (path / "postmaster.pid").exists(), "the server was left running"


def test_a_new_data_dir_gets_the_setting_and_keeps_it(pg_dir: Path) -> None:
    wanted = shared_buffers_mb()
    server = start_embedded_postgres(pg_dir, cleanup_mode="stop")
    try:
        assert _setting_mb(server, "shared_buffers") == wanted
        # Kept in the directory (ALTER SYSTEM), so the next start needs no restart.
        assert f"shared_buffers = '{wanted}MB'" in (pg_dir / "postgresql.auto.conf").read_text()
    finally:
        server.cleanup()
    server = start_embedded_postgres(pg_dir, cleanup_mode="delete")
    try:
        assert _setting_mb(server, "shared_buffers") == wanted
        assert "CREATE TABLE" in server.psql("CREATE TABLE still_here (id int);")
    finally:
        server.cleanup()
    assert not pg_dir.exists(), "cleanup_mode='delete' removes the directory after the restart too"
