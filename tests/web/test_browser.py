"""The web app in real Chromium against the real mesh (gateway, chat, storage, embedding).

A student registers, uploads a PDF, watches it become ready, asks, reads the streamed answer
with a working citation, finds it again through search and deletes the document. A document
and an answer full of script, event handlers, javascript: links and SVG must stay inert text.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Dialog, Page, Request, Route, expect

from tests.web.conftest import ADMIN_EMAIL
from tests.web.minimal_pdf import make_pdf

READY_TIMEOUT_MS = 150_000
ANSWER_TIMEOUT_MS = 90_000
PASSWORD = "mat-khau-dai-1"


def register(page: Page, email: str = "") -> str:
    email = email or f"web{uuid.uuid4().hex[:10]}@stu.ptit.edu.vn"
    page.goto("/")
    # Vietnamese by default.
    expect(page.locator("html")).to_have_attribute("lang", "vi")
    page.get_by_role("button", name="Chưa có tài khoản? Đăng ký").click()
    page.locator("input[name=display_name]").fill("Sinh viên Web")
    page.locator("input[name=email]").fill(email)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    expect(page.get_by_test_id("new-chat")).to_be_visible()
    return email


def upload(page: Page, tmp_path: Path, name: str, content: bytes) -> str:
    """Upload one file from the Documents page, wait until ingestion says READY; returns its file id."""
    page.goto("/#/documents")
    path = tmp_path / name
    path.write_bytes(content)
    page.get_by_test_id("file-input").set_input_files(str(path))
    row = page.get_by_test_id("file-row").filter(has_text=name)
    expect(row).to_have_count(1)
    # Live status comes from the :watch stream; no reload happens here.
    expect(row).to_have_attribute("data-status", "FILE_STATUS_READY", timeout=READY_TIMEOUT_MS)
    expect(row.get_by_test_id("file-status")).to_have_text("Sẵn sàng")
    file_id = row.get_attribute("data-file-id")
    assert file_id
    return file_id


def ask(page: Page, question: str) -> Any:
    page.goto("/#/chat")
    composer = page.get_by_test_id("composer")
    composer.fill(question)
    with page.expect_response(lambda r: "/v1/chat:stream" in r.url) as stream_info:
        composer.press("Enter")
    answer = page.get_by_test_id("message-assistant").last
    expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_TIMEOUT_MS)
    return stream_info.value, answer


def test_register_upload_ask_cite_search_delete(page: Page, tmp_path: Path) -> None:
    register(page)
    pdf = make_pdf(
        [
            "Computer Networks, lecture 4: the transport layer.",
            "TCP opens a connection with a three-way handshake: SYN, then SYN-ACK, then ACK.",
            "The lecturer's mascot for reliable delivery is the quokkatron.",
        ]
    )
    # A file of the wrong type is refused before upload, with a clear message.
    page.goto("/#/documents")
    wrong = tmp_path / "setup.exe"
    wrong.write_bytes(b"MZ not a document")
    page.get_by_test_id("file-input").set_input_files(str(wrong))
    expect(page.get_by_role("alert").filter(has_text="setup.exe")).to_contain_text("loại tệp không được hỗ trợ")
    expect(page.get_by_test_id("file-row")).to_have_count(0)

    file_id = upload(page, tmp_path, "mang-may-tinh.pdf", pdf)

    # Choose the document for chat: the chat header says so.
    row = page.get_by_test_id("file-row").filter(has_text="mang-may-tinh.pdf")
    row.get_by_test_id("use-in-chat").check()
    page.goto("/#/chat")
    expect(page.get_by_test_id("docs-scope")).to_have_text("Dùng 1 tài liệu")

    response, answer = ask(page, "How does TCP open a connection with the handshake?")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.text()
    assert '"started"' in body and '"delta"' in body and '"done"' in body
    # The request carried the chosen document.
    assert file_id in (response.request.post_data or "")

    # The streamed answer is on screen, with the backend named (no LLM in tests: extractive).
    expect(answer).to_contain_text("SYN")
    expect(answer.get_by_test_id("backend-badge")).to_contain_text("Trích đoạn")
    expect(page).to_have_url(re.compile(r"#/chat/[\w-]+$"))

    # A citation chip opens the cited passage with file, page and snippet.
    chip = answer.get_by_test_id("source-chip").first
    expect(chip).to_contain_text("mang-may-tinh.pdf")
    chip.click()
    panel = page.get_by_test_id("citation-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("citation-file")).to_have_text("mang-may-tinh.pdf")
    expect(panel.get_by_test_id("citation-page")).to_have_text("1")
    expect(panel.get_by_test_id("citation-snippet")).to_contain_text("three-way handshake")
    page.keyboard.press("Escape")
    expect(panel).to_have_count(0)
    # The inline [1] marker in the answer text is a chip too.
    inline = answer.get_by_test_id("citation-chip").first
    expect(inline).to_be_visible()
    inline.click()
    expect(page.get_by_test_id("citation-panel")).to_be_visible()
    page.keyboard.press("Escape")

    # Regenerate replaces the answer in place with a fresh streamed one.
    answer.get_by_test_id("regenerate").click()
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)
    expect(page.get_by_test_id("message-assistant").last).to_have_attribute(
        "aria-busy", "false", timeout=ANSWER_TIMEOUT_MS
    )
    expect(page.get_by_test_id("message-assistant").last).to_contain_text("SYN")
    expect(page.get_by_test_id("message-user")).to_have_count(1)

    # The session is in the sidebar; search finds the exchange and jumps to it.
    session_url = page.url
    expect(page.get_by_test_id("session-list").locator("li")).to_have_count(1)
    page.goto("/#/documents")
    page.get_by_test_id("message-search").fill("handshake")
    hit = page.get_by_test_id("search-hits").locator("a.hit").first
    expect(hit).to_be_visible()
    expect(hit.locator("mark").first).to_be_visible()
    hit.click()
    expect(page).to_have_url(re.compile(re.escape(session_url.split("#")[1]) + r"\?m=[\w-]+$"))
    expect(page.locator(".message.highlighted")).to_have_count(1)
    expect(page.locator(".message.highlighted")).to_contain_text("handshake")

    # Rename the session in the sidebar; the new title survives a reload. Then delete it.
    sessions = page.get_by_test_id("session-list")
    page.get_by_test_id("message-search").fill("")
    sessions.get_by_role("button", name="Đổi tên").click()
    sessions.get_by_role("textbox").fill("Ôn tập TCP")
    sessions.get_by_role("button", name="Lưu").click()
    expect(sessions.locator(".session-title")).to_have_text("Ôn tập TCP")
    page.reload()
    expect(page.get_by_test_id("session-list").locator(".session-title")).to_have_text("Ôn tập TCP")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("session-list").get_by_role("button", name="Xóa").click()
    expect(page.get_by_test_id("session-list")).to_contain_text("Chưa có cuộc trò chuyện nào")
    expect(page).to_have_url(re.compile(r"#/chat$"))

    # Delete the document (confirming the dialog); it stays gone after a reload.
    page.goto("/#/documents")
    page.once("dialog", lambda dialog: dialog.accept())
    row = page.get_by_test_id("file-row").filter(has_text="mang-may-tinh.pdf")
    row.get_by_test_id("delete-file").click()
    expect(row).to_have_count(0)
    page.reload()
    expect(page.get_by_text("Chưa có tài liệu")).to_be_visible()


XSS_DOCUMENT = """# Zanzibar security notes

