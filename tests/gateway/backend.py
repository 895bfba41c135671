"""A small in-memory StorageService served by a real gRPC server (core create_server: health,
reflection, error mapping), so the gateway's tests do not wait on the storage service's database.
It records what it received, which is what the gateway tests assert on."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from studyassist.chat.v1 import chat_pb2_grpc
from studyassist.core.channels import caller_user_id
from studyassist.core.errors import AlreadyExists, InvalidArgument, NotFound
from studyassist.core.server import Server, ServiceSpec, create_server
from studyassist.metrics.v1 import metrics_pb2_grpc
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

SERVICE = "studyassist.storage.v1.StorageService"
CHAT_SERVICE = "studyassist.chat.v1.ChatService"
METRICS_SERVICE = "studyassist.metrics.v1.MetricsService"
FOREVER = "forever"


@dataclass
class Upload:
    user_id: str
    metadata: storage_pb2.UploadMetadata
    chunk_sizes: list[int] = field(default_factory=list)
    digest: str = ""
    size: int = 0


class FakeStorage(storage_pb2_grpc.StorageServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.users: dict[str, storage_pb2.User] = {}
        self.hashes: dict[str, str] = {}
        self.sessions: dict[str, storage_pb2.Session] = {}
        self.session_owner: dict[str, str] = {}
        self.uploads: list[Upload] = []
        self.requests: dict[str, tuple[object, str]] = {}
        self.watch_cancelled = asyncio.Event()
        # Per method: the seconds left of the call's deadline and its metadata, as received.
        self.time_remaining: dict[str, float | None] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        self.email_lookups = 0
        self.roles: dict[str, str] = {}
        # Sign-ins as storage keeps them: id -> (user id, ended); refresh token hash -> (sign-in, used).
        self.sign_ins: dict[str, tuple[str, bool]] = {}
        self.refresh_tokens: dict[bytes, tuple[str, bool]] = {}

    def deactivate(self, user_id: str) -> None:
        self.users[user_id].active = False

    async def CreateUser(
        self, request: storage_pb2.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.User:
        if any(u.email == request.email for u in self.users.values()):
            raise AlreadyExists("email already registered")
        user = storage_pb2.User(
            user_id=str(uuid.uuid4()), email=request.email, display_name=request.display_name, active=True
        )
        self.users[user.user_id] = user
        self.hashes[user.user_id] = request.password_hash
        if request.HasField("first_sign_in"):
            self._start(user.user_id, request.first_sign_in)
        return user

    def _start(self, user_id: str, sign_in: storage_pb2.NewSignIn) -> None:
        self.sign_ins[sign_in.sign_in_id] = (user_id, False)
        self.refresh_tokens[sign_in.refresh_token_hash] = (sign_in.sign_in_id, False)

    def _account(self, user_id: str) -> storage_pb2.Account:
        user = self.users.get(user_id)
        if user is None:
            raise NotFound("no such user")
        ended = [sid for sid, (owner, done) in self.sign_ins.items() if owner == user_id and done]
        return storage_pb2.Account(user=user, role=self.roles.get(user_id, "student"), ended_sign_in_ids=ended)

    async def GetAccount(
        self, request: storage_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Account:
        return self._account(caller_user_id(context))

    async def CreateSignIn(
        self, request: storage_pb2.CreateSignInRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.CreateSignInResponse:
        self._start(caller_user_id(context), request.sign_in)
        return storage_pb2.CreateSignInResponse()

    async def RotateRefreshToken(
        self, request: storage_pb2.RotateRefreshTokenRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.RotateRefreshTokenResponse:
        user_id = caller_user_id(context)
        sign_in_id, used = self.refresh_tokens.get(request.refresh_token_hash, ("", False))
        owner, ended = self.sign_ins.get(sign_in_id, ("", False))
        reply = storage_pb2.RotateRefreshTokenResponse(sign_in_id=sign_in_id)
        if owner != user_id:
            reply.outcome = storage_pb2.REFRESH_OUTCOME_UNKNOWN
        elif ended:
            reply.outcome = storage_pb2.REFRESH_OUTCOME_ENDED
        elif used:
            self.sign_ins[sign_in_id] = (owner, True)
            reply.outcome = storage_pb2.REFRESH_OUTCOME_REUSED
        else:
            self.refresh_tokens[request.refresh_token_hash] = (sign_in_id, True)
            self.refresh_tokens[request.new_refresh_token_hash] = (sign_in_id, False)
            reply.outcome = storage_pb2.REFRESH_OUTCOME_ROTATED
            reply.account.CopyFrom(self._account(user_id))
        return reply

    async def EndSignIn(
        self, request: storage_pb2.EndSignInRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.EndSignInResponse:
        sign_in_id, _ = self.refresh_tokens.get(request.refresh_token_hash, ("", False))
        owner, _ = self.sign_ins.get(sign_in_id, ("", False))
        if owner != caller_user_id(context):
            return storage_pb2.EndSignInResponse()
        self.sign_ins[sign_in_id] = (owner, True)
        return storage_pb2.EndSignInResponse(sign_in_id=sign_in_id)

    async def GetUserByEmail(
        self, request: storage_pb2.GetUserByEmailRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.UserCredentials:
        self.email_lookups += 1
        for user in self.users.values():
            if user.email == request.email:
                return storage_pb2.UserCredentials(
                    user=user, password_hash=self.hashes[user.user_id], role=self.roles.get(user.user_id, "student")
                )
        raise NotFound("no such user")

    async def GetUser(self, request: storage_pb2.GetUserRequest, context: grpc.aio.ServicerContext) -> storage_pb2.User:
        user = self.users.get(caller_user_id(context))
        if user is None:
            raise NotFound("no such user")
        return user

    async def UploadFile(
        self, request_iterator: AsyncIterator[storage_pb2.UploadFileRequest], context: grpc.aio.ServicerContext
    ) -> storage_pb2.File:
        user_id = caller_user_id(context)
        upload: Upload | None = None
        digest = hashlib.sha256()
        async for part in request_iterator:
            if upload is None:
                if part.WhichOneof("part") != "metadata":
                    raise InvalidArgument("first message must carry metadata")
                upload = Upload(user_id, part.metadata)
                continue
            upload.chunk_sizes.append(len(part.chunk))
            digest.update(part.chunk)
        if upload is None:
            raise InvalidArgument("empty upload")
        # A cancelled client stream can end the request iterator like a half-close does; the
        # cancellation then reaches this task at its next await (as it would reach storage's commit).
        await asyncio.sleep(0.05)
        upload.digest = digest.hexdigest()
        upload.size = sum(upload.chunk_sizes)
        self.uploads.append(upload)
        return storage_pb2.File(
            file_id=str(uuid.uuid4()),
            file_name=upload.metadata.file_name,
            size_bytes=upload.size,
            sha256=upload.digest,
            status=storage_pb2.FILE_STATUS_QUEUED,
        )

    async def GetFile(self, request: storage_pb2.GetFileRequest, context: grpc.aio.ServicerContext) -> storage_pb2.File:
        if request.file_id == "boom":
            raise RuntimeError("secret internal detail /etc/passwd")
        raise NotFound(f"file {request.file_id} not found")

    async def WatchFile(
        self, request: storage_pb2.GetFileRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[storage_pb2.File]:
        caller_user_id(context)
        if request.file_id == "missing":
            raise NotFound("file missing not found")
        try:
            for done in range(1, 1_000_000):
                yield storage_pb2.File(
                    file_id=request.file_id, chunks_done=done, chunks_total=3, status=storage_pb2.FILE_STATUS_PROCESSING
                )
                if request.file_id != FOREVER and done == 3:
                    yield storage_pb2.File(file_id=request.file_id, status=storage_pb2.FILE_STATUS_READY)
                    return
                await asyncio.sleep(1.2 if request.file_id == "slow" else 0.05)
        except asyncio.CancelledError:
            self.watch_cancelled.set()
            raise

    async def CreateSession(
        self, request: storage_pb2.CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Session:
        user_id = caller_user_id(context)
        self.requests["CreateSession"] = (request, user_id)
        session = storage_pb2.Session(session_id=str(uuid.uuid4()), title=request.title, agent_id=request.agent_id)
        session.created_at.GetCurrentTime()
        self.sessions[session.session_id] = session
        self.session_owner[session.session_id] = user_id
        return session

    def _own(self, session_id: str, user_id: str) -> storage_pb2.Session:
        if self.session_owner.get(session_id) != user_id:
            raise NotFound(f"session {session_id} not found")
        return self.sessions[session_id]

    async def ListSessions(
        self, request: storage_pb2.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListSessionsResponse:
        user_id = caller_user_id(context)
        self.requests["ListSessions"] = (request, user_id)
        self.time_remaining["ListSessions"] = context.time_remaining()
        self.metadata["ListSessions"] = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        mine = [s for sid, s in self.sessions.items() if self.session_owner[sid] == user_id]
        return storage_pb2.ListSessionsResponse(sessions=mine[: request.page_size or 50])

    async def UpdateSession(
        self, request: storage_pb2.UpdateSessionRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.Session:
        user_id = caller_user_id(context)
        self.requests["UpdateSession"] = (request, user_id)
        session = self._own(request.session_id, user_id)
        session.title = request.title
        return session

    async def ListMessages(
        self, request: storage_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> storage_pb2.ListMessagesResponse:
        user_id = caller_user_id(context)
        self.requests["ListMessages"] = (request, user_id)
        self._own(request.session_id, user_id)
        return storage_pb2.ListMessagesResponse(next_page_token=f"size={request.page_size}")


async def start_storage(port: int = 0) -> tuple[Server, FakeStorage, str]:
    servicer = FakeStorage()  # type: ignore[abstract]
    server, bound = create_server(
        f"127.0.0.1:{port}", [ServiceSpec(SERVICE, servicer, storage_pb2_grpc.add_StorageServiceServicer_to_server)]
    )
    await server.start()
    return server, servicer, f"127.0.0.1:{bound}"


async def start_chat(servicer: chat_pb2_grpc.ChatServiceServicer | None = None, port: int = 0) -> tuple[Server, str]:
    """A chat backend: by default the generated servicer, whose every RPC answers UNIMPLEMENTED
    (its routes exist, which is what auth tests need: the gateway refuses before any call)."""
    servicer = servicer or chat_pb2_grpc.ChatServiceServicer()  # type: ignore[abstract]
    server, bound = create_server(
        f"127.0.0.1:{port}", [ServiceSpec(CHAT_SERVICE, servicer, chat_pb2_grpc.add_ChatServiceServicer_to_server)]
    )
    await server.start()
    return server, f"127.0.0.1:{bound}"


async def start_metrics(
    servicer: metrics_pb2_grpc.MetricsServiceServicer | None = None, port: int = 0
) -> tuple[Server, str]:
    """A metrics backend: by default the generated servicer (every RPC UNIMPLEMENTED)."""
    servicer = servicer or metrics_pb2_grpc.MetricsServiceServicer()  # type: ignore[abstract]
    server, bound = create_server(
        f"127.0.0.1:{port}",
        [ServiceSpec(METRICS_SERVICE, servicer, metrics_pb2_grpc.add_MetricsServiceServicer_to_server)],
    )
    await server.start()
    return server, f"127.0.0.1:{bound}"
