"""A semester of material in real Chromium: the documents page (search, sort, filters, bulk delete,
a merged re-upload), history search that finds what was said, a dashboard people can read, and
axe-core's check of every page (no serious or critical finding)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from playwright.sync_api import Dialog, Page, Route, expect

from tests.web.conftest import ADMIN_EMAIL, WEB_DIR
from tests.web.test_browser import ANSWER_TIMEOUT_MS, PASSWORD, READY_TIMEOUT_MS, ask, register

AXE = WEB_DIR / "node_modules" / "axe-core" / "axe.min.js"


def axe_findings(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page as it is now (WCAG 2.x A and AA rules)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        # Evaluated through the DevTools protocol, so the app's CSP (script-src 'self') does not apply.
        page.evaluate(AXE.read_text())
    found: list[dict[str, Any]] = page.evaluate(
        """async () => {
            const result = await window.axe.run(document, {
                runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
                resultTypes: ['violations'],
            });
            return result.violations
                .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                               nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ') + ': ' + n.failureSummary) }));
        }"""
    )
    return found


def assert_accessible(page: Page, where: str) -> None:
    findings = axe_findings(page)
    assert findings == [], f"{where}: " + json.dumps(findings, ensure_ascii=False, indent=1)


def accept_dialogs(page: Page) -> list[str]:
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)
    return seen


def put_files(page: Page, tmp_path: Path, files: dict[str, bytes]) -> None:
    paths = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        paths.append(str(path))
    page.get_by_test_id("file-input").set_input_files(paths)


def names(page: Page) -> list[str]:
    return page.get_by_test_id("file-row").locator(".file-name").all_inner_texts()


SEMESTER = {
    "Bài giảng Mạng máy tính.md": "# Mạng máy tính\n\nTCP bắt tay ba bước trước khi truyền dữ liệu.\n".encode(),
    "bai-tap-ctdl.txt": "Bài tập cấu trúc dữ liệu: cây nhị phân tìm kiếm và bảng băm.\n".encode(),
    "ghi-chu-he-dieu-hanh.md": "# Hệ điều hành\n\nLập lịch tiến trình theo vòng tròn (round robin).\n".encode(),
    # Not a PDF inside: ingestion fails, so the status filter has a failed file to find.
    "de-thi-hong.pdf": b"%PDF-1.4\nthis is not really a pdf\n%%EOF\n",
}


def test_documents_page_searches_sorts_filters_and_deletes_in_bulk(page: Page, tmp_path: Path) -> None:
    dialogs = accept_dialogs(page)
    register(page)
    page.goto("/#/documents")
    assert_accessible(page, "documents, empty")
    put_files(page, tmp_path, SEMESTER)
    rows = page.get_by_test_id("file-row")
    expect(rows).to_have_count(4)
    for name in SEMESTER:
        status = "FILE_STATUS_FAILED" if name.endswith(".pdf") else "FILE_STATUS_READY"
        expect(rows.filter(has_text=name)).to_have_attribute("data-status", status, timeout=READY_TIMEOUT_MS)
    assert_accessible(page, "documents, four files")

    # "Use in chat" has a visible label on every row.
    expect(rows.first.locator(".use-in-chat")).to_contain_text("Dùng khi hỏi")
    expect(rows.first.get_by_role("checkbox", name=re.compile("^Dùng khi hỏi"))).to_be_visible()

    # Search by name, without diacritics.
    search = page.get_by_test_id("doc-search")
    search.fill("bai giang mang")
    assert names(page) == ["Bài giảng Mạng máy tính.md"]
    expect(page.get_by_test_id("doc-count")).to_have_text("Hiển thị 1/4 tài liệu")
    search.fill("không có tệp này")
    expect(page.get_by_test_id("doc-no-match")).to_be_visible()
    search.fill("")

    # Sort by name and by size; filter by type and by status.
    page.get_by_test_id("doc-sort").select_option("name")
    assert names(page) == [
        "Bài giảng Mạng máy tính.md",
        "bai-tap-ctdl.txt",
        "de-thi-hong.pdf",
        "ghi-chu-he-dieu-hanh.md",
    ]
    page.get_by_test_id("doc-sort").select_option("largest")
    sizes = [len(SEMESTER[n]) for n in names(page)]
    assert sizes == sorted(sizes, reverse=True)
    page.get_by_test_id("doc-kind-filter").select_option("md")
    assert sorted(names(page)) == ["Bài giảng Mạng máy tính.md", "ghi-chu-he-dieu-hanh.md"]
    page.get_by_test_id("doc-kind-filter").select_option("all")
    page.get_by_test_id("doc-status-filter").select_option("failed")
    assert names(page) == ["de-thi-hong.pdf"]
    page.get_by_test_id("doc-status-filter").select_option("all")
    assert_accessible(page, "documents, filtered")

    # The same bytes again, under another name: merged into the file already here, said so.
    again = tmp_path / "again"
    again.mkdir()
    put_files(page, again, {"mang (ban sao).md": SEMESTER["Bài giảng Mạng máy tính.md"]})
    expect(page.get_by_test_id("uploads")).to_contain_text("gộp vào “Bài giảng Mạng máy tính.md”")
    expect(rows).to_have_count(4)
    expect(rows.filter(has_text="Bài giảng Mạng máy tính.md")).to_have_attribute("data-merged", "true")
    expect(rows.filter(has_text="mang (ban sao).md")).to_have_count(0)

    # Bulk delete: three chosen, one of them refused by the server, which is reported by name.
    page.get_by_test_id("doc-sort").select_option("name")
    failing = rows.filter(has_text="de-thi-hong.pdf").get_attribute("data-file-id")

    def refuse(route: Route) -> None:
        if route.request.method == "DELETE":
            route.fulfill(status=503, content_type="application/json", body=json.dumps({"code": 14, "message": "down"}))
        else:
            route.continue_()

    page.route(re.compile(rf"/v1/files/{failing}$"), refuse)
    for name in ("bai-tap-ctdl.txt", "de-thi-hong.pdf", "ghi-chu-he-dieu-hanh.md"):
        rows.filter(has_text=name).get_by_test_id("select-file").check()
    delete = page.get_by_test_id("bulk-delete")
    expect(delete).to_have_text("Xóa 3 tài liệu đã chọn")
    delete.click()
    result = page.get_by_test_id("bulk-result")
    expect(result).to_contain_text("Đã xóa 2 tài liệu; 1 tài liệu chưa xóa được: de-thi-hong.pdf")
    assert dialogs[-1] == "Xóa 3 tài liệu đã chọn? Không thể hoàn tác."
    assert names(page) == ["Bài giảng Mạng máy tính.md", "de-thi-hong.pdf"]
    # The failed one stays chosen, so trying again is one click; now it goes.
    page.unroute(re.compile(rf"/v1/files/{failing}$"))
    expect(delete).to_have_text("Xóa 1 tài liệu đã chọn")
    delete.click()
    expect(result).to_contain_text("Đã xóa 1 tài liệu.")
    assert names(page) == ["Bài giảng Mạng máy tính.md"]
    # Select all shown, after a reload: the server agrees with what the page shows.
    page.reload()
    expect(rows).to_have_count(1)
    page.get_by_test_id("select-all").check()
    expect(delete).to_have_text("Xóa 1 tài liệu đã chọn")


def test_history_search_finds_what_was_said_as_text(page: Page, tmp_path: Path) -> None:
    register(page)
    page.goto("/#/documents")
    notes = "# Lập lịch\n\nThuật toán **round robin** chia CPU thành các lượng tử thời gian bằng nhau.\n"
    put_files(page, tmp_path, {"lap-lich.md": notes.encode()})
    expect(page.get_by_test_id("file-row")).to_have_attribute(
        "data-status", "FILE_STATUS_READY", timeout=READY_TIMEOUT_MS
    )
    _, answer = ask(page, "Giải thích thuật toán round robin trong lập lịch")
    # Whatever the default agent makes of it without an LLM, it cites the file.
    expect(answer).to_contain_text("lap-lich.md", timeout=ANSWER_TIMEOUT_MS)
    assert_accessible(page, "chat, with an answer")
    answer.get_by_test_id("source-chip").first.click()
    expect(page.get_by_test_id("citation-panel")).to_be_visible()
    assert_accessible(page, "chat, citation open")
    page.keyboard.press("Escape")

    search = page.get_by_test_id("message-search")
    hits = page.get_by_test_id("search-hits")
    # Words of the no-LLM notice and the quote's attribution find nothing: they are not indexed.
    search.fill("trích nguyên văn")
    expect(hits).to_contain_text("Không tìm thấy.")
    # The student's own question leads, as plain text with the match marked.
    search.fill("round robin")
    first = hits.locator("a.hit").first
    expect(first.get_by_test_id("hit-snippet")).to_contain_text("Bạn: Giải thích thuật toán round robin")
    expect(first.locator("mark").first).to_have_text(re.compile("round", re.IGNORECASE))
    for snippet in hits.get_by_test_id("hit-snippet").all_inner_texts():
        assert "**" not in snippet and "> " not in snippet and not re.search(r"\[\d\]", snippet), snippet
    assert_accessible(page, "chat, search results")


DASHBOARD = {
    "window_seconds": 300,
    "endpoints": [
        {
            "service": "storage",
            "method": "SearchChunks",
            "count": "40",
            "errors": "2",
            "p50_ms": 2.5,
            "p95_ms": 6,
            "p99_ms": 9,
        },
    ],
    "gauges": [
        {"name": "process.memory.rss", "service": "chat", "unit": "By", "value": 157286400, "kind": "gauge"},
        {"name": "process.cpu.percent", "service": "chat", "unit": "%", "value": 12.5, "kind": "gauge"},
        {
            "name": "chat.cache.hit_ratio",
            "service": "chat",
            "unit": "1",
            "value": 0.75,
            "kind": "ratio",
            "attributes": {"layer": "local"},
        },
    ],
    "histograms": [
        {
            "name": "db.client.operation.duration",
            "service": "storage",
            "unit": "s",
            "count": "90",
            "p50": 0.0012,
            "p95": 0.004,
            "p99": 0.008,
        },
    ],
    "timeline": [
        {"start": "2026-12-03T10:00:00Z", "seconds": 10, "count": str(n), "errors": "0", "per_second": n / 10}
        for n in (0, 5, 20, 0)
    ],
}
ALERTS = {
    "alerts": [
        {
            "name": "pool_utilisation",
            "code": "pool_utilisation",
            "state": "ALERT_STATE_FIRING",
            "value": 0.9,
            "threshold": 0.85,
            "description": "connection pool in use / max",
            "args": {"service": "storage", "pool": "main", "in_use": "18.0", "max": "20"},
        },
        {
            "name": "error_rate",
            "code": "error_rate",
            "state": "ALERT_STATE_OK",
            "value": 0.0,
            "threshold": 0.05,
            "description": "calls failed",
        },
    ]
}


def sign_in_admin(page: Page) -> None:
    """The administrator of this run: registered by whichever test came first, then logged in."""
    page.goto("/")
    page.get_by_role("button", name="Chưa có tài khoản? Đăng ký").click()
    page.locator("input[name=display_name]").fill("Quản trị")
    page.locator("input[name=email]").fill(ADMIN_EMAIL)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("form button[type=submit]").click()
    # Already registered (the email is taken): the form says so, whatever its words.
    taken = page.locator("form").get_by_role("alert")
    expect(page.get_by_test_id("new-chat").or_(taken)).to_be_visible()
    if taken.count():
        page.get_by_role("button", name="Đã có tài khoản? Đăng nhập").click()
        page.locator("input[name=email]").fill(ADMIN_EMAIL)
        page.locator("input[name=password]").fill(PASSWORD)
        page.locator("form button[type=submit]").click()
    expect(page.get_by_test_id("new-chat")).to_be_visible()


def test_dashboard_reads_as_text_and_every_page_passes_axe(page: Page) -> None:
    # The sign-in pages first.
    page.goto("/")
    expect(page.locator("form button[type=submit]")).to_be_visible()
    assert_accessible(page, "auth, log in")
    # The check itself can fail: a field without a label is a critical finding.
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<input id=axe-probe type=text>')")
    assert "label" in [f["id"] for f in axe_findings(page)]
    page.evaluate("document.getElementById('axe-probe').remove()")
    page.get_by_role("button", name="Chưa có tài khoản? Đăng ký").click()
    assert_accessible(page, "auth, register")
    page.get_by_role("button", name="Đã có tài khoản? Đăng nhập").click()
    page.locator("input[name=email]").fill(f"sai{uuid.uuid4().hex[:6]}@stu.ptit.edu.vn")
    page.locator("input[name=password]").fill("mat-khau-sai-1")
    page.locator("form button[type=submit]").click()
    expect(page.get_by_role("alert")).to_be_visible()
    assert_accessible(page, "auth, wrong password")

    sign_in_admin(page)
    page.goto("/#/chat")
    expect(page.get_by_test_id("composer")).to_be_visible()
    assert_accessible(page, "chat, empty")
    # The Study page with no deck yet (tests/web/test_study.py checks it with decks and cards).
    page.goto("/#/study")
    expect(page.get_by_test_id("deck-form")).to_be_visible()
    assert_accessible(page, "study, no deck")

    # The real metrics service: the timeline is drawn at once from the window it holds, and the
    # alerts are in Vietnamese from their codes.
    with page.expect_response(lambda r: "/v1/metrics/dashboard" in r.url):
        page.goto("/#/dashboard")
    timeline = page.get_by_test_id("timeline")
    expect(timeline.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"mốc thời gian"))
    expect(timeline).not_to_contain_text("Chưa có dữ liệu")
    alerts = page.get_by_test_id("alert")
    expect(alerts).to_have_count(3)
    expect(page.get_by_test_id("alerts")).to_contain_text("Tỉ lệ lỗi")
    expect(page.get_by_test_id("alerts")).to_contain_text("Thời gian phản hồi p95")
    assert_accessible(page, "dashboard, live")

    # Figures with units and readable names (the metrics service's JSON as it would send it).
    page.route(
        re.compile(r"/v1/metrics/dashboard"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(DASHBOARD)),
    )
    page.route(
        re.compile(r"/v1/metrics/alerts"),
        lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(ALERTS)),
    )
    page.get_by_role("button", name="Làm mới").click()
    process = page.get_by_test_id("process-gauges")
    expect(process).to_contain_text("150 MiB")
    expect(process).to_contain_text("12,5 %")
    expect(process.get_by_role("img")).to_have_attribute("aria-label", re.compile(r"Bộ nhớ \(RSS\) · chat \(150 MiB\)"))
    expect(page.get_by_test_id("histogram")).to_contain_text("Thời gian truy vấn DB")
    expect(page.get_by_test_id("histogram")).to_contain_text("8 ms")
    expect(page.locator("body")).not_to_contain_text("157286400")
    firing = page.locator("[data-testid=alert][data-code=pool_utilisation]")
    expect(firing).to_contain_text("Đang báo")
    expect(firing).to_contain_text("Mức dùng pool kết nối: 90 % (ngưỡng 85 %)")
    expect(firing).to_contain_text("pool main của storage: trung bình 18.0/20 kết nối đang dùng")
    # Each chart's figures open as a table.
    table = process.get_by_test_id("chart-table")
    table.locator("summary").click()
    expect(table.get_by_role("row", name=re.compile("Bộ nhớ"))).to_contain_text("150 MiB")
    assert_accessible(page, "dashboard, figures")

    # In English too.
    page.get_by_role("button", name="English").click()
    expect(firing).to_contain_text("Firing Connection pool use: 90 % (threshold 85 %)")
    expect(firing).to_contain_text("storage pool main: 18.0 of 20 connections in use on average")
    assert_accessible(page, "dashboard, English")
