"""In Chromium against the real mesh (no LLM): an off-topic question is answered with "your material
does not answer this", in Vietnamese, with no source; the agents answer their own ways; a quoted
passage keeps its code block and its heading does not become a page-wide heading."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.web.test_browser import ANSWER_TIMEOUT_MS, register, upload

NOTES = """# Ngăn xếp

Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO). Thao tác push thêm \
phần tử vào đỉnh ngăn xếp, còn thao tác pop lấy phần tử ở đỉnh ngăn xếp ra.

```cpp
int top = -1;
void push(int x) { a[++top] = x; }
```

Lời gọi đệ quy được quản lý bằng ngăn xếp lời gọi hàm. Kiểm tra dấu ngoặc cân bằng là một ứng dụng \
quen thuộc của ngăn xếp.
"""


def ask_agent(page: Page, agent: str, question: str) -> Locator:
    page.goto("/#/chat")
    page.get_by_test_id("new-chat").click()
    page.get_by_test_id("agent-select").select_option(agent)
    composer = page.get_by_test_id("composer")
    composer.fill(question)
    composer.press("Enter")
    answer = page.get_by_test_id("message-assistant").last
    expect(answer).to_have_attribute("aria-busy", "false", timeout=ANSWER_TIMEOUT_MS)
    return answer


def test_off_topic_question_and_agents_that_differ(page: Page, tmp_path: Path) -> None:
    register(page)
    upload(page, tmp_path, "ngan-xep.md", NOTES.encode())

    answer = ask_agent(page, "explainer", "Thủ đô của nước Pháp là gì?")
    expect(answer).to_contain_text("Tài liệu của bạn không trả lời câu hỏi này")
    expect(answer).to_contain_text("tải lên")
    expect(answer.get_by_test_id("source-chip")).to_have_count(0)

    explained = ask_agent(page, "explainer", "Ngăn xếp hoạt động theo nguyên tắc nào?")
    expect(explained).to_contain_text("Ý chính:")
    expect(explained.get_by_test_id("source-chip").first).to_contain_text("ngan-xep.md")

    coach = ask_agent(page, "exam_coach", "Ngăn xếp hoạt động theo nguyên tắc nào?")
    expect(coach).to_contain_text("Câu hỏi ôn tập từ tài liệu")
    expect(coach).to_contain_text("Đáp án")

    # The programming mentor quotes the passage as written: its C++ stays a code block inside the
    # quote, and the passage's "# Ngăn xếp" is bold text, not a heading.
    mentor = ask_agent(page, "programming_mentor", "Cài đặt push của ngăn xếp bằng mảng")
    code = mentor.locator("blockquote pre code")
    expect(code.first).to_contain_text("void push(int x)")
    expect(mentor.locator("h1, h2, h3")).to_have_count(0)
