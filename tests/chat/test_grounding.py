"""Abstention, citation places, quotes as written, and the agents' own extractive answers (pure parts)."""

from __future__ import annotations

import pytest
from chat.agents import AgentRegistry
from chat.config import DEFAULT_AGENTS_FILE
from chat.context import format_quote, location, pack_passages
from chat.extractive import definition, extractive_answer, practice_questions, sentences_of, textrank
from chat.grounding import Grounding, abstention_notice, fuse_hits, material_language
from studyassist.storage.v1 import storage_pb2

STACK = (
    "Ngăn xếp là cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO). "
    "Thao tác push thêm phần tử vào đỉnh ngăn xếp, còn pop lấy phần tử ở đỉnh ra. "
    "Lời gọi đệ quy được máy tính quản lý bằng ngăn xếp lời gọi hàm. "
    "Kiểm tra dấu ngoặc cân bằng là một ứng dụng quen thuộc của ngăn xếp."
)
QUEUE = (
    "Hàng đợi là cấu trúc dữ liệu vào trước ra trước (FIFO). "
    "Phần tử mới được thêm vào cuối hàng đợi và lấy ra ở đầu hàng đợi. "
    "Hàng đợi được dùng trong duyệt đồ thị theo chiều rộng."
)


def hit(n: int, text: str, *, coverage: float = 0.0, vector: float = 0.0, name: str = "") -> storage_pb2.ChunkHit:
    return storage_pb2.ChunkHit(
        chunk_id=f"c{n}",
        file_id=f"f{n}",
        file_name=name or f"bai{n}.pdf",
        page=n,
        text=text,
        query_coverage=coverage,
        vector_score=vector,
    )


def test_a_question_is_answerable_when_a_passage_is_about_it() -> None:
    grounding = Grounding(min_coverage=0.5, min_vector=0.75)
    shares_a_word = hit(1, "x", coverage=0.2, vector=0.3)
    about_it = hit(2, "y", coverage=0.6, vector=0.1)
    close_in_meaning = hit(3, "z", coverage=0.0, vector=0.8)
    assert not grounding.answerable([shares_a_word])
    assert grounding.answerable([shares_a_word, about_it])
    assert [h.chunk_id for h in grounding.passages([shares_a_word, about_it, close_in_meaning])] == ["c2", "c3"]
    assert grounding.passages([]) == []


def test_abstention_says_why_and_what_to_do_in_the_students_language() -> None:
    hits = [hit(1, STACK, coverage=0.2)]
    vi = abstention_notice("vi", hits, selected_files=2, cross_language=False, closest="bai1.pdf, trang 1")
    assert vi.startswith("Tài liệu của bạn không trả lời câu hỏi này")
    assert "2 tài liệu đã chọn" in vi and "tải lên" in vi and "bai1.pdf, trang 1" in vi
    assert "EMBEDDING_MODEL" not in vi
    en = abstention_notice("en", hits, selected_files=0, cross_language=True, closest="")
    assert en.startswith("Your material does not answer") and "EMBEDDING_MODEL" in en and "selected" not in en
    empty = abstention_notice("en", [], selected_files=0, cross_language=False, closest="")
    assert "not have uploaded any documents" in empty


def test_material_language_is_that_of_the_passages_found() -> None:
    assert material_language([hit(1, STACK)]) == "vi"
    assert material_language([hit(1, "A stack is a last-in first-out structure used by calls.")]) == "en"
    assert material_language([]) is None


def test_fused_hits_keep_each_chunk_once_with_its_best_coverage() -> None:
    original = [hit(1, "a", coverage=0.1), hit(2, "b", coverage=0.0)]
    translated = [hit(2, "b", coverage=0.9), hit(3, "c", coverage=0.7)]
    fused = fuse_hits(original, translated, 3)
    assert [h.chunk_id for h in fused] == ["c2", "c1", "c3"]  # c2: in both lists
    assert fused[0].query_coverage == pytest.approx(0.9)
    assert len(fuse_hits(original, translated, 2)) == 2


def test_locations_name_slides_pages_and_headings_in_the_answers_language() -> None:
    assert location("chuong2.pptx", 5, "", "vi") == "trang chiếu 5"
    assert location("chuong2.PPTX", 5, "", "en") == "slide 5"
    assert location("bai.pdf", 2, "", "vi") == "trang 2"
    assert location("notes.docx", 0, "Chương 2 › Ngăn xếp", "vi") == "«Chương 2 › Ngăn xếp»"
    assert location("notes.md", 0, "", "en") == ""
    passages = pack_passages([hit(1, STACK, name="slides.pptx")], 1000)
    assert passages[0].source_label("vi") == "slides.pptx, trang chiếu 1"


