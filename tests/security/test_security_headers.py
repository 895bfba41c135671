"""Security headers (issue 18, "Smaller defects"): the CSP sets base-uri and form-action (default-src
covers neither), and HSTS is sent on answers to requests that came over TLS, which the gateway learns
from uvicorn: its own TLS, or X-Forwarded-Proto from a proxy in FORWARDED_ALLOW_IPS, and only then."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.backend import start_storage
from tests.gateway.conftest import serve_gateway

# The gateway's own answers, an API error, the web app, and the API docs page (its own CSP).
PATHS = ["/healthz", "/v1/files", "/", "/docs"]


async def _gateway(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    server, _, address = await start_storage()
    try:
        async with (
            serve_gateway({"STORAGE_ADDR": address}, tmp_path) as url,
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):
            yield client
    finally:
        await server.stop(0)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _gateway(tmp_path):
        yield client


def _directives(policy: str) -> dict[str, str]:
    pairs = (part.strip().split(" ", 1) for part in policy.split(";") if part.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


@pytest.mark.parametrize("path", PATHS)
async def test_the_csp_forbids_base_and_foreign_form_targets(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.get(path)
    directives = _directives(reply.headers["content-security-policy"])
    assert directives["base-uri"] == "'none'" and directives["form-action"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize("path", PATHS)
async def test_hsts_only_over_tls(client: httpx.AsyncClient, path: str) -> None:
    # The test client is 127.0.0.1, a proxy uvicorn trusts by default: its X-Forwarded-Proto counts.
    tls = await client.get(path, headers={"X-Forwarded-Proto": "https"})
    assert tls.headers["strict-transport-security"] == "max-age=31536000"
    plain = await client.get(path)
    assert "strict-transport-security" not in plain.headers
    stated_plain = await client.get(path, headers={"X-Forwarded-Proto": "http"})
    assert "strict-transport-security" not in stated_plain.headers


async def test_an_untrusted_client_cannot_claim_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the listed proxy is trusted: 127.0.0.1's X-Forwarded-Proto is then any client's word.
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.7")
    async for client in _gateway(tmp_path):
        reply = await client.get("/healthz", headers={"X-Forwarded-Proto": "https"})
        assert reply.status_code == 200 and "strict-transport-security" not in reply.headers