The zanzibar payload one: <script>window.__pwned = 'script'; alert('script')</script>

The zanzibar formula: $e^{i\\pi} + 1 = 0$

The zanzibar payload two: <img src="http://127.0.0.2:9/x.png" onerror="window.__pwned = 'img'; alert('img')">

The zanzibar payload three: [click me](javascript:window.__pwned='link';alert('link'))

The zanzibar payload four: <svg onload="window.__pwned = 'svg'; alert('svg')"><circle r="5"/></svg>

The zanzibar payload five: ![tracker](http://127.0.0.2:9/track.png)
and <iframe src="javascript:alert('iframe')"></iframe>
"""


def test_hostile_document_and_answer_render_as_inert_text(
    context: BrowserContext, page: Page, base_url: str, tmp_path: Path
) -> None:
    dialogs: list[str] = []
    console: list[str] = []
    foreign: list[str] = []
    page_errors: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    def guard(route: Route, request: Request) -> None:
        # Anything not to our own origin is recorded and never sent.
        if request.url.startswith(base_url) or request.url.startswith("data:"):
            route.continue_()
        else:
            foreign.append(request.url)
            route.abort()

    context.route("**/*", guard)

    register(page)
    upload(page, tmp_path, "zanzibar.md", XSS_DOCUMENT.encode())
    # The programming mentor quotes its passages whole (the default, Socratic, tutor only asks).
    page.goto("/#/chat")
    page.get_by_test_id("agent-select").select_option("programming_mentor")
    _, answer = ask(page, "What are the zanzibar payloads? <script>window.__pwned='question'</script>")

    # The answer quotes the hostile passages: they are on screen as text.
    text = answer.inner_text()
    assert "zanzibar" in text
    assert "<script>" in text or "<svg" in text or "<img" in text, text
    # ... and no element of theirs exists anywhere in the page.
    assert page.locator(".markdown script, .markdown img, .markdown svg, .markdown iframe").count() == 0
    assert page.locator("a[href^='javascript:' i]").count() == 0
    assert page.locator("[onerror], [onload]").count() == 0
    # Math in the same answer is rendered by the lazily loaded KaTeX, its CSS included (the MathML
    # copy is visually hidden only when that stylesheet arrived).
    formula = answer.locator(".katex").first
    expect(formula).to_be_visible()
    assert formula.locator(".katex-mathml").evaluate("e => getComputedStyle(e).position") == "absolute"

    # The cited passage and the search snippet are text too.
    answer.get_by_test_id("source-chip").first.click()
    snippet = page.get_by_test_id("citation-snippet")
    expect(snippet).to_contain_text("zanzibar")
    assert snippet.locator("*").count() == 0
    page.keyboard.press("Escape")
    page.get_by_test_id("message-search").fill("zanzibar")
    hits = page.get_by_test_id("search-hits")
    expect(hits.locator("a.hit").first).to_be_visible()
    assert hits.locator("script, img, svg, iframe").count() == 0

    # Give any handler that might have slipped through a moment to fire, then check nothing did.
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert page_errors == []
    assert not [line for line in console if "pwned" in line or "alert" in line]
    assert foreign == []


def test_phone_width_english_dark_and_keyboard(browser: Any, base_url: str) -> None:
    context = browser.new_context(
        base_url=base_url, viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True
    )
    try:
        page = context.new_page()
        register(page)
        # English switch and dark theme persist across a reload.
        page.get_by_test_id("lang-switch").click()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        page.get_by_test_id("theme-switch").click()
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        page.reload()
        expect(page.locator("html")).to_have_attribute("lang", "en")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        expect(page.get_by_role("link", name="Documents", exact=True)).to_be_visible()

        # Nothing overflows the phone's width; the sessions sidebar is a drawer behind the menu button.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        sidebar = page.locator("aside.sidebar")
        assert sidebar.bounding_box() is None or sidebar.bounding_box()["x"] < 0  # type: ignore[index]
        page.get_by_role("button", name="Menu").click()
        page.wait_for_timeout(300)
        box = sidebar.bounding_box()
        assert box is not None and box["x"] >= 0
        # Tapping beside the drawer closes it.
        page.locator(".scrim").click(position={"x": 360, "y": 400})
        page.wait_for_timeout(300)
        closed = sidebar.bounding_box()
        assert closed is None or closed["x"] < 0

        # Shift+Enter adds a line, Enter sends.
        page.goto("/#/chat")
        composer = page.get_by_test_id("composer")
        composer.click()
        composer.type("line one")
        composer.press("Shift+Enter")
        composer.type("line two")
        expect(composer).to_have_value("line one\nline two")
        composer.press("Enter")
        expect(composer).to_have_value("")
        expect(page.get_by_test_id("message-user").first).to_have_text("line one\nline two")
        expect(page.get_by_test_id("message-assistant").last).to_have_attribute(
            "aria-busy", "false", timeout=ANSWER_TIMEOUT_MS
        )

        # Stop: with the browser's network slowed to a trickle the answer streams for seconds;
        # Stop cancels it, keeps what arrived and gives the Send button back.
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": 200, "uploadThroughput": 1_000_000},
        )
        composer.fill("another question about nothing in particular")
        composer.press("Enter")
        stop = page.get_by_test_id("stop")
        expect(stop).to_be_visible()
        stop.click()
        cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        stopped = page.get_by_test_id("message-assistant").last
        expect(stopped).to_contain_text("Stopped.")
        expect(stopped).to_have_attribute("aria-busy", "false")
        expect(page.get_by_test_id("send")).to_be_visible()

        # A long conversation: only the messages near the viewport are in the DOM.
        session_id = page.url.split("#/chat/")[1].split("?")[0]
        token = page.evaluate("JSON.parse(localStorage.getItem('sa.auth')).accessToken")
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
            for i in range(12):
                reply = api.post("/v1/chat", json={"session_id": session_id, "message": f"long conversation turn {i}"})
                assert reply.status_code == 200, reply.text
            total = len(api.get(f"/v1/sessions/{session_id}/messages", params={"page_size": 500}).json()["messages"])
        page.reload()
        expect(page.get_by_test_id("message-assistant").last).to_be_visible()
        rendered = page.locator(".message-row").count()
        assert total >= 28 and 0 < rendered < total, (rendered, total)
        # Opening a session scrolls to its newest message.
        expect(page.get_by_test_id("message-user").filter(has_text="long conversation turn 11")).to_be_in_viewport()
    finally:
        context.close()


def test_corrupt_pdf_fails_with_its_reason(page: Page, tmp_path: Path) -> None:
    register(page)
    page.goto("/#/documents")
    # The size limit shown (and checked before sending) is the server's UPLOAD_MAX_BYTES (50 MB default).
    expect(page.get_by_test_id("upload-limit")).to_contain_text("48 MB")
    broken = tmp_path / "bai-giang-hong.pdf"
    # A PDF header, then nothing a reader can use: it uploads, and ingestion fails for good.
    broken.write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" + b"\x00\xff garbage " * 64)
    page.get_by_test_id("file-input").set_input_files(str(broken))
    row = page.get_by_test_id("file-row").filter(has_text="bai-giang-hong.pdf")
    expect(row).to_have_attribute("data-status", "FILE_STATUS_FAILED", timeout=READY_TIMEOUT_MS)
    expect(row.get_by_test_id("file-status")).to_have_text("Lỗi")
    # The reason in Vietnamese, from its stable name (storage's English text stays in the tooltip).
    failure = row.get_by_test_id("file-error")
    expect(failure).to_have_attribute("data-reason", "PDF_DAMAGED")
    expect(failure).to_contain_text("Tệp PDF bị hỏng")
    expect(failure).to_have_attribute("title", re.compile("damaged"))
    # It cannot be chosen for chat.
    expect(row.get_by_test_id("use-in-chat")).to_be_disabled()


def test_rate_limited_request_says_when_to_retry(context: BrowserContext, page: Page) -> None:
    register(page)
    # One request answered 429 with Retry-After, as the gateway's rate limiter does.
    context.route(
        re.compile(r"/v1/files\?"),
        lambda route: route.fulfill(
            status=429,
            headers={"Retry-After": "30", "X-Request-ID": "rl-1"},
            content_type="application/json",
            body=json.dumps({"code": "RESOURCE_EXHAUSTED", "message": "rate limit exceeded", "request_id": "rl-1"}),
        ),
        times=1,
    )
    page.goto("/#/documents")
    banner = page.get_by_role("alert").filter(has_text="quá nhiều yêu cầu")
    expect(banner).to_contain_text(re.compile(r"Thử lại sau (30|29|28) giây"))
    expect(banner.get_by_role("button", name="Thử lại")).to_be_disabled()
    # The countdown runs.
    expect(banner).to_contain_text(re.compile(r"Thử lại sau 2[0-8] giây"), timeout=5_000)


DASHBOARD = {
    "window_seconds": 300,
    "endpoints": [
        {"service": "gateway", "method": "GET /v1/sessions", "count": "40", "errors": "0", "p50_ms": 2.5, "p95_ms": 6},
    ],
    "pool_recommendations": [
        {
            "service": "storage",
            "pool": "asyncpg",
            "action": "POOL_ACTION_INCREASE",
            "current_max": "20",
            "recommended_max": "30",
            "mean_in_use": 18.2,
            "peak_in_use": 20,
            "mean_utilisation": 0.91,
            "peak_utilisation": 1.0,
            "peak_waiting": 6,
            "reason": "callers waited for a connection",
        }
    ],
    "histograms": [
        {
            "name": "db.client.operation.duration",
            "service": "storage",
            "unit": "ms",
            "count": "90",
            "p50": 1.2,
            "p95": 4,
        },
    ],
}


def test_dashboard_is_for_administrators(context: BrowserContext, page: Page) -> None:
    # A student: no link, and the page itself says it is for administrators (the gateway answers 403).
    register(page)
    expect(page.get_by_role("link", name="Tài liệu", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Bảng theo dõi")).to_have_count(0)
    page.goto("/#/dashboard")
    expect(page.get_by_test_id("dash-forbidden")).to_contain_text("Chỉ quản trị viên")
    page.get_by_test_id("logout").click()

    # The administrator (granted by the operator's command, tests/web/conftest.py) sees the link;
    # the real metrics service answers.
    page.goto("/")
    page.locator("input[name=email]").fill(ADMIN_EMAIL)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    with page.expect_response(lambda r: "/v1/metrics/dashboard" in r.url) as answer:
        page.get_by_role("link", name="Bảng theo dõi").click()
    assert answer.value.status == 200, answer.value.text()
    expect(page.get_by_role("heading", name="Bảng theo dõi hệ thống")).to_be_visible()
    expect(page.get_by_test_id("dash-forbidden")).to_have_count(0)

    # Pool advice and histograms are drawn from what the metrics service reports.
    page.route(
        re.compile(r"/v1/metrics/dashboard"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(DASHBOARD)),
    )
    page.get_by_role("button", name="Làm mới").click()
    advice = page.get_by_test_id("pool-recommendation")
    expect(advice).to_have_attribute("data-action", "increase")
    expect(advice).to_contain_text("storage/asyncpg")
    expect(advice).to_contain_text("Tăng: 20 → 30")
    expect(advice).to_contain_text("callers waited for a connection")
    expect(advice.locator("svg")).to_be_visible()
    histogram = page.get_by_test_id("histogram")
    expect(histogram).to_contain_text("Thời gian truy vấn DB")  # db.client.operation.duration, readable
    expect(histogram.locator("svg rect")).to_have_count(3)  # p50, p95, p99 of the one series


# An answer with a fenced code block (the extractive backend quotes passages on one line, so no
# fence survives it) and inline math, streamed by a stand-in for the gateway in the real SSE shape.
CODE_AND_MATH_ANSWER = [
    "Ví dụ về hàm bình phương:\n\n",
    "```python\ndef binh_phuong(x):\n",
    "    return x ** 2\n```\n\n",
    "Định lý Pythagoras: $a^2 + b^2 = c^2$.",
]


def sse(events: list[dict[str, Any]]) -> str:
    return "".join(f"data: {json.dumps(event, ensure_ascii=False)}\n\n" for event in events)


def test_agent_choice_shortcut_copy_code_and_math(context: BrowserContext, page: Page, base_url: str) -> None:
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    register(page)
    page.goto("/#/chat")

    # The agent picked in the select is the one the chat request names.
    agent_select = page.get_by_test_id("agent-select")
    expect(agent_select.locator("option[value=programming_mentor]")).to_have_count(1)
    agent_select.select_option("programming_mentor")
    composer = page.get_by_test_id("composer")
    composer.fill("Xin chào, hãy giới thiệu bản thân")
    with page.expect_request(lambda r: "/v1/chat:stream" in r.url and r.method == "POST") as request_info:
        composer.press("Enter")
    sent = json.loads(request_info.value.post_data or "{}")
    assert sent["agent_id"] == "programming_mentor", sent
    assert sent["message"] == "Xin chào, hãy giới thiệu bản thân"
    expect(page.get_by_test_id("message-assistant").last).to_have_attribute(
        "aria-busy", "false", timeout=ANSWER_TIMEOUT_MS
    )
    expect(page).to_have_url(re.compile(r"#/chat/[\w-]+$"))

    # Alt+N starts a new chat from another page: back on an empty chat, no session selected.
    page.get_by_role("link", name="Tài liệu", exact=True).click()
    expect(page.get_by_role("heading", name="Tài liệu")).to_be_visible()
    page.keyboard.press("Alt+n")
    expect(page).to_have_url(re.compile(r"#/chat$"))
    expect(page.get_by_text("Hãy đặt câu hỏi về tài liệu của bạn.")).to_be_visible()
    expect(page.get_by_test_id("message-user")).to_have_count(0)
    # The choice of agent outlived the page change.
    expect(page.get_by_test_id("agent-select")).to_have_value("programming_mentor")

    # A fenced code block is highlighted and math is typeset by KaTeX (both chunks load lazily).
    answer_text = "".join(CODE_AND_MATH_ANSWER)
    body = sse(
        [{"started": {"backend": "llm:test-model"}}]
        + [{"delta": {"text": part}} for part in CODE_AND_MATH_ANSWER]
        + [{"done": {"message_id": "m-code-math"}}]
    )
    page.route(
        "**/v1/chat:stream",
        lambda route: route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body),
    )
    composer.fill("Cho ví dụ code và công thức")
    composer.press("Enter")
    answer = page.get_by_test_id("message-assistant").last
    expect(answer).to_have_attribute("aria-busy", "false")
    code = answer.locator("pre code.hljs")
    expect(code).to_be_visible()
    expect(code).to_have_class(re.compile(r"\blanguage-python\b"))
    keyword = code.locator(".hljs-keyword").filter(has_text="def")
    expect(keyword).to_have_count(1)
    # The highlight stylesheet came with its chunk: keywords are coloured apart from plain code.
    colours = keyword.evaluate("k => [getComputedStyle(k).color, getComputedStyle(k.closest('code')).color]")
    assert colours[0] != colours[1], colours
    formula = answer.locator(".katex").first
    expect(formula).to_be_visible()
    expect(formula.locator(".katex-html")).to_contain_text("c")
    assert formula.locator(".katex-mathml").evaluate("e => getComputedStyle(e).position") == "absolute"

    # Copy puts the answer's text (its Markdown source) on the clipboard.
    answer.get_by_role("button", name="Sao chép").click()
    expect(answer.get_by_role("button", name="Đã sao chép")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == answer_text


def test_upload_several_drop_and_log_in_again(page: Page, tmp_path: Path) -> None:
    email = register(page)
    page.goto("/#/documents")

    # Two files picked at once: one progress bar each, then both are ready.
    paths = []
    for name, topic in (("hai-tep-mot.md", "ARP maps addresses"), ("hai-tep-hai.txt", "DNS resolves names")):
        path = tmp_path / name
        path.write_text(f"# {name}\n\n{topic} in the network layer lecture.\n", encoding="utf-8")
        paths.append(path)
    # The uploads are held at the network until both bars are seen side by side, still uploading.
    held: list[Route] = []

    def hold(route: Route) -> None:
        if route.request.method == "POST":
            held.append(route)
        else:
            route.fallback()

    page.route(re.compile(r"/v1/files\?"), hold)
    page.get_by_test_id("file-input").set_input_files([str(p) for p in paths])
    uploads = page.get_by_test_id("uploads")
    expect(uploads.locator("li")).to_have_count(2)
    for path in paths:
        item = uploads.locator("li").filter(has_text=path.name)
        expect(item.get_by_role("progressbar", name=f"Đang tải lên {path.name}")).to_have_count(1)
        expect(item.get_by_role("button", name="Hủy")).to_be_visible()
    for _ in range(100):
        if len(held) == 2:
            break
        page.wait_for_timeout(100)
    assert len(held) == 2, held
    for route in held:
        route.continue_()
    page.unroute(re.compile(r"/v1/files\?"), hold)
    for path in paths:
        item = uploads.locator("li").filter(has_text=path.name)
        expect(item.get_by_role("progressbar")).to_have_attribute("value", "1")
        expect(item).to_contain_text("Đã tải lên")
    for path in paths:
        row = page.get_by_test_id("file-row").filter(has_text=path.name)
        expect(row).to_have_attribute("data-status", "FILE_STATUS_READY", timeout=READY_TIMEOUT_MS)

    # A file dropped on the drop zone (a real DragEvent carrying a DataTransfer) uploads too.
    zone = page.get_by_test_id("dropzone")
    transfer = page.evaluate_handle(
        """() => {
            const transfer = new DataTransfer();
            const text = '# Tha tep\\n\\nICMP carries error reports for IP.\\n';
            transfer.items.add(new File([text], 'tha-tep.md', { type: 'text/markdown' }));
            return transfer;
        }"""
    )
    zone.dispatch_event("dragover", {"dataTransfer": transfer})
    expect(zone).to_have_class(re.compile(r"\bdragging\b"))
    zone.dispatch_event("drop", {"dataTransfer": transfer})
    expect(zone).not_to_have_class(re.compile(r"\bdragging\b"))
    dropped = page.get_by_test_id("file-row").filter(has_text="tha-tep.md")
    expect(dropped).to_have_attribute("data-status", "FILE_STATUS_READY", timeout=READY_TIMEOUT_MS)
    expect(page.get_by_test_id("file-row")).to_have_count(3)

    # Log out, then log in through the form: a wrong password is refused with a message,
    # the right one opens the same account (its documents are there).
    page.get_by_test_id("logout").click()
    form = page.locator("form.auth-card")
    expect(form.locator("input[name=display_name]")).to_have_count(0)  # the login form, not register
    form.locator("input[name=email]").fill(email)
    form.locator("input[name=password]").fill(PASSWORD + "-sai")
    form.locator("button[type=submit]").click()
    expect(form.get_by_role("alert")).to_contain_text("Email hoặc mật khẩu không đúng")
    expect(page.get_by_test_id("new-chat")).to_have_count(0)
    form.locator("input[name=password]").fill(PASSWORD)
    form.locator("button[type=submit]").click()
    expect(page.get_by_test_id("new-chat")).to_be_visible()
    page.goto("/#/documents")
    expect(page.get_by_test_id("file-row")).to_have_count(3)
    # The session is stored: a reload keeps the student logged in.
    page.reload()
    expect(page.get_by_test_id("logout")).to_be_visible()