def test_quotes_keep_code_blocks_and_demote_headings() -> None:
    text = (
        "# Ngăn xếp\n\nCài đặt bằng mảng:\n\n```cpp\nint top = -1;\nvoid push(int x) { a[++top] = x; }\n```\n\n"
        "$$T(n) = O(1)$$"
    )
    quote = format_quote(text)
    assert quote[0] == "> **Ngăn xếp**"
    assert "> ```cpp" in quote and "> int top = -1;" in quote and sum(line.startswith("> ```") for line in quote) == 2
    assert "> $$T(n) = O(1)$$" in quote
    # Code that lost its fence (a PDF's extraction) gets one; the prose around it does not.
    unfenced = format_quote("Ví dụ:\nint main() {\n  return 0;\n}\nHết ví dụ.")
    assert unfenced == ["> Ví dụ:", "> ```", "> int main() {", ">   return 0;", "> }", "> ```", "> Hết ví dụ."]
    # A long passage is cut at a line end, and an open fence is closed.
    long_code = "```\n" + "\n".join(f"x{i} = {i};" for i in range(200))
    cut = format_quote(long_code, limit=100)
    assert cut[-1] == "> ```" and len(cut) < 30


def test_sentences_definitions_and_textrank() -> None:
    passages = pack_passages([hit(1, STACK), hit(2, QUEUE)], 1000)
    sentences = sentences_of(passages)
    assert len(sentences) == 7 and sentences[0].text.startswith("Ngăn xếp là")
    assert definition(sentences[0].text) == (
        "Ngăn xếp",
        "cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO).",
    )
    assert definition("Lời gọi đệ quy được máy tính quản lý bằng ngăn xếp lời gọi hàm.") is None
    scores = textrank(sentences)
    assert abs(sum(scores) - 1.0) < 1e-6
    # The sentences sharing most words with the others rank above an isolated one.
    isolated = next(i for i, s in enumerate(sentences) if "đồ thị" in s.text)
    assert scores[isolated] < max(scores)


def test_each_agent_answers_in_its_own_way_without_an_llm() -> None:
    registry = AgentRegistry.from_file(DEFAULT_AGENTS_FILE)
    styles = {agent.agent_id: agent.extractive for agent in registry.agents}
    assert styles == {
        "tutor": "socratic",
        "explainer": "definition",
        "programming_mentor": "quotes",
        "exam_coach": "questions",
        "summarizer": "summary",
    }
    passages = pack_passages([hit(1, STACK), hit(2, QUEUE)], 1000)
    question = "Ngăn xếp là gì?"
    answers = {style: extractive_answer(style, passages, question, "vi") for style in set(styles.values())}
    assert len(set(answers.values())) == 5
    assert all(a.startswith("Chưa kết nối mô hình ngôn ngữ") for a in answers.values())

    explainer = answers["definition"]
    assert explainer.split("\n")[2].startswith("**Ý chính:** Ngăn xếp là cấu trúc dữ liệu") and "[1]" in explainer

    summary = answers["summary"].split("\n")
    bullets = [line for line in summary if line.startswith("- ")]
    assert 1 < len(bullets) <= 5
    for bullet in bullets:  # each a sentence of a passage, word for word, with its citation
        sentence, cite = bullet[2:].rsplit(" [", 1)
        assert sentence in (STACK if cite == "1]" else QUEUE)

    coach = answers["questions"]
    assert "1. Ngăn xếp là gì?" in coach and "Đáp án" in coach
    assert "cấu trúc dữ liệu hoạt động theo nguyên tắc vào sau ra trước (LIFO). [1]" in coach

    tutor = answers["socratic"]
    assert "Ngăn xếp là gì?" in tutor and "[1]" in tutor
    assert "vào sau ra trước" not in tutor  # a Socratic tutor asks; it does not hand out the answer

    quotes = answers["quotes"]
    assert "> Ngăn xếp là cấu trúc" in quotes and "> — bai1.pdf, trang 1 [1]" in quotes


def test_practice_questions_without_definitions_are_cloze_questions() -> None:
    passages = pack_passages([hit(1, "Thuật toán Dijkstra tìm đường đi ngắn nhất từ một đỉnh nguồn.")], 1000)
    made = practice_questions(passages, "Dijkstra", "en")
    assert len(made) == 1
    asked, answer, passage = made[0]
    assert asked.startswith("Fill in the blank") and "_____" in asked and answer not in asked
    assert answer in passage.hit.text
