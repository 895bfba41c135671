"""Who is calling: short-lived signed caller assertions between the mesh's services.

The gateway verifies a student's access token; inside the mesh every call then carries a compact
JWT (HS256 with ``MESH_KEY``) in the ``x-mesh-assertion`` metadata: ``sub`` is the user the call
acts for, or ``service:<name>`` for a call that acts for the system (ingestion embedding a file),
``iss`` the calling service, ``aud`` the service called, ``exp`` seconds away. The client channel
(:mod:`studyassist.core.channels`) mints one per call; the one server interceptor
(:mod:`studyassist.core.server`) verifies it on every call except health checks, reflection and
telemetry ingestion, and servicers read the verified identity with :func:`caller_user_id`. A bare
header names nobody: a process without the key cannot act as any student.

The key is shared by the mesh (HMAC), so the issuer is the caller's word, checked only among
services that hold the key: it keeps a service's mistake (chat asking for a password hash) from
succeeding, not a service that was taken over.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt

from studyassist.core.config import CommonSettings, ConfigError, Environ, env_float
from studyassist.core.errors import PermissionDenied, Unauthenticated
from studyassist.core.secrets import MIN_SECRET_BYTES, check_production_key, require_key_length

MESH_ASSERTION_HEADER = "x-mesh-assertion"
# What user_metadata() puts in a call's metadata: a request to the channel to mint an assertion for
# this user. The channel removes it before sending; a server never reads it.
USER_ID_HEADER = "x-user-id"
SERVICE_PREFIX = "service:"
GATEWAY = "gateway"
ALGORITHM = "HS256"
DEFAULT_TTL_S = 60.0
# Clocks of two pods may differ by a little; an assertion lives a minute, so a few seconds is safe.
LEEWAY_S = 5.0
KEY_FILE = "mesh_key"
# Methods no caller identity is asked for: probes and load balancers, the gateway's route discovery,
# and telemetry (the OpenTelemetry SDK's exporters and a real Collector send none; they only push).
EXEMPT_PREFIXES = ("/grpc.health.", "/grpc.reflection.", "/opentelemetry.proto.collector.")


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: whom the call acts for (``subject``) and which service sent it."""

    subject: str
    issuer: str

    @property
    def user_id(self) -> str | None:
        return None if self.subject.startswith(SERVICE_PREFIX) else self.subject


caller_var: ContextVar[Identity | None] = ContextVar("mesh_caller", default=None)


def service_subject(name: str) -> str:
    return f"{SERVICE_PREFIX}{name}"


def audience_of(full_name: str) -> str | None:
    """The service a method or service name belongs to: ``/studyassist.storage.v1.StorageService/X``
    and ``studyassist.storage.v1.StorageService`` are "storage"; None outside the project's protos."""
    parts = full_name.lstrip("/").split(".")
    if len(parts) < 3 or parts[0] != "studyassist":
        return None
    return parts[1]


