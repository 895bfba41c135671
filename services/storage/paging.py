"""Keyset pagination: a page of rows and the token that continues right after its last row.

Keyset rather than OFFSET: a page costs the same however deep it is, and rows added meanwhile
never shift one page's rows into the next.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from studyassist.core.errors import InvalidArgument

from storage.db import Database
from storage.ids import decode_token, encode_token, page_size, parse_id


def split_page(
    rows: Sequence[asyncpg.Record], size: int, token_of: Callable[[asyncpg.Record], list[Any]]
) -> tuple[list[asyncpg.Record], str]:
    """The first ``size`` rows, and a token when the query (fetched with ``LIMIT size + 1``) had more."""
    if len(rows) <= size:
        return list(rows), ""
    page = list(rows[:size])
    return page, encode_token(token_of(page[-1]))


async def newest_first(
    db: Database,
    query: str,
    user_id: uuid.UUID,
    *,
    time_column: str,
    id_column: str,
    requested_size: int,
    page_token: str,
) -> tuple[list[asyncpg.Record], str]:
    """One page of ``query``'s rows by ``(time_column, id_column)`` descending, and the next page's token.

    ``query`` is a SELECT whose WHERE clause ends the string and filters on ``$1`` = ``user_id``.
    The token holds the last row's time and id; the rows name the columns without a table prefix.
    """
    size = page_size(requested_size)
    after = decode_token(page_token, 2)
    order = f" ORDER BY {time_column} DESC, {id_column} DESC LIMIT $2"
    async with db.connection() as conn:
        if after is None:
            rows = await conn.fetch(query + order, user_id, size + 1)
        else:
            rows = await conn.fetch(
                f"{query} AND ({time_column}, {id_column}) < ($3, $4){order}",
                user_id,
                size + 1,
                _token_time(after[0]),
                parse_id(after[1], "page_token"),
            )
    time_key = time_column.rpartition(".")[2]
    id_key = id_column.rpartition(".")[2]
    return split_page(rows, size, lambda last: [last[time_key].isoformat(), str(last[id_key])])


def _token_time(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidArgument("page_token is not valid") from None
