"""The embedded PostgreSQL 16 + pgvector (pgserver) that local runs and benchmarks use, sized for search.

pgserver starts PostgreSQL with its stock ``shared_buffers`` of 128 MB. An HNSW index over 200,000
chunks of 384 dimensions is about 400 MB, so every search copied ~1,100 index pages from the
operating system's cache into shared buffers (EXPLAIN: ``shared read=1152``): p50 6.3 ms per
query. With the index resident it is 3.5 ms (pgvector's own advice: the index should fit in
``shared_buffers``). A managed or self-run PostgreSQL is sized by its operator; this sizes ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

# A quarter of the machine's memory (PostgreSQL's usual advice), within these bounds: the floor is
# PostgreSQL's default, the ceiling keeps a laptop's embedded database from taking more than it needs
# for a few hundred thousand chunks. Linux commits shared memory as pages are touched, not up front.
SHARED_BUFFERS_MIN_MB = 128
SHARED_BUFFERS_MAX_MB = 1024

log = logging.getLogger(__name__)


def shared_buffers_mb(total_memory_bytes: int | None = None) -> int:
    """The ``shared_buffers`` (MB) for a machine with this much memory (default: this machine)."""
    if total_memory_bytes is None:
        total_memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    quarter = total_memory_bytes // 4 // (1024 * 1024)
    return max(SHARED_BUFFERS_MIN_MB, min(SHARED_BUFFERS_MAX_MB, quarter))


def _setting_mb(server: Any, name: str) -> int:
    """A memory setting of the running server, in MB (PostgreSQL reports it in 8 kB pages)."""
    out = server.psql(f"SELECT 'value=' || (setting::bigint * 8 / 1024) FROM pg_settings WHERE name = '{name}';")
    for line in out.splitlines():
        if line.strip().startswith("value="):
            return int(line.strip().removeprefix("value="))
    raise RuntimeError(f"embedded PostgreSQL did not report {name}: {out!r}")


def start_embedded_postgres(pg_dir: Path, *, cleanup_mode: str | None = "stop") -> Any:
    """Start (or attach to) the pgserver in ``pg_dir`` with ``shared_buffers`` sized for this machine.

    ``shared_buffers`` takes effect only at start: a data directory without the setting (a new one)
    is started once, given it with ALTER SYSTEM (kept in the directory), stopped and started again.
    Later starts read it from the directory. A server another process holds open is not restarted
    (it keeps its setting until its next start). Returns pgserver's ``PostgresServer``.
    """
    # pgserver asks platformdirs for a runtime dir it does not need; XDG_RUNTIME_DIR is often unset.
    warnings.filterwarnings("ignore", module="platformdirs")
    import pgserver

    wanted = shared_buffers_mb()
    # "stop" for the first start: a restart must not delete the directory it restarts.
    server = pgserver.get_server(pg_dir, cleanup_mode="stop" if cleanup_mode == "delete" else cleanup_mode)
    try:
        if _setting_mb(server, "shared_buffers") >= wanted:
            server.cleanup_mode = cleanup_mode
            return server
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{wanted}MB';")
        server.cleanup_mode = "stop"
        server.cleanup()
        server = pgserver.get_server(pg_dir, cleanup_mode=cleanup_mode)
        got = _setting_mb(server, "shared_buffers")
    except (subprocess.CalledProcessError, OSError, RuntimeError):
        with contextlib.suppress(Exception):
            server.cleanup()
        raise
    if got < wanted:
        # Another process holds the same server open, so it was not restarted: it serves, just slower.
        log.warning(
            "embedded PostgreSQL keeps its smaller shared_buffers until it restarts",
            extra={"fields": {"shared_buffers_mb": got, "wanted_mb": wanted}},
        )
    return server
