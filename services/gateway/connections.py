"""The gateway's HTTP connections, bounded in time so slow clients cannot hold them.

uvicorn bounds only the keep-alive wait between requests. A slowloris client that opens a
connection and sends a request's headers a byte at a time, or a client that asks for a large
response and never reads it, would hold a connection (a file descriptor, buffers, a task) for as
long as it likes; a few hundred of them exhaust the process. This protocol (uvicorn's httptools
protocol, with two timers) drops them:

- headers: from the connection's first moment (or a new request's first byte on a kept-alive
  connection) to the end of its headers, at most ``header_timeout_s``; then 408 and close.
- sending: a response whose writes wait on a client that does not read (the transport's buffer
  stays over its high-water mark) for ``send_idle_timeout_s`` without progress is reset (a
  client that reads nothing would never take a polite close either). A slow reader that keeps
  reading resets the timer each time the buffer drains.

Request bodies are the application's business (uploads stream through with their own limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 29\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"request headers took too long"
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout and a send idle timeout (class attributes,
    set by :func:`guarded_protocol`: uvicorn makes a protocol per connection from the class)."""

    header_timeout_s: float = 10.0
    send_idle_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _disarm_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # nothing sent yet counts too

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered and the next one is slow: end after this response.
            self.cycle.keep_alive = False
            return
        self.transport.write(REQUEST_TIMEOUT_RESPONSE)
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.send_idle_timeout_s, self._reader_too_slow)

    def resume_writing(self) -> None:
        self._disarm_send_timer()
        super().resume_writing()

    def _reader_too_slow(self) -> None:
        self._send_timer = None
        # A reset, not a close: closed with unsent data, the kernel would keep the socket (and its
        # buffers) trying to deliver to a client that reads nothing, for many minutes.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()  # connection_lost follows: the response's sender sees a disconnect

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._disarm_send_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float, send_idle_timeout_s: float) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with these bounds."""
    return type(
        "GatewayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "send_idle_timeout_s": send_idle_timeout_s},
    )