@dataclass(frozen=True, slots=True)
class Mesh:
    """This process's key and name: mints assertions for its calls and verifies those it receives."""

    key: bytes
    issuer: str
    ttl_s: float = DEFAULT_TTL_S

    def mint(self, subject: str, audience: str, *, issuer: str | None = None, ttl_s: float | None = None) -> str:
        now = time.time()
        claims = {
            "sub": subject,
            "iss": issuer or self.issuer,
            "aud": audience,
            "iat": int(now),
            "exp": now + (self.ttl_s if ttl_s is None else ttl_s),
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM)

    def verify(self, token: str, audiences: Collection[str]) -> Identity:
        """The identity in ``token``; Unauthenticated when forged, expired, or for another service."""
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                audience=list(audiences),
                leeway=LEEWAY_S,
                options={"require": ["sub", "iss", "aud", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the caller assertion has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated(f"the caller assertion is not for {', '.join(sorted(audiences))}") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the caller assertion is not valid: {exc}") from None
        subject, issuer = claims["sub"], claims["iss"]
        if not isinstance(subject, str) or not subject or not isinstance(issuer, str) or not issuer:
            raise Unauthenticated("the caller assertion names no caller")
        return Identity(subject, issuer)


def resolve_mesh_key(env: Environ, common: CommonSettings) -> bytes:
    """MESH_KEY; in development a generated one kept in DATA_DIR/mesh_key (shared by every service
    that runs with the same DATA_DIR, as ``make run`` does); production refuses to start without one."""
    configured = env.get("MESH_KEY", "").strip()
    if configured:
        require_key_length("MESH_KEY", configured)
        if common.production:  # neither a placeholder committed in deploy/ nor a guessable key
            check_production_key("MESH_KEY", configured)
        return configured.encode()
    if common.production:
        raise ConfigError("MESH_KEY is required when ENVIRONMENT=production")
    path = common.data_dir / KEY_FILE
    try:
        return _read_or_create(path)
    except OSError as exc:
        raise ConfigError(f"cannot keep the development mesh key in {path}: {exc}") from None


def _read_or_create(path: Path) -> bytes:
    # Five services start at once on one DATA_DIR: the first creates the file (O_EXCL), the others
    # read it; created 0600 so no other local user ever reads it. A file being written is retried.
    for _ in range(50):
        if path.exists():
            key = path.read_text().strip()
            if len(key.encode()) >= MIN_SECRET_BYTES:
                return key.encode()
            time.sleep(0.02)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key.encode()
    raise OSError(f"{path} holds no usable key (shorter than {MIN_SECRET_BYTES} bytes); delete it")


def assertion_ttl(env: Environ) -> float:
    return env_float(env, "MESH_ASSERTION_TTL_S", DEFAULT_TTL_S, minimum=1.0)


_mesh: Mesh | None = None
_lock = threading.Lock()


def configure_mesh(env: Environ, common: CommonSettings, issuer: str) -> Mesh:
    """Set this process's mesh identity (every service at start, before it builds its server)."""
    global _mesh
    mesh = Mesh(resolve_mesh_key(env, common), issuer, assertion_ttl(env))
    with _lock:
        _mesh = mesh
    return mesh


def current_mesh() -> Mesh:
    """This process's mesh identity. A process that is none of the services (tests, benchmarks, the
    launcher's probes) was never configured: it reads the key the same way and speaks as the front
    door, the gateway, as the scripts that drive the backends directly stand in for it."""
    global _mesh
    with _lock:
        if _mesh is None:
            env: Mapping[str, str] = os.environ
            _mesh = Mesh(resolve_mesh_key(env, CommonSettings.from_env(env)), GATEWAY, assertion_ttl(env))
        return _mesh


def assertion_metadata(subject: str, audience: str) -> tuple[tuple[str, str], ...]:
    """Metadata carrying a fresh assertion for ``subject`` to ``audience`` (for channels without the
    minting interceptor, such as the launcher's synchronous probes)."""
    return ((MESH_ASSERTION_HEADER, current_mesh().mint(subject, audience)),)


def verify_call(
    metadata: Iterable[tuple[str, str | bytes]] | None,
    mesh: Mesh,
    audiences: Collection[str],
    *,
    gateway_only: bool = False,
) -> Identity:
    """The verified identity of a call from its invocation metadata (see the module's docstring)."""
    token = ""
    for key, value in metadata or ():
        if key == MESH_ASSERTION_HEADER and isinstance(value, str):
            token = value
            break
    if not token:
        raise Unauthenticated("the call carries no caller assertion")
    identity = mesh.verify(token, audiences)
    if gateway_only and identity.issuer != GATEWAY:
        raise PermissionDenied("only the gateway may call this method")
    return identity


def caller_identity() -> Identity:
    identity = caller_var.get()
    if identity is None:
        raise Unauthenticated("the call carries no verified caller")
    return identity


def caller_user_id(context: grpc.aio.ServicerContext | None = None) -> str:
    """The user a call acts for, as its verified assertion says: UNAUTHENTICATED without one,
    PERMISSION_DENIED when the caller acts for a service rather than a user."""
    identity = caller_identity()
    if identity.user_id is None:
        raise PermissionDenied(f"this method acts for a user; the caller is {identity.subject}")
    return identity.user_id
