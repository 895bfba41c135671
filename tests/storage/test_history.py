"""Users, sessions and messages: behaviour, paging, malformed ids, per-user scoping."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from studyassist.common.v1 import common_pb2
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient

MALFORMED_IDS = ["", "not-a-uuid", "'; DROP TABLE users; --", "123", "0" * 100, "ffffffff-ffff-ffff-ffff-fffffffffffff"]


async def test_users_are_unique_by_email_ignoring_case(storage: StorageClient) -> None:
    user = await storage.stub.CreateUser(
        storage_pb2.CreateUserRequest(email="An.Nguyen@PTIT.edu.vn", display_name="An", password_hash="$argon2id$x")
    )
    with pytest.raises(grpc.aio.AioRpcError) as dup:
        await storage.stub.CreateUser(
            storage_pb2.CreateUserRequest(email="an.nguyen@ptit.edu.vn", password_hash="$argon2id$y")
        )
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    found = await storage.stub.GetUserByEmail(storage_pb2.GetUserByEmailRequest(email="AN.NGUYEN@ptit.edu.vn"))
    assert found.user.user_id == user.user_id and found.password_hash == "$argon2id$x"
    me = await storage.stub.GetUser(storage_pb2.GetUserRequest(), metadata=user_metadata(user.user_id))
    assert me.email == "An.Nguyen@PTIT.edu.vn" and me.active
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await storage.stub.GetUserByEmail(storage_pb2.GetUserByEmailRequest(email="nobody@ptit.edu.vn"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await storage.stub.CreateUser(storage_pb2.CreateUserRequest(email="no-at-sign", password_hash="h"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await storage.stub.GetUser(storage_pb2.GetUserRequest())
    # The call names no user, so it carries the caller's own service identity: not a user's call.
    assert anonymous.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sessions_messages_and_history_search(storage: StorageClient) -> None:
    user = await storage.new_user()
    me = user_metadata(user)
    first = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(agent_id="tutor"), metadata=me)
    second = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(title="Ôn thi"), metadata=me)
    appended = await storage.stub.AppendMessages(
        storage_pb2.AppendMessagesRequest(
            session_id=first.session_id,
            title="Cấu trúc dữ liệu",
            messages=[
                storage_pb2.Message(role=storage_pb2.ROLE_USER, content="Cấu trúc dữ liệu cây nhị phân là gì?"),
                storage_pb2.Message(
                    role=storage_pb2.ROLE_ASSISTANT,
                    content="Cây nhị phân là cây mà mỗi nút có tối đa hai con [1].",
                    backend="extractive",
                    citations=[common_pb2.Citation(index=1, file_id="f", file_name="ctdl.pdf", page=3, snippet="Cây")],
                ),
            ],
        ),
        metadata=me,
    )
    assert [m.role for m in appended.messages] == [storage_pb2.ROLE_USER, storage_pb2.ROLE_ASSISTANT]
    sessions = await storage.stub.ListSessions(storage_pb2.ListSessionsRequest(), metadata=me)
    # Newest activity first: the session that just got messages leads.
    assert [s.session_id for s in sessions.sessions] == [first.session_id, second.session_id]
    top = sessions.sessions[0]
    assert top.title == "Cấu trúc dữ liệu" and top.message_count == 2 and top.last_message_at.seconds > 0
    # The title is only set when empty.
    await storage.stub.AppendMessages(
        storage_pb2.AppendMessagesRequest(
            session_id=second.session_id,
            title="ignored",
            messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content="đồ thị có hướng")],
        ),
        metadata=me,
    )
    assert (
        await storage.stub.GetSession(storage_pb2.GetSessionRequest(session_id=second.session_id), metadata=me)
    ).title == "Ôn thi"

    listed = await storage.stub.ListMessages(
        storage_pb2.ListMessagesRequest(session_id=first.session_id, page_size=1), metadata=me
    )
    assert len(listed.messages) == 1 and listed.next_page_token
    rest = await storage.stub.ListMessages(
        storage_pb2.ListMessagesRequest(session_id=first.session_id, page_token=listed.next_page_token), metadata=me
    )
    assert [m.content for m in [*listed.messages, *rest.messages]] == [m.content for m in appended.messages]
    assert rest.messages[0].citations[0].file_name == "ctdl.pdf" and rest.messages[0].citations[0].page == 3
    assert not rest.next_page_token

    # History search: accent-insensitive, highlighted in the original spelling.
    found = await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="cay nhi phan"), metadata=me)
    assert found.hits and found.hits[0].session_title == "Cấu trúc dữ liệu"
    assert "<mark>nhị</mark>" in found.hits[0].highlighted
    assert not (await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="zzqx"), metadata=me)).hits

    renamed = await storage.stub.UpdateSession(
        storage_pb2.UpdateSessionRequest(session_id=first.session_id, title="CTDL"), metadata=me
    )
    assert renamed.title == "CTDL"
    await storage.stub.DeleteSession(storage_pb2.DeleteSessionRequest(session_id=first.session_id), metadata=me)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await storage.stub.GetSession(storage_pb2.GetSessionRequest(session_id=first.session_id), metadata=me)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    after = await storage.stub.SearchMessages(storage_pb2.SearchMessagesRequest(query="cay nhi phan"), metadata=me)
    assert not after.hits


async def test_sessions_page_newest_first(storage: StorageClient) -> None:
    me = user_metadata(await storage.new_user())
    created = [
        (await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(title=f"s{i}"), metadata=me)).session_id
        for i in range(5)
    ]
    seen: list[str] = []
    token = ""
    while True:
        page = await storage.stub.ListSessions(
            storage_pb2.ListSessionsRequest(page_size=2, page_token=token), metadata=me
        )
        seen += [s.session_id for s in page.sessions]
        token = page.next_page_token
        if not token:
            break
    assert seen == created[::-1]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await storage.stub.ListSessions(storage_pb2.ListSessionsRequest(page_token="garbage!"), metadata=me)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_malformed_ids_are_caller_errors(storage: StorageClient) -> None:
    me = user_metadata(await storage.new_user())
    for bad_id in MALFORMED_IDS:
        calls: list[Awaitable[object]] = [
            storage.stub.GetSession(storage_pb2.GetSessionRequest(session_id=bad_id), metadata=me),
            storage.stub.UpdateSession(storage_pb2.UpdateSessionRequest(session_id=bad_id, title="x"), metadata=me),
            storage.stub.DeleteSession(storage_pb2.DeleteSessionRequest(session_id=bad_id), metadata=me),
            storage.stub.ListMessages(storage_pb2.ListMessagesRequest(session_id=bad_id), metadata=me),
            storage.stub.AppendMessages(
                storage_pb2.AppendMessagesRequest(
                    session_id=bad_id, messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content="x")]
                ),
                metadata=me,
            ),
            storage.stub.GetFile(storage_pb2.GetFileRequest(file_id=bad_id), metadata=me),
            storage.stub.DeleteFile(storage_pb2.DeleteFileRequest(file_id=bad_id), metadata=me),
            storage.stub.SearchChunks(storage_pb2.SearchChunksRequest(query="x", file_ids=[bad_id]), metadata=me),
        ]
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (bad_id, err)
        with pytest.raises(grpc.aio.AioRpcError) as watch_err:
            async for _ in storage.stub.WatchFile(storage_pb2.GetFileRequest(file_id=bad_id), metadata=me):
                pass
        assert watch_err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    with pytest.raises(grpc.aio.AioRpcError) as bad_user:
        await storage.stub.ListSessions(storage_pb2.ListSessionsRequest(), metadata=user_metadata("not-a-uuid"))
    assert bad_user.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as bad_role:
        session = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(), metadata=me)
        await storage.stub.AppendMessages(
            storage_pb2.AppendMessagesRequest(
                session_id=session.session_id, messages=[storage_pb2.Message(content="x")]
            ),
            metadata=me,
        )
    assert bad_role.value.code() == grpc.StatusCode.INVALID_ARGUMENT
