"""Server-streaming RPCs that return ``google.api.HttpBody``: their bytes become the HTTP body.

The first message's ``content_type`` is the response's Content-Type; the bytes of every message are
streamed on as they arrive (never held whole: a file may be tens of MB). A backend names the file
in the initial metadata ``x-file-name-bin``, and the response becomes a download of that name
(``Content-Disposition: attachment`` with an ASCII fallback and the RFC 5987 UTF-8 form, so no name
can break out of the header). Failures before the first bytes get their own HTTP status (another
user's file is a 404); a failure after the headers went out cuts the connection, so the client
sees a failed download rather than a silently short file.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import message
from starlette.responses import Response, StreamingResponse

from gateway.responses import HttpError, from_rpc_error
from gateway.routes import Route

log = logging.getLogger(__name__)

FILE_NAME_METADATA = "x-file-name-bin"
DOWNLOAD_TIMEOUT_S = 3600.0
FALLBACK_NAME = "download"
# A media type the gateway will repeat: type/subtype and optional parameters, nothing that could
# end the header.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*(?:\s*;\s*[a-z0-9_-]+=[a-z0-9_.-]+)*")
_UNSAFE_IN_QUOTES = re.compile(r'[^\x20-\x7e]|["\\%]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


def content_disposition(raw_name: str) -> str:
    """``attachment`` with the name twice: ASCII in quotes for old clients, UTF-8 percent-encoded."""
    name = _CONTROL.sub("", raw_name).replace("/", "_").replace("\\", "_").strip() or FALLBACK_NAME
    fallback = _UNSAFE_IN_QUOTES.sub("_", name)
    encoded = urllib.parse.quote(name, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def _media_type(value: str) -> str:
    value = value.strip().lower()
    return value if _MEDIA_TYPE.fullmatch(value) else "application/octet-stream"


def _file_name(initial: Any) -> str:
    for key, value in initial or ():
        if key == FILE_NAME_METADATA:
            raw = value if isinstance(value, bytes) else str(value).encode()
            return raw.decode("utf-8", "replace")
    return ""


async def send_download(route: Route, rpc_request: message.Message, metadata: tuple[tuple[str, str], ...]) -> Response:
    call = route.call(rpc_request, metadata=metadata, timeout=DOWNLOAD_TIMEOUT_S)
    try:
        first = await call.read()
        initial = await call.initial_metadata()
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
    if first is _EOF:
        call.cancel()
        raise HttpError(grpc.StatusCode.INTERNAL, "the backend sent no content", status=502)
    headers = {
        # One's own file, behind a token: no shared cache may keep it.
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
        # Opened directly, the bytes run nothing and load nothing.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    name = _file_name(initial)
    if name:
        headers["Content-Disposition"] = content_disposition(name)

    async def body() -> AsyncIterator[bytes]:
        try:
            if first.data:
                yield first.data
            while True:
                item = await call.read()
                if item is _EOF:
                    return
                if item.data:
                    yield item.data
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "download broke off after it started",
                extra={"fields": {"rpc": route.rpc_path, "code": exc.code().name}},
            )
            raise
        finally:
            call.cancel()

    return StreamingResponse(body(), media_type=_media_type(first.content_type), headers=headers)
