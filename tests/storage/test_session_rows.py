"""A page of sessions built in place is the same as the sessions built one by one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from storage.servicer import _fill_session, _session
from studyassist.storage.v1 import storage_pb2


def test_sessions_built_in_place_equal_the_single_session_shape() -> None:
    now = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "title": f"Phiên học {i}",
            "agent_id": "explainer" if i % 2 else "",
            "message_count": i,
            "created_at": when - timedelta(days=3),
            "updated_at": when,
            "last_message_at": None if i % 2 else when,
        }
        for i, when in enumerate([now, datetime(1970, 1, 1, tzinfo=UTC), datetime(1969, 7, 20, 20, 17, tzinfo=UTC)])
    ]
    response = storage_pb2.ListSessionsResponse(next_page_token="t")
    for row in rows:
        _fill_session(response.sessions.add(), row)  # type: ignore[arg-type]
    expected = storage_pb2.ListSessionsResponse(next_page_token="t")
    for row in rows:  # each Session built whole first, then copied in, as GetSession returns one
        expected.sessions.append(_session(row))  # type: ignore[arg-type]
    assert response == expected
    assert response.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)
    assert response.sessions[1].HasField("created_at") and not response.sessions[1].HasField("last_message_at")
    # A time at the epoch itself (all fields zero) is still a time, not "unset".
    assert response.sessions[1].HasField("updated_at") and response.sessions[1].updated_at.seconds == 0
