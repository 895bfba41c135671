"""Real Chromium (Debian's, never a downloaded build) driving the web app served by the real gateway."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from studyassist.core.testing import CHROMIUM, CHROMIUM_ARGS, ServiceProcess, in_ci, spawn_service

from tests.conftest import STORAGE_DATABASES, spawn_gateway

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "services" / "gateway" / "web"
# The one administrator of the browser tests' gateway: registered when the gateway starts and made
# one by the operator's command (storage.admin); everyone else is a student. Its password is the
# browser tests' PASSWORD.
ADMIN_EMAIL = "quan-tri@stu.ptit.edu.vn"
ADMIN_PASSWORD = "mat-khau-dai-1"


def require_chromium() -> None:
    """Skip locally when Chromium is missing; under CI=true the launch must happen (and fail loudly)."""
    if not CHROMIUM.exists() and not in_ci():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium); CI=true makes this a failure")


@pytest.fixture(scope="session")
def web_dist() -> Path:
    """The built app in the gateway's default WEB_DIST_DIR; `make build` is a no-op when it is current."""
    require_chromium()  # first, so a machine without Chromium skips before building or starting the mesh
    if shutil.which("npm") is None:
        pytest.fail("npm is needed to build the web app (services/gateway/web)")
    # One build at a time on this machine: test runs started side by side share web/dist.
    with open(WEB_DIR / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run(["make", "-s", "-C", str(WEB_DIR), "build"], capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        pytest.fail(f"building the web app failed:\n{built.stdout[-2000:]}\n{built.stderr[-2000:]}")
    dist = WEB_DIR / "dist"
    assert (dist / "index.html").is_file()
    return dist


@pytest.fixture(scope="session")
def metrics_service() -> Iterator[ServiceProcess]:
    """The real metrics service (it starts in well under a second), behind the dashboard."""
    service = spawn_service("metrics", {"METRICS_PORT": "0", "METRICS_HTTP_PORT": "0"})
    yield service
    service.stop()


@pytest.fixture(scope="session")
def web_gateway(
    chat_service: ServiceProcess,
    storage_service: ServiceProcess,
    metrics_service: ServiceProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """A gateway on the shared mesh (chat, storage, embedding) with the metrics service and one
    administrator, so the admin-only dashboard can be told apart from a student's view."""
    service = spawn_gateway(
        chat_service.address,
        storage_service.address,
        tmp_path_factory.mktemp("web-gateway"),
        # Named, so development's "every user is an administrator" is off; the role is the account's.
        {"METRICS_ADDR": metrics_service.address, "ADMIN_EMAILS": ADMIN_EMAIL},
    )
    registered = httpx.post(
        f"http://{service.address}/v1/auth/register",
        json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "display_name": "Quản trị"},
        timeout=30,
    )
    assert registered.status_code == 201, registered.text
    granted = subprocess.run(
        [sys.executable, "-m", "storage.admin", "grant", ADMIN_EMAIL],
        env={**os.environ, "DATABASE_URL": STORAGE_DATABASES[storage_service.address]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert granted.returncode == 0, granted.stderr
    yield service
    service.stop()


@pytest.fixture(scope="session")
def base_url(web_dist: Path, web_gateway: ServiceProcess) -> str:
    return f"http://{web_gateway.address}"


@pytest.fixture(scope="session")
def browser(base_url: str) -> Iterator[Browser]:
    # Depends on the mesh so it starts first: Playwright's sync API keeps an event loop running
    # in this thread, and the service fixtures use asyncio.run() to set up their databases.
    require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser, base_url: str) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=base_url, locale="vi-VN", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
