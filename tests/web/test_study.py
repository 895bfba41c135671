"""The study loop in real Chromium against the real mesh (gateway, chat, storage, PostgreSQL): a
student makes a deck from a Markdown file of definitions, sees how many cards are due on the nav,
reviews one with the keyboard (Space shows the back, 3 rates it "good"), sees the count drop by one
and opens the card's passage in the source viewer. A multiple-choice card marks the right choice."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Dialog, Page, expect

from tests.web.test_browser import register, upload
from tests.web.test_material import assert_accessible

DEFINITIONS = """# Cấu trúc dữ liệu

Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước.

Hàng đợi là cấu trúc dữ liệu hoạt động theo nguyên tắc vào trước ra trước.

Cây nhị phân là cấu trúc dữ liệu mà mỗi nút có tối đa hai nút con.

Bảng băm là cấu trúc dữ liệu ánh xạ khóa tới giá trị bằng một hàm băm.

Đồ thị là tập hợp các đỉnh và các cạnh nối giữa các đỉnh.
""".encode()


def nav_due(page: Page) -> int:
    badge = page.get_by_test_id("nav-due")
    expect(badge).to_have_text(re.compile(r"^\d+$"))
    return int(badge.inner_text())


def make_deck(page: Page, kind: str, size: int) -> int:
    """Create a deck of every ready file from the Study page; returns the number of cards it got."""
    form = page.get_by_test_id("deck-form")
    form.get_by_test_id("deck-kind").select_option(kind)
    form.get_by_test_id("deck-size").fill(str(size))
    with page.expect_response(lambda r: r.url.endswith("/v1/decks") and r.request.method == "POST") as created:
        form.get_by_test_id("deck-create").click()
    assert created.value.status == 200, created.value.text()
    count = int(created.value.json()["card_count"])
    expect(form.get_by_test_id("deck-created")).to_contain_text(f"gồm {count} thẻ")
    return count


def test_deck_review_with_the_keyboard_and_open_the_source(page: Page, tmp_path: Path) -> None:
    register(page)
    file_id = upload(page, tmp_path, "ctdl-dinh-nghia.md", DEFINITIONS)

    page.get_by_test_id("nav-study").click()
    expect(page).to_have_url(re.compile(r"#/study$"))
    expect(page.get_by_role("heading", name="Ôn tập", level=1)).to_be_visible()
    # No deck yet: nothing is due and the nav shows no count.
    expect(page.get_by_test_id("deck-row")).to_have_count(0)
    expect(page.get_by_test_id("nav-due")).to_have_count(0)
    # A size the server would refuse is said before anything is sent.
    page.get_by_test_id("deck-size").fill("0")
    page.get_by_test_id("deck-create").click()
    expect(page.get_by_test_id("deck-form").get_by_role("alert")).to_have_text("Số thẻ phải từ 1 đến 500.")

    cards = make_deck(page, "CARD_KIND_FLASHCARD", 4)
    assert 2 <= cards <= 4
    deck = page.get_by_test_id("deck-row")
    expect(deck).to_have_count(1)
    expect(deck).to_contain_text("ctdl-dinh-nghia.md")
    expect(deck).to_contain_text("Thẻ hỏi đáp")
    # Every new card is due at once.
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards))
    expect(deck.get_by_test_id("deck-new")).to_have_text(str(cards))
    expect(deck.get_by_test_id("deck-learned")).to_have_text("0")
    expect(deck.get_by_test_id("deck-retention")).to_have_text("chưa ôn")
    expect(page.get_by_test_id("nav-due")).to_have_text(str(cards))
    expect(page.get_by_test_id("nav-study")).to_have_accessible_name(f"Ôn tập {cards} thẻ đến hạn")
    assert_accessible(page, "study, a deck")

    deck.get_by_test_id("review-deck").click()
    expect(page).to_have_url(re.compile(r"#/study/review\?deck="))
    card = page.get_by_test_id("review-card")
    expect(card).to_have_attribute("data-revealed", "false")
    front = card.get_by_test_id("card-front").inner_text()
    assert front.endswith(" là gì?"), front
    # The back (and its passage, which holds the answer) waits for Space; 3 does nothing before it.
    expect(card.get_by_test_id("card-back")).to_have_count(0)
    page.keyboard.press("3")
    expect(card.get_by_test_id("card-back")).to_have_count(0)
    expect(page.get_by_test_id("review-due")).to_have_text(f"Còn {cards} thẻ đến hạn")
    page.keyboard.press("Space")
    expect(card).to_have_attribute("data-revealed", "true")
    back = card.get_by_test_id("card-back")
    expect(back).to_contain_text("cấu trúc dữ liệu")
    expect(card.get_by_test_id("card-quote")).to_contain_text(front.removesuffix(" là gì?"))
    # The answer is marked in its passage.
    answer = card.get_by_test_id("card-answer").inner_text().removesuffix("…").strip()
    expect(card.get_by_test_id("card-quote").locator("mark")).to_have_text(re.compile(f"^{re.escape(answer)}$", re.I))
    expect(page.get_by_test_id("ratings")).to_contain_text("Quên")
    expect(page.get_by_test_id("ratings")).to_contain_text("Dễ")
    assert_accessible(page, "study, a card turned")
    first_id = card.get_attribute("data-card-id")

    with page.expect_response(lambda r: r.url.endswith(":review") and r.request.method == "POST") as reviewed:
        page.keyboard.press("3")
    assert reviewed.value.status == 200, reviewed.value.text()
    assert f"/v1/cards/{first_id}:review" in reviewed.value.url
    sent = reviewed.value.request.post_data_json
    assert sent is not None and sent["rating"] == "good"
    # Rated "good", a new card moves to a later learning step: one card fewer is due, on the
    # review screen and on the nav, and the next card is on screen, front only.
    expect(page.get_by_test_id("nav-due")).to_have_text(str(cards - 1))
    expect(page.get_by_test_id("review-due")).to_have_text(f"Còn {cards - 1} thẻ đến hạn")
    expect(card).not_to_have_attribute("data-card-id", first_id or "")
    expect(card).to_have_attribute("data-revealed", "false")

    # The card's source: the file and its section, opening the viewer at the cited passage.
    source = card.get_by_test_id("card-source")
    expect(source).to_contain_text("Nguồn: ctdl-dinh-nghia.md · Cấu trúc dữ liệu")
    source_front = card.get_by_test_id("card-front").inner_text().removesuffix(" là gì?")
    source.get_by_test_id("card-source-open").click()
    expect(page).to_have_url(re.compile(rf"#/view/{file_id}\?chunk=[\w-]+$"))
    cited = page.get_by_test_id("viewer").get_by_test_id("cited-passage")
    expect(cited).to_contain_text(source_front)
    expect(cited).to_be_in_viewport()

    # Back on the Study page the deck's figures follow the review.
    page.get_by_test_id("nav-study").click()
    deck = page.get_by_test_id("deck-row")
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards - 1))
    expect(deck.get_by_test_id("deck-new")).to_have_text(str(cards - 1))
    expect(deck.get_by_test_id("deck-retention")).to_have_text("100 %")


def test_multiple_choice_marks_the_right_answer_and_a_deck_is_deleted(page: Page, tmp_path: Path) -> None:
    register(page)
    # No file yet: the server's reason, in Vietnamese, through the app's error display.
    page.goto("/#/study")
    page.get_by_test_id("deck-create").click()
    expect(page.get_by_test_id("deck-form").get_by_role("alert")).to_contain_text(
        "Chưa có tài liệu nào sẵn sàng để tạo thẻ."
    )
    expect(page.get_by_test_id("deck-row")).to_have_count(0)
    upload(page, tmp_path, "ctdl-trac-nghiem.md", DEFINITIONS)
    page.goto("/#/study")
    cards = make_deck(page, "CARD_KIND_MULTIPLE_CHOICE", 3)
    expect(page.get_by_test_id("nav-due")).to_have_text(str(cards))
    page.get_by_test_id("review-all").click()
    card = page.get_by_test_id("review-card")
    choices = card.get_by_test_id("choice")
    expect(choices).to_have_count(4)
    # Pick by clicking the choice that is not the answer the passage would give: find the answer
    # first from the API (the page shows it only after answering).
    due = page.request.get(
        "/v1/reviews:due",
        headers={"Authorization": "Bearer " + page.evaluate("JSON.parse(localStorage.getItem('sa.auth')).accessToken")},
    ).json()
    answer = next(c for c in due["cards"] if c["card_id"] == card.get_attribute("data-card-id"))["back"]
    texts = [t.split(". ", 1)[1] for t in choices.all_inner_texts()]
    assert answer in texts
    wrong = next(i for i, text in enumerate(texts) if text != answer)
    page.keyboard.press(str(wrong + 1))
    expect(card).to_have_attribute("data-revealed", "true")
    expect(choices.nth(wrong)).to_have_attribute("data-mark", "wrong")
    expect(choices.nth(wrong)).to_contain_text("bạn đã chọn")
    right = texts.index(answer)
    expect(choices.nth(right)).to_have_attribute("data-mark", "right")
    expect(choices.nth(right)).to_contain_text("đáp án đúng")
    expect(card.locator("[data-mark]")).to_have_count(2)
    assert_accessible(page, "study, a multiple-choice card answered")
    # "Again" brings a new card back in a minute, not now: it leaves the due count too. A focused
    # rating button keeps Space for itself (it presses it) instead of the screen taking it.
    page.get_by_test_id("rate-again").focus()
    with page.expect_response(lambda r: r.url.endswith(":review")) as reviewed:
        page.keyboard.press("Space")
    sent = reviewed.value.request.post_data_json
    assert sent is not None and sent["rating"] == "again"
    if cards > 1:
        expect(page.get_by_test_id("nav-due")).to_have_text(str(cards - 1))
    else:
        expect(page.get_by_test_id("review-done")).to_be_visible()

    # English too.
    page.get_by_role("button", name="English").click()
    expect(page.get_by_test_id("nav-study")).to_contain_text("Study")

    # Deleting the deck asks first, then its cards leave the due count.
    page.get_by_test_id("back-to-decks").click()
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_test_id("delete-deck").click()
    expect(page.get_by_test_id("deck-row")).to_have_count(0)
    assert asked and "ctdl-trac-nghiem.md" in asked[0]
    expect(page.get_by_test_id("nav-due")).to_have_count(0)
