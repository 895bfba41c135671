"""The mesh trusts no caller it cannot verify (issue 18, "The mesh trusts any caller").

Real embedding, storage, chat and metrics processes on free ports, called directly over gRPC as any
local process could: every method each one serves (listed through its own server reflection, so a
method added later is covered too) refuses a call with no caller assertion, one signed with another
key, an expired one, one made for another service, and the bare ``x-user-id`` header the backends
used to trust. Storage's account methods refuse every service but the gateway, and a second
student's valid assertion reaches none of the first student's files, sessions or messages.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from storage.server import GATEWAY_ONLY
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import create_channel, stream_unary_response, user_metadata
from studyassist.core.config import CommonSettings, ConfigError
from studyassist.core.identity import (
    EXEMPT_PREFIXES,
    GATEWAY,
    MESH_ASSERTION_HEADER,
    USER_ID_HEADER,
    Mesh,
    current_mesh,
    resolve_mesh_key,
    service_subject,
)
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# A user id that exists nowhere, for the assertions that must be refused before it matters.
SOMEONE = "00000000-0000-4000-8000-000000000001"


@dataclass(frozen=True)
class Backend:
    name: str  # the audience its assertions carry
    address: str


@pytest.fixture(scope="module")
def metrics_service() -> Iterator[ServiceProcess]:
    service = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def backends(
    embedding_service: ServiceProcess,
    storage_service: ServiceProcess,
    chat_service: ServiceProcess,
    metrics_service: ServiceProcess,
) -> list[Backend]:
    return [
        Backend("embedding", embedding_service.address),
        Backend("storage", storage_service.address),
        Backend("chat", chat_service.address),
        Backend("metrics", metrics_service.address),
    ]


def served_methods(address: str) -> list[tuple[str, MethodDescriptor]]:
    """Every method the server at ``address`` serves, from its own reflection: (full path, descriptor)."""
    with grpc.insecure_channel(address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        found = []
        for service_name in database.get_services():
            for method in pool.FindServiceByName(service_name).methods:
                found.append((f"/{service_name}/{method.name}", method))
    return found


def call_status(
    channel: grpc.Channel, path: str, method: MethodDescriptor, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    """The status one call to ``path`` with an empty request ends with (raw bytes, no minting channel)."""
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, None, None)(iter([b""]), metadata=metadata, timeout=10):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, None, None)(iter([b""]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, None, None)(b"", metadata=metadata, timeout=10):
                pass
        else:
            channel.unary_unary(path, None, None)(b"", metadata=metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[attr-defined, no-any-return]
    return grpc.StatusCode.OK


def other_audience(name: str) -> str:
    return "storage" if name != "storage" else "chat"


def bad_callers(audience: str) -> dict[str, tuple[tuple[str, str], ...]]:
    mesh = current_mesh()
    stranger = Mesh(secrets.token_bytes(48), GATEWAY)  # a well-formed assertion signed with another key
    return {
        "no assertion": (),
        "forged": ((MESH_ASSERTION_HEADER, stranger.mint(SOMEONE, audience)),),
        "expired": ((MESH_ASSERTION_HEADER, mesh.mint(SOMEONE, audience, ttl_s=-120)),),
        "another audience": ((MESH_ASSERTION_HEADER, mesh.mint(SOMEONE, other_audience(audience))),),
        "bare x-user-id": ((USER_ID_HEADER, SOMEONE),),
        "garbage": ((MESH_ASSERTION_HEADER, "not.a.jwt"),),
    }


def test_every_backend_method_refuses_callers_it_cannot_verify(backends: list[Backend]) -> None:
    checked: dict[str, int] = {}
    for backend in backends:
        methods = served_methods(backend.address)
        guarded = [(path, m) for path, m in methods if not path.startswith(EXEMPT_PREFIXES)]
        # Only health, reflection and telemetry ingestion go unguarded; the rest is the service's own.
        assert guarded and all(path.startswith("/studyassist.") for path, _ in guarded), backend
        with grpc.insecure_channel(backend.address) as channel:
            for case, metadata in bad_callers(backend.name).items():
                for path, method in guarded:
                    code = call_status(channel, path, method, metadata)
                    assert code in REFUSED, (case, path, code)
        checked[backend.name] = len(guarded)
    assert checked["storage"] >= 20 and checked["chat"] >= 7 and checked["embedding"] >= 3 and checked["metrics"] >= 3


def test_a_user_method_refuses_a_service_identity(backends: list[Backend]) -> None:
    storage = next(b for b in backends if b.name == "storage")
    with grpc.insecure_channel(storage.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)
        as_service = ((MESH_ASSERTION_HEADER, current_mesh().mint(service_subject("chat"), "storage", issuer="chat")),)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListFiles(storage_pb2.ListFilesRequest(), metadata=as_service, timeout=10)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_account_methods_answer_only_the_gateway(backends: list[Backend]) -> None:
    storage = next(b for b in backends if b.name == "storage")
    service = storage_pb2.DESCRIPTOR.services_by_name["StorageService"]
    assert {"CreateUser", "GetUserByEmail"} <= GATEWAY_ONLY <= {m.name for m in service.methods}
    mesh = current_mesh()
    email = f"{secrets.token_hex(5)}@ptit.edu.vn"
    with grpc.insecure_channel(storage.address) as channel:
        stub = storage_pb2_grpc.StorageServiceStub(channel)

        def signed(subject: str, issuer: str) -> tuple[tuple[str, str], ...]:
            return ((MESH_ASSERTION_HEADER, mesh.mint(subject, "storage", issuer=issuer)),)

        user = stub.CreateUser(
            storage_pb2.CreateUserRequest(email=email, password_hash="$argon2id$secret"),
            metadata=signed(service_subject(GATEWAY), GATEWAY),
            timeout=10,
        )
        for issuer in ("chat", "embedding", "storage", "metrics"):
            for subject in (service_subject(issuer), user.user_id):
                for name in sorted(GATEWAY_ONLY):
                    method = service.methods_by_name[name]
                    path = f"/{service.full_name}/{name}"
                    code = call_status(channel, path, method, signed(subject, issuer))
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (issuer, subject, name, code)
        # The hash reaches the gateway's sign-in, and no one else.
        found = stub.GetUserByEmail(
            storage_pb2.GetUserByEmailRequest(email=email), metadata=signed(service_subject(GATEWAY), GATEWAY)
        )
        assert found.password_hash == "$argon2id$secret"
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetUserByEmail(storage_pb2.GetUserByEmailRequest(email=email), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


async def test_a_second_student_reaches_none_of_the_first_ones_material(
    storage_service: ServiceProcess, chat_service: ServiceProcess
) -> None:
    """The two-user canary, directly on the gRPC ports with valid assertions: B sees nothing of A's."""
    async with (
        create_channel(storage_service.address, default_timeout=60) as s,
        create_channel(chat_service.address, default_timeout=60) as c,
    ):
        storage = storage_pb2_grpc.StorageServiceStub(s)
        chat = chat_pb2_grpc.ChatServiceStub(c)

        async def new_user() -> str:
            request = storage_pb2.CreateUserRequest(
                email=f"{secrets.token_hex(5)}@ptit.edu.vn", display_name="Sinh viên", password_hash="h"
            )
            return (await storage.CreateUser(request)).user_id

        a, b = await new_user(), await new_user()
        me_a, me_b = user_metadata(a), user_metadata(b)

        async def parts() -> object:
            yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name="canary.txt"))
            yield storage_pb2.UploadFileRequest(chunk=b"Ngan xep canary-7f3a la cau truc LIFO.\n" * 20)

        file = await stream_unary_response(storage.UploadFile(parts(), metadata=me_a))  # type: ignore[arg-type]
        async for update in storage.WatchFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me_a):
            if update.status in (storage_pb2.FILE_STATUS_READY, storage_pb2.FILE_STATUS_FAILED):
                assert update.status == storage_pb2.FILE_STATUS_READY, update.error  # ingestion embedded it
                break
        session = await storage.CreateSession(storage_pb2.CreateSessionRequest(title="A's notes"), metadata=me_a)
        await storage.AppendMessages(
            storage_pb2.AppendMessagesRequest(
                session_id=session.session_id,
                messages=[storage_pb2.Message(role=storage_pb2.ROLE_USER, content="canary-7f3a question")],
            ),
            metadata=me_a,
        )
        # A reaches all of it.
        assert (await storage.GetFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me_a)).file_id
        assert await storage.GetSession(storage_pb2.GetSessionRequest(session_id=session.session_id), metadata=me_a)

        not_found: list[tuple[str, Callable[[], object]]] = [
            ("GetFile", lambda: storage.GetFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me_b)),
            (
                "ListFileChunks",
                lambda: storage.ListFileChunks(storage_pb2.ListFileChunksRequest(file_id=file.file_id), metadata=me_b),
            ),
            (
                "DeleteFile",
                lambda: storage.DeleteFile(storage_pb2.DeleteFileRequest(file_id=file.file_id), metadata=me_b),
            ),
            (
                "GetSession",
                lambda: storage.GetSession(storage_pb2.GetSessionRequest(session_id=session.session_id), metadata=me_b),
            ),
            (
                "ListMessages",
                lambda: storage.ListMessages(
                    storage_pb2.ListMessagesRequest(session_id=session.session_id), metadata=me_b
                ),
            ),
            (
                "SearchChunks",
                lambda: storage.SearchChunks(
                    storage_pb2.SearchChunksRequest(query="canary-7f3a", file_ids=[file.file_id]), metadata=me_b
                ),
            ),
            (
                "Chat",
                lambda: chat.Chat(
                    chat_pb2.ChatRequest(message="What is canary-7f3a?", file_ids=[file.file_id]), metadata=me_b
                ),
            ),
        ]
        for name, call in not_found:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()  # type: ignore[misc]
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, name

        async def download_as_b() -> None:
            async for _ in storage.DownloadFile(storage_pb2.DownloadFileRequest(file_id=file.file_id), metadata=me_b):
                pass

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await download_as_b()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # B's own search and history hold nothing of A's.
        hits = await storage.SearchChunks(storage_pb2.SearchChunksRequest(query="canary-7f3a"), metadata=me_b)
        assert not hits.hits
        history = await storage.SearchMessages(storage_pb2.SearchMessagesRequest(query="canary-7f3a"), metadata=me_b)
        assert not history.hits
        # And A's file outlived B's attempt to delete it.
        assert (await storage.GetFile(storage_pb2.GetFileRequest(file_id=file.file_id), metadata=me_a)).file_id


def test_production_refuses_to_start_without_a_mesh_key(tmp_path: Path) -> None:
    production = CommonSettings.from_env({"ENVIRONMENT": "production", "DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="MESH_KEY is required"):
        resolve_mesh_key({}, production)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        resolve_mesh_key({"MESH_KEY": "short"}, production)
    key = secrets.token_urlsafe(48)
    assert resolve_mesh_key({"MESH_KEY": key}, production) == key.encode()
    assert not (tmp_path / "mesh_key").exists()  # production never writes one


def test_development_keeps_one_private_key_in_the_data_dir(tmp_path: Path) -> None:
    development = CommonSettings.from_env({"DATA_DIR": str(tmp_path)})
    first = resolve_mesh_key({}, development)
    assert len(first) >= 32 and resolve_mesh_key({}, development) == first  # every service reads the same one
    mode = stat.S_IMODE(os.stat(tmp_path / "mesh_key").st_mode)
    assert mode == 0o600
