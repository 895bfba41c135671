"""Ids and page tokens from requests: malformed ones are the caller's error, never INTERNAL."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

import grpc
from studyassist.core.channels import caller_user_id
from studyassist.core.errors import InvalidArgument, Unauthenticated

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


def parse_id(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"{field} is not a valid id") from None


def caller(context: grpc.aio.ServicerContext) -> uuid.UUID:
    """The calling user's id from metadata (set by the gateway); body ids never replace it."""
    raw = caller_user_id(context)
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise Unauthenticated("the user id in call metadata is not a valid id") from None


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


def decode_token(token: str, length: int) -> list[Any] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        values = json.loads(raw)
    except (ValueError, binascii.Error):
        raise InvalidArgument("page_token is not valid") from None
    if not isinstance(values, list) or len(values) != length:
        raise InvalidArgument("page_token is not valid")
    return values
