"""Checking a citation in real Chromium against the real mesh: a citation opens the source viewer at
its place (a PDF's page rendered by pdf.js with the passage marked in its text layer, a PPTX slide's
text), citations say page or slide in the UI's language, a download gives back the same bytes, and
another student can neither list nor download the file."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect

from tests.storage.documents import make_docx, make_pdf, make_pptx
from tests.web.test_browser import ask, register, upload

PDF_PAGES = [
    "Computer Networks, lecture 4: the transport layer and its services.",
    "The quokkatron handshake opens a connection with SYN, SYN-ACK and ACK.",
    "Congestion control halves the window when a segment is lost.",
]
SLIDES = [
    ("Giới thiệu môn học", "Môn Mạng máy tính gồm mười bốn buổi học."),
    ("Tầng liên kết", "Giao thức ARP ánh xạ địa chỉ IP sang địa chỉ MAC."),
    ("Định tuyến", "Thuật toán Dijkstra zorblatt tìm đường đi ngắn nhất giữa các bộ định tuyến."),
]


def watch_csp(page: Page) -> list[str]:
    """Every Content-Security-Policy complaint the page logs (a blocked worker, script or style)."""
    found: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            found.append(message.text)

    page.on("console", on_console)
    return found


def access_token(page: Page) -> str:
    stored = page.evaluate("localStorage.getItem('sa.auth')")
    token: str = json.loads(stored)["accessToken"]
    return token


def test_pdf_citation_opens_the_cited_page_with_the_passage_marked(page: Page, tmp_path: Path, base_url: str) -> None:
    csp_complaints = watch_csp(page)
    workers: list[str] = []
    page.on("worker", lambda worker: workers.append(worker.url))
    register(page)
    file_id = upload(page, tmp_path, "mang-may-tinh.pdf", make_pdf(PDF_PAGES))

    _, answer = ask(page, "How does the quokkatron handshake open a connection?")
    # The chip says where, in Vietnamese: "trang 2", not "page 2".
    chip = answer.get_by_test_id("source-chip").filter(has_text="trang 2").first
    expect(chip).to_contain_text("mang-may-tinh.pdf · trang 2")
    chip.click()
    panel = page.get_by_test_id("citation-panel")
    expect(panel.get_by_test_id("citation-page-word")).to_have_text("Trang")
    expect(panel.get_by_test_id("citation-page")).to_have_text("2")
    panel.get_by_test_id("citation-open").click()

    # The viewer opens at the cited page, rendered by pdf.js, the passage marked in its text layer.
    expect(page).to_have_url(re.compile(rf"#/view/{file_id}\?chunk=[\w-]+&page=2$"))
    viewer = page.get_by_test_id("viewer")
    expect(viewer).to_have_attribute("data-format", "pdf")
    expect(viewer.get_by_test_id("viewer-location")).to_have_text("trang 2")
    label = viewer.get_by_test_id("pdf-page-label")
    expect(label).to_have_attribute("data-page", "2")
    expect(label).to_have_text("Trang 2 / 3")
    cited = viewer.locator(".textLayer .cited")
    expect(cited.first).to_be_visible()
    expect(viewer.locator(".textLayer")).to_contain_text("quokkatron")
    assert "quokkatron" in " ".join(cited.all_text_contents())
    # Something was drawn: the canvas is not blank.
    drawn = page.evaluate(
        """() => {
            const canvas = document.querySelector('.pdf-page canvas');
            const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            for (let i = 0; i < pixels.length; i += 4) if (pixels[i] < 128) return true;
            return false;
        }"""
    )
    assert drawn

    # Page navigation: page 1 has no mark (the passage is on page 2), and back again.
    viewer.get_by_test_id("pdf-prev").click()
    expect(label).to_have_attribute("data-page", "1")
    expect(viewer.locator(".textLayer")).to_contain_text("transport layer")
    expect(viewer.locator(".textLayer .cited")).to_have_count(0)
    expect(viewer.get_by_test_id("pdf-prev")).to_be_disabled()
    viewer.get_by_test_id("pdf-next").click()
    expect(label).to_have_attribute("data-page", "2")
    expect(viewer.locator(".textLayer .cited").first).to_be_visible()

    # pdf.js ran its worker from the gateway itself, within the CSP, nothing blocked.
    assert workers and all(url.startswith(f"{base_url}/assets/") for url in workers), workers
    assert csp_complaints == []
    worker = page.request.get(workers[0])
    assert worker.headers["content-type"].startswith("text/javascript")
    csp = page.request.get("/").headers["content-security-policy"]
    assert "worker-src 'self'" in csp and "unsafe-eval" not in csp and "blob:" not in csp


def test_pptx_citation_says_slide_opens_at_its_text_and_downloads_the_same_bytes(page: Page, tmp_path: Path) -> None:
    register(page)
    pptx = make_pptx(SLIDES)
    file_id = upload(page, tmp_path, "bai-giang.pptx", pptx)

    _, answer = ask(page, "Thuật toán Dijkstra zorblatt tìm gì?")
    chip = answer.get_by_test_id("source-chip").filter(has_text="trang chiếu 3").first
    expect(chip).to_contain_text("bai-giang.pptx · trang chiếu 3")
    expect(answer.get_by_test_id("source-chip").filter(has_text=re.compile(r"· trang \d"))).to_have_count(0)
    chip.click()
    panel = page.get_by_test_id("citation-panel")
    expect(panel.get_by_test_id("citation-page-word")).to_have_text("Trang chiếu")
    expect(panel.get_by_test_id("citation-page")).to_have_text("3")
    panel.get_by_test_id("citation-open").click()

    # The slides' text in order, the cited slide's passage marked, its slide number and title shown.
    expect(page).to_have_url(re.compile(rf"#/view/{file_id}\?chunk=[\w-]+&page=3$"))
    viewer = page.get_by_test_id("viewer")
    expect(viewer).to_have_attribute("data-format", "pptx")
    expect(viewer.get_by_test_id("viewer-location")).to_have_text("trang chiếu 3")
    cited = viewer.get_by_test_id("cited-passage")
    expect(cited).to_have_attribute("data-page", "3")
    expect(cited.locator("mark")).to_contain_text("Dijkstra zorblatt")
    expect(cited.get_by_test_id("passage-place")).to_have_text("Trang chiếu 3 · Định tuyến")
    expect(cited).to_be_in_viewport()
    places = viewer.get_by_test_id("passage-place")
    expect(places.first).to_have_text("Trang chiếu 1 · Giới thiệu môn học")
    expect(viewer.get_by_test_id("text-view")).to_contain_text("Giao thức ARP")

    # The download button saves the original file, byte for byte, under its own name.
    with page.expect_download() as download_info:
        viewer.get_by_test_id("viewer-download").click()
    download = download_info.value
    assert download.suggested_filename == "bai-giang.pptx"
    assert Path(download.path()).read_bytes() == pptx

    # In English the same citation says "slide 3".
    page.get_by_test_id("lang-switch").click()
    expect(viewer.get_by_test_id("viewer-location")).to_have_text("slide 3")
    expect(cited.get_by_test_id("passage-place")).to_have_text("Slide 3 · Định tuyến")


def filler(section: str, count: int) -> list[tuple[str, str]]:
    return [("p", f"Đoạn {n} của phần {section} nhắc lại kiến thức nền tảng số {n} của môn học.") for n in range(count)]


def test_docx_citation_shows_its_heading_path_and_the_text_around_it_page_by_page(page: Page, tmp_path: Path) -> None:
    # Long enough for several pages of passages: the cited one is deep inside.
    blocks = [
        ("h1", "Chương 1"),
        ("h2", "Ngăn xếp"),
        *filler("ngăn xếp", 250),
        ("h1", "Chương 2"),
        ("h2", "Hàng đợi"),
        ("p", "Hàng đợi quetzalbyte phục vụ phần tử đến trước, vào trước ra trước."),
        *filler("hàng đợi", 250),
    ]
    register(page)
    file_id = upload(page, tmp_path, "ghi-chu.docx", make_docx(blocks))

    _, answer = ask(page, "Hàng đợi quetzalbyte phục vụ phần tử nào?")
    chip = answer.get_by_test_id("source-chip").filter(has_text="Chương 2 > Hàng đợi").first
    expect(chip).to_contain_text("ghi-chu.docx · Chương 2 > Hàng đợi")
    chip.click()
    panel = page.get_by_test_id("citation-panel")
    expect(panel.get_by_test_id("citation-page")).to_have_count(0)  # a Word file has no pages
    panel.get_by_test_id("citation-open").click()

    expect(page).to_have_url(re.compile(rf"#/view/{file_id}\?chunk=[\w-]+$"))
    viewer = page.get_by_test_id("viewer")
    expect(viewer).to_have_attribute("data-format", "docx")
    expect(viewer.get_by_test_id("viewer-location")).to_have_text("Chương 2 > Hàng đợi")
    cited = viewer.get_by_test_id("cited-passage")
    expect(cited.locator("mark")).to_contain_text("quetzalbyte")
    expect(cited.get_by_test_id("passage-place")).to_have_text("Chương 2 > Hàng đợi")
    expect(cited).to_be_in_viewport()
    # Only a page of passages around it is loaded; earlier ones come on request, in order.
    text = viewer.get_by_test_id("text-view")
    expect(text).not_to_contain_text("Đoạn 0 của phần ngăn xếp")
    while viewer.get_by_test_id("viewer-earlier").count():
        before = viewer.locator("section.passage").count()
        viewer.get_by_test_id("viewer-earlier").click()
        expect(viewer.locator("section.passage")).not_to_have_count(before)
    expect(text).to_contain_text("Đoạn 0 của phần ngăn xếp")
    # Each section's heading path heads its first passage once: "Chương 1" alone, then its sub-section.
    places = viewer.get_by_test_id("passage-place")
    expect(places.first).to_have_text("Chương 1")
    expect(places.filter(has_text=re.compile(r"^Chương 1 > Ngăn xếp$"))).to_have_count(1)
    expect(cited).to_have_count(1)


def test_another_student_can_neither_list_nor_download_the_file(
    context: BrowserContext, page: Page, tmp_path: Path, base_url: str
) -> None:
    register(page)
    content = make_pdf(["Private notes of student A about the zebracorn protocol."])
    file_id = upload(page, tmp_path, "rieng.pdf", content)
    owner = {"Authorization": f"Bearer {access_token(page)}"}
    assert page.request.get(f"/v1/files/{file_id}:download", headers=owner).body() == content
    listed = page.request.get(f"/v1/files/{file_id}/chunks", headers=owner)
    assert listed.ok and "zebracorn" in listed.text()

    assert context.browser is not None
    other = context.browser.new_context(base_url=base_url, locale="vi-VN")
    try:
        stranger = other.new_page()
        register(stranger)
        headers = {"Authorization": f"Bearer {access_token(stranger)}"}
        for path in (f"/v1/files/{file_id}:download", f"/v1/files/{file_id}/chunks"):
            reply = stranger.request.get(path, headers=headers)
            assert reply.status == 404, path
            assert "zebracorn" not in reply.text() and reply.json()["code"] == "NOT_FOUND"
        # Opened in the viewer, the file is simply not there: an error, none of its content.
        stranger.goto(f"/#/view/{file_id}?page=1")
        expect(stranger.get_by_test_id("viewer").get_by_role("alert")).to_be_visible()
        expect(stranger.get_by_test_id("viewer")).not_to_contain_text("zebracorn")
        expect(stranger.get_by_test_id("viewer-download")).to_be_disabled()
    finally:
        other.close()
