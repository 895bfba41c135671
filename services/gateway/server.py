"""Wiring: channels, route table, auth, limits, middleware and the Starlette app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.cache import connect_redis
from studyassist.core.channels import create_channel
from studyassist.core.config import CommonSettings
from studyassist.core.telemetry import ServerSpans, Telemetry
from studyassist.storage.v1 import storage_pb2_grpc

from gateway.auth import (
    AdminPolicy,
    Authenticator,
    AuthRoutes,
    TokenConfig,
    Tokens,
)
from gateway.backoff import SignInBackoff
from gateway.config import Settings
from gateway.drain import Drain, DrainGate
from gateway.middleware import FrontDoor, csp_allowing_style
from gateway.openapi import DOCS_STYLE, build_openapi, render_docs
from gateway.ratelimit import RateLimiter
from gateway.responses import HttpError, error_response, json_response
from gateway.static import WebApp
from gateway.transcode import Transcoder

log = logging.getLogger(__name__)

# Every route of these backends is for administrators only (the admin role of the account).
ADMIN_BACKENDS = frozenset({"metrics"})
# What /readyz asks of the backends. Kubernetes' readinessProbe (deploy/k8s/base/gateway.yaml) takes
# a gateway pod out of the Service while it fails, so it must say whether *this* gateway is worth
# sending traffic to. Storage is required: every API route, sign-in included, goes through it, and
# a gateway that cannot reach it (while another replica may) serves nothing but the page shell.
# Chat and metrics are optional: without chat, documents, history and the web app itself still
# work and the web app can say that the assistant is restarting; without metrics, telemetry is
# dropped. Every gateway replica shares the same chat, so failing readiness on it would take all
# of them out at once and turn one degraded feature into a whole outage. An optional backend that
# is not serving is reported as degraded with 200; a required one makes it 503.
REQUIRED_BACKENDS = ("storage",)
API_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
COMPRESSED_DOCUMENT_TYPES = (
    "application/pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)
# Each readiness question to a backend (its health, chat's backend) is bounded by this.
READY_TIMEOUT_S = 1.0


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return error_response(exc)


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: grpc.StatusCode.NOT_FOUND, 405: grpc.StatusCode.UNIMPLEMENTED}.get(
        exc.status_code, grpc.StatusCode.INVALID_ARGUMENT
    )
    return error_response(HttpError(code, str(exc.detail), status=exc.status_code, headers=dict(exc.headers or {})))


class Gateway:
    """Everything the app holds, built once (constructor injection, no globals)."""

    def __init__(self, settings: Settings, common: CommonSettings, telemetry: Telemetry, jwt_secret: str) -> None:
        self.settings = settings
        self.backends = {"chat": settings.chat_addr, "storage": settings.storage_addr, "metrics": settings.metrics_addr}
        self.channels = {name: create_channel(address) for name, address in self.backends.items()}
        self.redis = connect_redis(common.redis_url)
        storage = storage_pb2_grpc.StorageServiceStub(self.channels["storage"])
        tokens = Tokens(
            TokenConfig(
                jwt_secret,
                settings.jwt_issuer,
                settings.jwt_audience,
                settings.access_token_ttl_s,
                settings.refresh_token_ttl_s,
            )
        )
        self.admins = AdminPolicy.from_settings(settings.admin_emails, production=common.production)
        self.authenticator = Authenticator(tokens, storage, settings.user_cache_ttl_s, self.admins)
        # Sign-ins (refresh tokens) are kept by storage in PostgreSQL: no Redis on the sign-in path
        # but the backoff's counters, which fall back to local ones.
        self.sign_in_backoff = SignInBackoff(settings.sign_in_backoff, self.redis)
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_ip_per_minute, self.redis)
        # Begun by `python -m gateway` on SIGTERM (the app's state carries it there).
        self.drain = Drain(retry_after_s=max(1.0, settings.drain_s))
        self.auth_routes = AuthRoutes(
            self.authenticator,
            storage,
            settings.max_body_bytes,
            settings.password_hasher(),
            hash_concurrency=settings.password_hash_concurrency,
            hash_max_waiting=settings.password_hash_queue,
            backoff=self.sign_in_backoff,
        )
        self.transcoder = Transcoder(
            self.backends,
            self.channels,
            self.authenticator,
            self.limiter,
            max_body_bytes=settings.max_body_bytes,
            upload_max_bytes=settings.upload_max_bytes,
            heartbeat_s=settings.sse_heartbeat_s,
            stall_s=settings.stream_stall_timeout_s,
            admin_backends=ADMIN_BACKENDS,
            unary_timeouts={"chat": settings.chat_timeout_s},
            drain=self.drain,
        )
        self.web = WebApp(settings.web_dist_dir)
        self.meter = telemetry.meter
        self.tracer = telemetry.tracer
        # The SERVER span of every request (see ServerSpans: the SDK tracer's span cost more than
        # the rest of the telemetry together).
        self.spans = ServerSpans(telemetry.tracer_provider, "studyassist.gateway")
        self._openapi: tuple[int, bytes, str] | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.transcoder.refresh()
        log.info(
            "gateway ready",
            extra={
                "fields": {
                    "routes": len(self.transcoder.table.routes),
                    "backends_loaded": [n for n, ok in self.transcoder.loaded.items() if ok],
                    "refresh_tokens": "storage",
                    "sign_in_backoff": self.sign_in_backoff.backend,
                    "rate_limits": self.limiter.backend,
                    "web_app": self.web.dist_dir.joinpath("index.html").is_file(),
                    "admins": "every signed-in user (development, ADMIN_EMAILS empty)"
                    if self.admins.everyone
                    else "accounts with the admin role",
                }
            },
        )
        task = asyncio.create_task(self.transcoder.refresh_forever(self.settings.descriptor_refresh_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for channel in self.channels.values():
                await channel.close(None)
            if self.redis is not None:
                await self.redis.aclose()

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def _serving(self, name: str) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(self.channels[name]).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=READY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def _chat_backend(self) -> dict[str, Any]:
        """Which backend chat answers with ("llm:<model>" or "extractive"); "unknown" when chat cannot say."""
        try:
            status = await chat_pb2_grpc.ChatServiceStub(self.channels["chat"]).GetChatStatus(
                chat_pb2.GetChatStatusRequest(), timeout=READY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            return {"backend": "unknown", "llm_available": False, "error": exc.code().name}
        return {"backend": status.backend, "llm_available": status.llm_available}

    async def readyz(self, request: Request) -> Response:
        names = list(self.backends)
        chat, results = await asyncio.gather(
            self._chat_backend(), asyncio.gather(*(self._serving(name) for name in names))
        )
        backends = {name: "SERVING" if ok else "NOT_SERVING" for name, ok in zip(names, results, strict=True)}
        down = [name for name in names if backends[name] != "SERVING"]
        ready = not any(name in REQUIRED_BACKENDS for name in down)
        body = {
            # "ok", "degraded" (an optional backend is down; still 200) or "unavailable" (503).
            "status": "unavailable" if not ready else "degraded" if down else "ok",
            "ready": ready,
            "backends": backends,
            "degraded": down,
            "required": list(REQUIRED_BACKENDS),
            "chat": chat,
        }
        return json_response(body, 200 if ready else 503, headers={"Cache-Control": "no-store"})

    async def config(self, request: Request) -> Response:
        """What the web app needs to know of this gateway's settings, for the signed-in user."""
        user_id = await self.authenticator.authenticate(request)
        await self.limiter.check_user(user_id)
        return json_response(
            {
                "upload_max_bytes": self.settings.upload_max_bytes,
                "max_body_bytes": self.settings.max_body_bytes,
                "is_admin": await self.authenticator.is_admin(user_id),
                # The web app's bound on a silent answer stream (its heartbeats come this often).
                "sse_heartbeat_s": self.settings.sse_heartbeat_s,
                "stream_stall_timeout_s": self.settings.stream_stall_timeout_s,
            },
            headers={"Cache-Control": "no-store"},
        )

    def _document(self) -> tuple[bytes, str]:
        generation = self.transcoder.table.generation
        if self._openapi is None or self._openapi[0] != generation:
            from gateway.responses import dumps

            document = build_openapi(self.transcoder.table.routes, admin_backends=ADMIN_BACKENDS)
            self._openapi = (generation, dumps(document), render_docs(document))
        return self._openapi[1], self._openapi[2]

    async def openapi(self, request: Request) -> Response:
        return Response(self._document()[0], media_type="application/json", headers={"Cache-Control": "no-cache"})

    async def docs(self, request: Request) -> Response:
        csp = csp_allowing_style(DOCS_STYLE)
        return HTMLResponse(self._document()[1], headers={"Cache-Control": "no-cache", "Content-Security-Policy": csp})

    def app(self) -> Starlette:
        auth = self.auth_routes
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/v1/auth/register", auth.register, methods=["POST"]),
            Route("/v1/auth/login", auth.login, methods=["POST"]),
            Route("/v1/auth/refresh", auth.refresh, methods=["POST"]),
            Route("/v1/auth/logout", auth.logout, methods=["POST"]),
            Route("/v1/config", self.config, methods=["GET"]),
            Route("/v1/{rest:path}", self.transcoder.handle, methods=API_METHODS),
            Route("/{rest:path}", self.web.serve, methods=["GET", "HEAD"]),
        ]
        middleware = [
            Middleware(FrontDoor, limiter=self.limiter, meter=self.meter, spans=self.spans),
            Middleware(DrainGate, drain=self.drain),
        ]
        if self.settings.cors_origins:
            middleware.append(
                Middleware(
                    CORSMiddleware,
                    allow_origins=list(self.settings.cors_origins),
                    allow_methods=API_METHODS,
                    allow_headers=["authorization", "content-type", "x-request-id", "traceparent", "tracestate"],
                    expose_headers=["x-request-id", "x-trace-id", "x-response-time", "retry-after"],
                    max_age=600,
                )
            )
        # Level 5, not Starlette's 9: on a 13 KB page of sessions it is ~25 % cheaper for <1 % more bytes.
        middleware.append(
            Middleware(
                GZipMiddleware,
                minimum_size=500,
                compresslevel=5,
                # Downloads of PDF, DOCX and PPTX files are compressed already.
                exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, *COMPRESSED_DOCUMENT_TYPES),
            )
        )
        handlers: dict[Any, Any] = {HttpError: _http_error, HTTPException: _starlette_error}
        app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=self.lifespan)
        app.state.drain = self.drain
        return app


def build_app(settings: Settings, common: CommonSettings, telemetry: Telemetry, jwt_secret: str) -> Starlette:
    return Gateway(settings, common, telemetry, jwt_secret).app()
