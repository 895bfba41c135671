"""The quiz in real Chromium against the real mesh (gateway, chat, storage, PostgreSQL): a student
makes a multiple-choice deck from a Markdown file of definitions, takes a 3-question quiz against
the clock with the keyboard and the mouse (one answer wrong on purpose), sees the score the server
gave, follows the wrong answer's link to its passage in the viewer, and finds the result among the
past ones, in Vietnamese and English."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

from tests.web.test_browser import register, upload
from tests.web.test_material import assert_accessible
from tests.web.test_study import DEFINITIONS, make_deck


def api_get(page: Page, path: str) -> Any:
    token = page.evaluate("JSON.parse(localStorage.getItem('sa.auth')).accessToken")
    answer = page.request.get(path, headers={"Authorization": "Bearer " + token})
    assert answer.ok, answer.text()
    return answer.json()


def test_quiz_scored_with_the_wrong_answer_linking_to_its_passage(page: Page, tmp_path: Path) -> None:
    register(page)
    file_id = upload(page, tmp_path, "ctdl-kiem-tra.md", DEFINITIONS)
    page.goto("/#/study")
    cards = make_deck(page, "CARD_KIND_MULTIPLE_CHOICE", 5)
    assert cards >= 3
    deck = page.get_by_test_id("deck-row")
    deck_id = deck.get_attribute("data-deck-id")
    deck.get_by_test_id("quiz-deck").click()
    expect(page).to_have_url(re.compile(rf"#/quiz\?deck={deck_id}$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Kiểm tra: ctdl-kiem-tra.md")
    expect(page.get_by_test_id("quiz-results")).to_be_empty()
    expect(page.get_by_text("Chưa có bài kiểm tra nào.")).to_be_visible()

    # Out of range: said before anything is sent.
    form = page.get_by_test_id("quiz-form")
    form.get_by_test_id("quiz-count").fill("101")
    form.get_by_test_id("quiz-start").click()
    expect(form.get_by_role("alert")).to_have_text("Số câu hỏi phải từ 1 đến 100.")

    form.get_by_test_id("quiz-count").fill("3")
    form.get_by_test_id("quiz-minutes").fill("5")
    with page.expect_response(lambda r: r.url.endswith("/quizzes") and r.request.method == "POST") as started:
        form.get_by_test_id("quiz-start").click()
    assert started.value.status == 200, started.value.text()
    assert started.value.request.post_data_json == {"count": 3, "time_limit_s": 300}
    quiz = started.value.json()
    assert len(quiz["questions"]) == 3
    # The questions come without their answers: the page cannot know the score before the server.
    assert all(set(q) == {"position", "card_id", "front", "choices"} for q in quiz["questions"])
    backs = {c["card_id"]: c["back"] for c in api_get(page, f"/v1/decks/{deck_id}/cards")["cards"]}
    right = [q["choices"].index(backs[q["card_id"]]) for q in quiz["questions"]]

    question = page.get_by_test_id("quiz-question")
    expect(page.get_by_test_id("quiz-progress")).to_have_text("Câu 1/3")
    expect(page.get_by_test_id("quiz-timer")).to_have_text(re.compile(r"^Còn lại: [45]:\d\d$"))
    expect(question.get_by_test_id("quiz-choice")).to_have_count(4)
    assert_accessible(page, "quiz, a question")
    wrong = (right[0] + 1) % 4
    page.keyboard.press(str(wrong + 1))  # question 1: wrong, with the keyboard
    expect(question).to_have_attribute("data-position", "1")
    expect(page.get_by_test_id("quiz-progress")).to_have_text("Câu 2/3")
    page.keyboard.press(str(right[1] + 1))  # question 2: right, with the keyboard
    expect(question).to_have_attribute("data-position", "2")
    with page.expect_response(lambda r: r.url.endswith(":submit")) as submitted:
        question.get_by_test_id("quiz-choice").nth(right[2]).click()  # question 3: right, clicked; hands in
    assert submitted.value.status == 200, submitted.value.text()
    sent = submitted.value.request.post_data_json
    assert sent == {"answers": [{"position": n, "choice": c} for n, c in enumerate([wrong, right[1], right[2]])]}

    result = page.get_by_test_id("quiz-result")
    expect(result.get_by_test_id("quiz-score")).to_have_text("2/3 (67 %)")
    expect(result.get_by_test_id("quiz-summary")).to_contain_text("2 đúng · 1 sai · 0 chưa trả lời")
    missed = result.get_by_test_id("quiz-missed")
    expect(missed).to_have_count(1)
    expect(missed.get_by_test_id("quiz-chosen")).to_have_text(quiz["questions"][0]["choices"][wrong])
    expect(missed.get_by_test_id("quiz-answer")).to_have_text(backs[quiz["questions"][0]["card_id"]])
    expect(missed).to_contain_text("Nguồn: ctdl-kiem-tra.md · Cấu trúc dữ liệu")
    # The result is among the past ones, with its score.
    rows = page.get_by_test_id("quiz-result-row")
    expect(rows).to_have_count(1)
    expect(rows.get_by_test_id("quiz-row-score")).to_have_text("2/3 (67 %)")
    assert_accessible(page, "quiz, the result")

    # The wrong answer's passage, in the viewer.
    link = missed.get_by_test_id("quiz-source")
    expect(link).to_have_attribute("href", re.compile(rf"^#/view/{file_id}\?chunk=[\w-]+$"))
    link.click()
    expect(page).to_have_url(re.compile(rf"#/view/{file_id}\?chunk=[\w-]+$"))
    cited = page.get_by_test_id("viewer").get_by_test_id("cited-passage")
    expect(cited).to_contain_text(backs[quiz["questions"][0]["card_id"]])

    # Back: the kept result, in English, from the past results.
    page.goto(f"/#/quiz?deck={deck_id}")
    page.get_by_role("button", name="English").click()
    expect(page.get_by_role("heading", name="Past results")).to_be_visible()
    page.get_by_test_id("quiz-result-open").click()
    expect(page).to_have_url(re.compile(rf"#/quiz/{quiz['quiz_id']}$"))
    kept = page.get_by_test_id("quiz-result")
    expect(kept.get_by_test_id("quiz-score")).to_have_text("2/3 (67 %)")
    expect(kept.get_by_test_id("quiz-summary")).to_contain_text("2 right · 1 wrong · 0 unanswered")
    expect(kept.get_by_test_id("quiz-missed")).to_have_count(1)


def test_the_quiz_hands_itself_in_when_the_time_is_up(page: Page, tmp_path: Path) -> None:
    register(page)
    upload(page, tmp_path, "ctdl-het-gio.md", DEFINITIONS)
    page.goto("/#/study")
    assert make_deck(page, "CARD_KIND_MULTIPLE_CHOICE", 5) >= 2
    deck_id = page.get_by_test_id("deck-row").get_attribute("data-deck-id")
    # The page's clock is Playwright's from here: the minute passes at once instead of being waited.
    page.clock.install()
    page.goto(f"/#/quiz?deck={deck_id}")
    page.reload()
    page.get_by_test_id("quiz-count").fill("2")
    page.get_by_test_id("quiz-minutes").fill("1")
    page.get_by_test_id("quiz-start").click()
    expect(page.get_by_test_id("quiz-timer")).to_have_text(re.compile(r"^Còn lại: (1:00|0:5\d)$"))
    page.keyboard.press("1")
    expect(page.get_by_test_id("quiz-question")).to_have_attribute("data-position", "1")
    with page.expect_response(lambda r: r.url.endswith(":submit")) as submitted:
        page.clock.run_for("01:01")
    # What was answered goes in; the unanswered question counts as such.
    assert submitted.value.request.post_data_json == {"answers": [{"position": 0, "choice": 0}]}
    result = page.get_by_test_id("quiz-result")
    expect(result.get_by_test_id("quiz-summary")).to_contain_text("1 chưa trả lời")
    expect(result.get_by_test_id("quiz-missed").last).to_contain_text("Bạn chọn: chưa trả lời")
