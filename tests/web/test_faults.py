"""Faults the student sees, in real Chromium against real services: a chat service frozen with
SIGSTOP or killed, an access token that expires under two open tabs, a first answer stopped
before chat named its session, and server errors said in Vietnamese with the request id kept
in a details disclosure.

Each fault that harms a service gets a chat and a gateway of its own (on the shared storage and
embedding), so the other browser tests keep their healthy mesh.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Request, Route, expect
from studyassist.core.testing import ServiceProcess

from tests.conftest import spawn_chat, spawn_gateway
from tests.web.test_browser import ANSWER_TIMEOUT_MS, PASSWORD, register

# The bounds of the fault gateways: a heartbeat a second, a silent stream ends after 3 s, and a
# unary call to chat (ListAgents) gives up after 3 s, so a frozen chat shows within seconds.
FAULT_GATEWAY_ENV = {"SSE_HEARTBEAT_S": "1", "STREAM_STALL_TIMEOUT_S": "3", "GATEWAY_CHAT_TIMEOUT_S": "3"}
# Long enough for the frozen chat's errors to come through the gateway's and client's bounds.
FAULT_TIMEOUT_MS = 30_000


@pytest.fixture
def own_chat(storage_service: ServiceProcess, embedding_service: ServiceProcess) -> Iterator[ServiceProcess]:
    """A chat service only this test harms (frozen or killed); resumed and stopped afterwards."""
    service = spawn_chat(storage_service.address, embedding_service.address)
    yield service
    if service.process.poll() is None:
        os.kill(service.process.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    service.stop()


@contextmanager
def fault_gateway(
    chat: ServiceProcess, storage: ServiceProcess, data_dir: Path, extra: dict[str, str] | None = None
) -> Iterator[str]:
    gateway = spawn_gateway(chat.address, storage.address, data_dir, {**FAULT_GATEWAY_ENV, **(extra or {})})
    try:
        yield f"http://{gateway.address}"
    finally:
        gateway.stop()


@contextmanager
def browser_context(browser: Browser, base_url: str) -> Iterator[BrowserContext]:
    context = browser.new_context(base_url=base_url, locale="vi-VN", viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    try:
        yield context
    finally:
        context.close()


def send(page: Page, question: str) -> None:
    composer = page.get_by_test_id("composer")
    composer.fill(question)
    composer.press("Enter")


def test_frozen_chat_gives_a_retryable_error_and_keeps_the_question(
    web_dist: Path,
    browser: Browser,
    own_chat: ServiceProcess,
    storage_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    with fault_gateway(own_chat, storage_service, tmp_path) as base_url, browser_context(browser, base_url) as context:
        page = context.new_page()
        register(page)
        page.goto("/#/chat")
        picker = page.get_by_test_id("agent-select")
        # Options that are agents (not the "loading" placeholder).
        agent_options = picker.locator("option:not([disabled])")
        expect(agent_options).not_to_have_count(0)
        agents = agent_options.count()

        os.kill(own_chat.process.pid, signal.SIGSTOP)
        question = "Giao thức TCP bắt tay ba bước như thế nào?"
        send(page, question)
        # Not a spinner forever: a clear error with a retry, and the question back in the box.
        error = page.get_by_test_id("send-error")
        expect(error).to_contain_text("Trợ lý không phản hồi", timeout=FAULT_TIMEOUT_MS)
        expect(error.get_by_role("button", name="Thử lại")).to_be_visible()
        expect(page.get_by_test_id("composer")).to_have_value(question)
        expect(page.get_by_text("Đang trả lời…")).to_have_count(0)
        # The chat the question started is in view: at its own address and in the sidebar.
        expect(page).to_have_url(re.compile(r"#/chat/[0-9a-f-]{36}$"))
        expect(page.get_by_test_id("session-list").locator("li").filter(has_text="Giao thức TCP")).to_have_count(1)

        # A reload while chat is still frozen: the picker keeps the agents it knew, an error says
        # the list could not be loaded (with a retry), and the question is still in the box.
        page.reload()
        agents_error = page.get_by_test_id("agents-error")
        expect(agents_error).to_be_visible(timeout=FAULT_TIMEOUT_MS)
        expect(agents_error.get_by_role("button", name="Thử lại")).to_be_visible()
        expect(agent_options).to_have_count(agents)
        expect(page.get_by_test_id("composer")).to_have_value(question)

        # Chat resumes: Retry loads the agents, and the same question gets its answer.
        os.kill(own_chat.process.pid, signal.SIGCONT)
        agents_error.get_by_role("button", name="Thử lại").click()
        expect(agents_error).to_have_count(0, timeout=FAULT_TIMEOUT_MS)
        page.get_by_test_id("send").click()
        answer = page.get_by_test_id("message-assistant").last
        expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_TIMEOUT_MS)
        expect(page.get_by_test_id("send-error")).to_have_count(0)
        expect(page.get_by_test_id("message-user").filter(has_text=question)).to_have_count(1)
        expect(page.get_by_test_id("composer")).to_have_value("")


def test_the_web_app_gives_up_on_a_silent_stream_by_itself(
    web_dist: Path,
    browser: Browser,
    own_chat: ServiceProcess,
    storage_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    # A gateway that would wait a long time (its first heartbeat after 15 s), and a web app told a
    # short bound: the client's own check of the stream ends it, whatever the gateway does.
    extra = {"SSE_HEARTBEAT_S": "15", "STREAM_STALL_TIMEOUT_S": "60"}
    with (
        fault_gateway(own_chat, storage_service, tmp_path, extra) as base_url,
        browser_context(browser, base_url) as context,
    ):
        page = context.new_page()

        def short_bound(route: Route) -> None:
            config = route.fetch().json()
            route.fulfill(json={**config, "sse_heartbeat_s": 0.5, "stream_stall_timeout_s": 1})

        page.route(re.compile(r"/v1/config$"), short_bound)
        register(page)
        page.goto("/#/chat")
        expect(page.get_by_test_id("agent-select").locator("option:not([disabled])")).not_to_have_count(0)
        os.kill(own_chat.process.pid, signal.SIGSTOP)
        send(page, "Mô hình OSI có mấy tầng?")
        error = page.get_by_test_id("send-error")
        expect(error).to_contain_text("Trợ lý không phản hồi", timeout=FAULT_TIMEOUT_MS)
        details = error.get_by_test_id("error-details")
        details.locator("summary").click()
        expect(details).to_contain_text("STREAM_STALLED")
        expect(page.get_by_test_id("composer")).to_have_value("Mô hình OSI có mấy tầng?")


def test_killed_chat_says_the_assistant_is_restarting(
    web_dist: Path,
    browser: Browser,
    own_chat: ServiceProcess,
    storage_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    with fault_gateway(own_chat, storage_service, tmp_path) as base_url, browser_context(browser, base_url) as context:
        page = context.new_page()
        register(page)
        page.goto("/#/chat")
        expect(page.get_by_test_id("agent-select").locator("option:not([disabled])")).not_to_have_count(0)
        own_chat.process.kill()
        own_chat.process.wait()

        send(page, "Định tuyến tĩnh là gì?")
        error = page.get_by_test_id("send-error")
        expect(error).to_contain_text("Trợ lý đang khởi động lại", timeout=FAULT_TIMEOUT_MS)
        # Not the student's network, and no server English or request id in the sentence itself.
        expect(error).not_to_contain_text("Không kết nối")
        text = error.locator(".error-text").inner_text()
        assert "mã yêu cầu" not in text and "unavailable" not in text, text
        # The request id waits in a details disclosure.
        details = error.get_by_test_id("error-details")
        expect(details).to_have_count(1)
        details.locator("summary").click()
        expect(details).to_contain_text("mã yêu cầu")
        expect(page.get_by_test_id("composer")).to_have_value("Định tuyến tĩnh là gì?")

        # English UI says the same in English.
        page.get_by_test_id("lang-switch").click()
        expect(error).to_contain_text("The assistant is restarting")


def test_two_tabs_refresh_the_expired_token_once(
    web_dist: Path,
    browser: Browser,
    chat_service: ServiceProcess,
    storage_service: ServiceProcess,
    tmp_path: Path,
) -> None:
    # Access tokens of 10 s (the least the gateway allows): they expire while both tabs are open.
    extra = {"ACCESS_TOKEN_TTL_S": "10"}
    with (
        fault_gateway(chat_service, storage_service, tmp_path, extra) as base_url,
        browser_context(browser, base_url) as context,
    ):
        first = context.new_page()
        register(first)
        second = context.new_page()
        second.goto("/#/documents")
        expect(second.get_by_test_id("logout")).to_be_visible()
        refreshes: list[Request] = []
        context.on("request", lambda r: refreshes.append(r) if r.url.endswith("/v1/auth/refresh") else None)

        # Past the token's lifetime and the gateway's 5 s clock-skew leeway.
        first.wait_for_timeout(16_000)
        # Both tabs call the API with the expired token at once (each reload lists sessions).
        first.reload(wait_until="commit")
        second.reload(wait_until="commit")
        for page in (first, second):
            expect(page.get_by_test_id("logout")).to_be_visible()
            expect(page.locator("form.auth-card")).to_have_count(0)
        # The tabs shared one refresh: no single-use refresh token was sent twice (the bug: both tabs
        # spent the same one and logged each other out). On a loaded machine the 10 s token may
        # expire again before both tabs are done, and a later refresh spends the newer token.
        spent = [json.loads(r.post_data or "{}").get("refresh_token") for r in refreshes]
        assert spent and all(spent) and len(set(spent)) == len(spent), [r.url for r in refreshes]
        # And both keep working with the shared tokens.
        for page in (first, second):
            page.goto("/#/documents")
            expect(page.get_by_test_id("logout")).to_be_visible()
            expect(page.get_by_role("alert")).to_have_count(0)


def test_stopping_the_first_answer_keeps_the_chat(page: Page) -> None:
    register(page)
    page.goto("/#/chat")
    # The answer is held at the network, so Stop comes before chat would name the session.
    held: list[Route] = []
    page.route(re.compile(r"/v1/chat:stream"), lambda route: held.append(route))
    question = "Mạng LAN khác mạng WAN ở điểm nào?"
    send(page, question)
    expect(page.get_by_test_id("stop")).to_be_visible()
    expect(page).to_have_url(re.compile(r"#/chat/[0-9a-f-]{36}$"))
    page.get_by_test_id("stop").click()
    expect(page.get_by_text("Đã dừng.")).to_be_visible()
    address = page.url
    session = page.get_by_test_id("session-list").locator("li").filter(has_text="Mạng LAN khác mạng WAN")
    expect(session).to_have_count(1)

    # A reload opens the same chat, its question back in the box, not a blank page.
    page.unroute(re.compile(r"/v1/chat:stream"))
    page.reload()
    assert page.url == address
    expect(page.get_by_test_id("composer")).to_have_value(question)
    expect(session).to_have_count(1)
    # Sending it now answers in that same chat.
    page.get_by_test_id("send").click()
    expect(page.get_by_test_id("message-assistant").last).to_have_attribute(
        "aria-busy", "false", timeout=ANSWER_TIMEOUT_MS
    )
    assert page.url == address
    page.reload()
    expect(page.get_by_test_id("message-user").filter(has_text=question)).to_have_count(1)
    expect(page.get_by_test_id("composer")).to_have_value("")


def test_errors_in_vietnamese_with_the_request_id_in_details(page: Page) -> None:
    email = register(page)
    page.get_by_test_id("logout").click()
    form = page.locator("form.auth-card")

    # A wrong password says so, not "session expired".
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password]").fill(PASSWORD + "-sai")
    form.locator("button[type=submit]").click()
    alert = form.get_by_role("alert")
    expect(alert).to_contain_text("Email hoặc mật khẩu không đúng")
    expect(alert).not_to_contain_text("hết hạn")

    # Registering an email that has an account: Vietnamese, no server English, id in details.
    page.get_by_role("button", name="Chưa có tài khoản? Đăng ký").click()
    display_name = form.locator("input[name=display_name]")
    expect(display_name).to_have_attribute("required", "")
    display_name.fill("Sinh viên Trùng")
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("button[type=submit]").click()
    expect(alert).to_contain_text("Email này đã có tài khoản")
    sentence = alert.locator(".error-text").inner_text()
    assert "already exists" not in sentence and "mã yêu cầu" not in sentence, sentence
    details = alert.get_by_test_id("error-details")
    expect(details.locator("summary")).to_have_text("Chi tiết")
    details.locator("summary").click()
    expect(details).to_contain_text(re.compile(r"mã yêu cầu: \S+"))
    expect(details).to_contain_text("EMAIL_TAKEN")

    # The display name is required: the browser refuses the form before any request.
    display_name.fill("")
    form.locator("input[name=email]").fill(f"moi{uuid.uuid4().hex[:8]}@stu.ptit.edu.vn")
    form.locator("button[type=submit]").click()
    assert display_name.evaluate("el => el.validity.valueMissing") is True
    expect(page.get_by_test_id("new-chat")).to_have_count(0)


def test_agent_description_shows_when_choosing(page: Page) -> None:
    register(page)
    page.goto("/#/chat")
    picker = page.get_by_test_id("agent-select")
    expect(picker.locator("option:not([disabled])")).not_to_have_count(0)
    description = page.get_by_test_id("agent-description")
    expect(description).not_to_be_empty()
    options = picker.locator("option")
    values = [options.nth(i).get_attribute("value") or "" for i in range(options.count())]
    assert len(values) >= 2, values
    seen = set()
    for value in values[:2]:
        picker.select_option(value)
        expect(description).not_to_be_empty()
        seen.add(description.inner_text())
    # Each agent says what it is for, in its own words.
    assert len(seen) == 2, seen
    page.get_by_test_id("lang-switch").click()
    expect(description).not_to_be_empty()
    assert description.inner_text() not in seen
