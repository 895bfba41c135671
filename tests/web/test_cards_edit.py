"""Editing a deck's cards in real Chromium against the real mesh (gateway, chat, storage,
PostgreSQL): a deck's card list opened from its row, a card's front and back edited (an emptied
field refused before anything is sent, the edit kept by the server), a card suspended (it leaves
the due counts) and resumed, a card deleted only after a confirm, in Vietnamese and English."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Dialog, Page, Request, expect

from tests.web.test_browser import register, upload
from tests.web.test_material import assert_accessible
from tests.web.test_study import DEFINITIONS, make_deck


def due_ids(page: Page) -> set[str]:
    token = page.evaluate("JSON.parse(localStorage.getItem('sa.auth')).accessToken")
    answer = page.request.get("/v1/reviews:due", headers={"Authorization": f"Bearer {token}"})
    assert answer.ok, answer.text()
    return {card["card_id"] for card in answer.json().get("cards", [])}


def test_edit_suspend_and_delete_a_decks_cards(page: Page, tmp_path: Path) -> None:
    register(page)
    upload(page, tmp_path, "ctdl-sua-the.md", DEFINITIONS)
    page.goto("/#/study")
    cards = make_deck(page, "CARD_KIND_FLASHCARD", 5)
    assert cards >= 3
    deck = page.get_by_test_id("deck-row")
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards))

    # The list is closed until asked for, then shows every card of the deck.
    expect(deck.get_by_test_id("deck-card")).to_have_count(0)
    toggle = deck.get_by_test_id("toggle-cards")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    rows = deck.get_by_test_id("deck-card")
    expect(rows).to_have_count(cards)
    expect(rows.first.get_by_test_id("deck-card-front")).to_contain_text(" là gì?")
    expect(rows.first).to_contain_text("ctdl-sua-the.md")
    assert_accessible(page, "study, a deck's cards")

    # Editing: an emptied front is refused here, nothing sent.
    first = rows.nth(0)
    first_id = first.get_attribute("data-card-id")
    patches: list[Request] = []
    page.on("request", lambda r: patches.append(r) if r.method == "PATCH" else None)
    first.get_by_test_id("card-edit-open").click()
    form = first.get_by_test_id("card-edit")
    form.get_by_test_id("card-edit-front").fill("   ")
    form.get_by_test_id("card-save").click()
    expect(form.get_by_role("alert")).to_have_text("Mặt trước và mặt sau không được để trống.")
    assert patches == []
    assert_accessible(page, "study, a card being edited")
    form.get_by_test_id("card-edit-front").fill("Ngăn xếp lấy phần tử ra theo thứ tự nào?")
    form.get_by_test_id("card-edit-back").fill("Vào sau ra trước (LIFO)")
    with page.expect_response(lambda r: r.request.method == "PATCH") as saved:
        form.get_by_test_id("card-save").click()
    assert saved.value.status == 200, saved.value.text()
    assert saved.value.url.endswith(f"/v1/cards/{first_id}")
    expect(first.get_by_test_id("card-edit")).to_have_count(0)
    expect(first.get_by_test_id("deck-card-front")).to_have_text("Ngăn xếp lấy phần tử ra theo thứ tự nào?")
    expect(first.get_by_test_id("deck-card-back")).to_have_text("Vào sau ra trước (LIFO)")

    # Suspending: the card is never due, so it leaves the deck's and the nav's counts; resumed, back.
    second = rows.nth(1)
    second_id = second.get_attribute("data-card-id") or ""
    second.get_by_test_id("card-suspend").click()
    expect(second).to_have_attribute("data-suspended", "true")
    expect(second.get_by_test_id("deck-card-suspended")).to_have_text(re.compile("đang tạm ngưng"))
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards - 1))
    expect(page.get_by_test_id("nav-due")).to_have_text(str(cards - 1))
    assert second_id not in due_ids(page)
    expect(second.get_by_test_id("card-suspend")).to_have_text("Ôn lại thẻ này")
    second.get_by_test_id("card-suspend").click()
    expect(second).to_have_attribute("data-suspended", "false")
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards))
    assert second_id in due_ids(page)

    # Deleting asks first: dismissed, the card stays; accepted, it goes, and the deck has one fewer.
    third = rows.nth(2)
    third_id = third.get_attribute("data-card-id") or ""
    third_front = third.get_by_test_id("deck-card-front").inner_text()
    asked: list[str] = []
    answers = [False, True]

    def answer(dialog: Dialog) -> None:
        asked.append(dialog.message)
        if answers.pop(0):
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", answer)
    third.get_by_test_id("card-delete").click()
    expect(rows).to_have_count(cards)
    assert asked == [f"Xóa thẻ «{third_front[:80]}»?"]
    third.get_by_test_id("card-delete").click()
    expect(deck.locator(f'[data-card-id="{third_id}"]')).to_have_count(0)
    expect(rows).to_have_count(cards - 1)
    expect(deck).to_contain_text(f"{cards - 1} thẻ")
    expect(deck.get_by_test_id("deck-due")).to_have_text(str(cards - 1))
    assert third_id not in due_ids(page)

    # The server kept the edit and the deletion: a fresh page shows them.
    page.reload()
    deck = page.get_by_test_id("deck-row")
    deck.get_by_test_id("toggle-cards").click()
    rows = deck.get_by_test_id("deck-card")
    expect(rows).to_have_count(cards - 1)
    edited = deck.locator(f'[data-card-id="{first_id}"]')
    expect(edited.get_by_test_id("deck-card-front")).to_have_text("Ngăn xếp lấy phần tử ra theo thứ tự nào?")

    # English.
    page.get_by_role("button", name="English").click()
    expect(deck.get_by_test_id("toggle-cards")).to_contain_text("Hide cards")
    expect(edited.get_by_test_id("card-edit-open")).to_have_text("Edit")
    expect(edited.get_by_test_id("card-suspend")).to_have_text("Suspend")
    expect(edited.get_by_test_id("card-delete")).to_have_text("Delete card")
    edited.get_by_test_id("card-edit-open").click()
    expect(edited.get_by_test_id("card-edit")).to_contain_text("Front (question)")
    edited.get_by_test_id("card-cancel").click()
    expect(edited.get_by_test_id("deck-card-front")).to_have_text("Ngăn xếp lấy phần tử ra theo thứ tự nào?")
    deck.get_by_test_id("toggle-cards").click()
    expect(deck.get_by_test_id("deck-card")).to_have_count(0)
