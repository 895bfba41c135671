"""Slow clients cannot hold the gateway's connections: headers sent a byte at a time, a connection
that sends nothing, a client that never reads its response; a normal request is served meanwhile.

Real parts: the gateway as a process (``python -m gateway``, its own uvicorn protocol), raw TCP
clients, a storage backend."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from studyassist.core.testing import ServiceProcess

from tests.conftest import spawn_gateway
from tests.gateway.backend import start_storage
from tests.gateway.conftest import DEAD_ADDR

BOUND_S = 1.0
# Only a guard against a hang: every connection below is dropped after about BOUND_S.
PATIENCE_S = 30.0
SLOW_CLIENTS = 20
TCP_ESTABLISHED = 1


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    storage, _, storage_addr = await start_storage()
    extra = {"HTTP_HEADER_TIMEOUT_S": str(BOUND_S), "HTTP_SEND_IDLE_TIMEOUT_S": str(BOUND_S)}
    service = await asyncio.to_thread(spawn_gateway, DEAD_ADDR, storage_addr, tmp_path, extra)
    try:
        yield service
    finally:
        await asyncio.to_thread(service.stop)
        await storage.stop(0)


async def slowloris(port: int) -> bytes:
    """Send a request's headers a byte every 0.2 s; return what the server said before it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n"
    try:
        writer.write(head)
        await writer.drain()
        for byte in b"X-Slow: " + b"a" * 10_000:
            try:
                said = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                writer.write(bytes([byte]))
                await writer.drain()
                continue
            return said + await reader.read()  # up to the close
    except ConnectionError:
        return b""
    finally:
        writer.close()
    raise AssertionError("the server kept a slowloris connection open")


async def silent(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await reader.read()  # the server's answer, then EOF
    finally:
        writer.close()


async def test_slow_headers_and_silent_connections_are_dropped_while_others_are_served(
    gateway: ServiceProcess,
) -> None:
    port = gateway.port
    clients = [asyncio.create_task(slowloris(port)) for _ in range(SLOW_CLIENTS)]
    quiet = asyncio.create_task(silent(port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200  # while the slow ones hang on
    said = await asyncio.wait_for(asyncio.gather(*clients, quiet), PATIENCE_S)
    assert all(s.startswith(b"HTTP/1.1 408 ") for s in said), said


def tcp_state(sock: socket.socket) -> int:
    # struct tcp_info starts with the connection's state (u8).
    return int(struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0])


async def test_a_client_that_never_reads_is_cut_off(gateway: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        document = await client.get("/openapi.json")
    assert document.status_code == 200
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: the server's writes back up
    try:
        sock.connect(("127.0.0.1", gateway.port))
        # The OpenAPI document over and over on one kept-alive connection, none of it read.
        request = b"GET /openapi.json HTTP/1.1\r\nHost: gateway\r\nAccept-Encoding: identity\r\n\r\n"
        sock.sendall(request * 200)
        deadline = time.monotonic() + PATIENCE_S
        while tcp_state(sock) == TCP_ESTABLISHED:
            assert time.monotonic() < deadline, "the server kept writing to a client that reads nothing"
            await asyncio.sleep(0.1)
        # Reset by the server: whatever is read now ends in an error or EOF, never the 200 answers.
        received = b""
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        assert len(received) < len(document.content) * 200
    finally:
        sock.close()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
