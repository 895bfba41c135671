"""Property tests generated from /openapi.json against the gateway process, the real storage and metrics:
authenticated, no 5xx, and every response matches the documented schema, status and media type."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from studyassist.core.testing import ServiceProcess, spawn_service

from tests.gateway.conftest import DEAD_ADDR, SECRET, bearer


@pytest.fixture(scope="module")
def metrics_process() -> Iterator[ServiceProcess]:
    """The real metrics service (starts in well under a second): its routes are in the document too."""
    service = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway_process(
    real_storage: ServiceProcess, metrics_process: ServiceProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    # Chat is left out: a real one needs the embedding model, and a stand-in answering UNIMPLEMENTED
    # would be a 5xx by design. Its routes' anonymous refusal is covered in test_auth.
    # ADMIN_EMAILS is unset in development: the registered user may call the metrics routes.
    service = spawn_service(
        "gateway",
        {
            "GATEWAY_PORT": "0",
            "STORAGE_ADDR": real_storage.address,
            "CHAT_ADDR": DEAD_ADDR,
            "METRICS_ADDR": metrics_process.address,
            "JWT_SECRET": SECRET,
            "DATA_DIR": str(tmp_path_factory.mktemp("gw-st")),
            "REDIS_URL": "",
            "RATE_LIMIT_PER_MINUTE": "0",
            "RATE_LIMIT_IP_PER_MINUTE": "0",
        },
    )
    yield service
    service.stop()


@pytest.fixture(scope="module")
def token(gateway_process: ServiceProcess) -> str:
    reply = httpx.post(
        f"http://{gateway_process.address}/v1/auth/register",
        json={"email": f"st-{uuid.uuid4().hex[:8]}@example.edu.vn", "password": "property tests", "display_name": "S"},
    )
    assert reply.status_code == 201, reply.text
    value: str = reply.json()["access_token"]
    return value


@pytest.fixture(scope="module")
def api_schema(gateway_process: ServiceProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    document = httpx.get(f"http://{gateway_process.address}/openapi.json").json()
    # Auth routes are covered by test_auth (random accounts here would only cost argon2 time);
    # /readyz answers 503 by design while storage is away (test_readyz covers it).
    document["paths"] = {p: v for p, v in document["paths"].items() if p.startswith("/v1/") and "/auth/" not in p}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=f"http://{gateway_process.address}")
    return schema


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_api_matches_its_openapi_document(api_schema: Any, token: str) -> None:
    # Driven with hypothesis directly: schemathesis's pytest plugin does not load under pytest 9.
    operations = _operations(api_schema)
    paths = {operation.path for operation in operations}
    assert {"/v1/metrics/dashboard", "/v1/metrics/alerts", "/v1/config"} <= paths, paths
    assert len(operations) >= 18
    for operation in operations:

        @settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            # Proto schemas cannot say "query is required": a 400 for valid-shaped data is allowed.
            case.call_and_validate(headers=bearer(token), timeout=10, excluded_checks=[positive_data_acceptance])

        check()
