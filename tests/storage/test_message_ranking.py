"""History search finds what was said, not the assistant's stock sentences: the student's own
messages and the answers' substance rank first, boilerplate and quoted passages are not indexed,
snippets are plain text."""

from __future__ import annotations

import pytest
from chat.context import Passage
from chat.extractive import STYLES, extractive_answer
from chat.grounding import abstention_notice
from chat.text import greeting_reply
from storage.message_text import plain_text, searchable_text
from studyassist.core.channels import user_metadata
from studyassist.storage.v1 import storage_pb2

from tests.storage.conftest import StorageClient

USER: storage_pb2.Role = storage_pb2.ROLE_USER
ASSISTANT: storage_pb2.Role = storage_pb2.ROLE_ASSISTANT
TCP = (
    "TCP là giao thức hướng kết nối, truyền dữ liệu tin cậy giữa hai tiến trình. Bắt tay ba bước mở một kết nối "
    "TCP trước khi gửi dữ liệu. Cửa sổ trượt điều khiển luồng dữ liệu giữa bên gửi và bên nhận."
)


def _hit(text: str) -> storage_pb2.ChunkHit:
    return storage_pb2.ChunkHit(chunk_id="c1", file_id="f1", file_name="mang-may-tinh.pdf", page=4, text=text)


def _extractive(text: str, language: str = "vi", style: str = "quotes") -> str:
    answer: str = extractive_answer(style, [Passage(1, _hit(text), text)], "TCP là gì?", language)
    return answer


# As chat wrote them before issue 17: histories already stored hold them.
OLD_STOCK = [
    "Chưa kết nối mô hình ngôn ngữ nào, nên đây là các đoạn liên quan nhất được trích nguyên văn từ tài liệu của bạn:",
    "Mình không tìm thấy nội dung liên quan trong tài liệu của bạn cho câu hỏi này. "
    "(Chưa kết nối mô hình ngôn ngữ nào.)",
    "No language model is connected, so here are the most relevant passages quoted from your documents:",
    "I found nothing relevant to this question in your documents. (No language model is connected.)",
]


@pytest.mark.parametrize("language", ["vi", "en"])
def test_chat_stock_sentences_are_not_indexed(language: str) -> None:
    # Chat's own sentences, as chat writes them now: if chat changes one, storage's list must follow.
    for hits in ([], [_hit(TCP)]):
        for cross_language in (False, True):
            notice = abstention_notice(
                language, hits, selected_files=2, cross_language=cross_language, closest="mang.v2.pdf, trang 4"
            )
            assert searchable_text(ASSISTANT, notice) == "", notice
    for text in ("xin chào", "cảm ơn", "tạm biệt", "hello", "thanks", "bye"):
        assert searchable_text(ASSISTANT, greeting_reply(text, language)) == ""
    for old in OLD_STOCK:
        assert searchable_text(ASSISTANT, old) == "", old
    # An extractive answer is stock sentences around the student's own passages: whatever it keeps
    # is the passage's (a quote is dropped, a summary's sentences are kept), never chat's words.
    source = plain_text(TCP)
    for style in STYLES:
        answer = _extractive(TCP, language, style)
        for line in searchable_text(ASSISTANT, answer).splitlines():
            kept = line.replace("_____", "").replace("«", "").replace("»", "").replace("“", "").replace("”", "")
            assert any(part.strip() in source for part in kept.split("  ") if part.strip()), (style, line)
    assert searchable_text(ASSISTANT, _extractive(TCP, language)) == ""
    # The student's words are kept even when they repeat a stock sentence.
    assert searchable_text(USER, greeting_reply("hello", language)) != ""


def test_answers_keep_their_substance_as_plain_text() -> None:
    answer = (
        "## Kết luận\n\n**TCP** dùng [bắt tay ba bước](https://vi.wikipedia.org/wiki/TCP) [2].\n\n"
        "> Trích: TCP đảm bảo thứ tự [1]\n> — mang.pdf, page 2\n\n"
        "```cpp\nint main() { return 0; }\n```\n\n- Mục `SYN` và *ACK*\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    )
    text = searchable_text(ASSISTANT, answer)
    assert text.splitlines() == [
        "Kết luận",
        "TCP dùng bắt tay ba bước.",
        "int main() { return 0; }",
        "Mục SYN và ACK",
        "a b",
        "1 2",
    ]
    assert "Trích" not in text and "wikipedia" not in text
    # A student's message is stripped of Markdown too, but nothing of it is dropped.
    assert plain_text("> mình trích: **cây AVL**") == "mình trích: cây AVL"
    assert searchable_text(USER, "> mình trích: **cây AVL**") == "mình trích: cây AVL"


async def _session(storage: StorageClient, user: str, *messages: tuple[storage_pb2.Role, str]) -> str:
    me = user_metadata(user)
    session = await storage.stub.CreateSession(storage_pb2.CreateSessionRequest(), metadata=me)
    await storage.stub.AppendMessages(
        storage_pb2.AppendMessagesRequest(
            session_id=session.session_id,
            title=messages[0][1][:40],
            messages=[storage_pb2.Message(role=role, content=content) for role, content in messages],
        ),
        metadata=me,
    )
    return session.session_id


async def _search(storage: StorageClient, user: str, query: str) -> list[storage_pb2.MessageHit]:
    found = await storage.stub.SearchMessages(
        storage_pb2.SearchMessagesRequest(query=query, page_size=10), metadata=user_metadata(user)
    )
    return list(found.hits)


async def test_history_search_is_not_led_by_stock_sentences(storage: StorageClient) -> None:
    user = await storage.new_user()
    # A semester without an LLM: every answer opens with the notice and quotes the material.
    quoted: dict[str, str] = {}
    for question, passage in [
        ("Giao thức TCP là gì?", "TCP là giao thức hướng kết nối, truyền tin cậy giữa hai tiến trình."),
        ("Địa chỉ IP lớp C", "Địa chỉ lớp C dùng 24 bit cho phần mạng."),
        ("Mô hình OSI có mấy tầng?", "Mô hình OSI có bảy tầng, từ vật lý đến ứng dụng."),
        ("Định tuyến tĩnh", "Định tuyến tĩnh do quản trị viên cấu hình bằng tay."),
        ("Cho mình hỏi về DNS", "DNS phân giải tên miền thành địa chỉ IP."),
    ]:
        quoted[question] = await _session(storage, user, (USER, question), (ASSISTANT, _extractive(passage)))
    await _session(storage, user, (USER, "xin chào"), (ASSISTANT, greeting_reply("xin chào", "vi")))
    await _session(
        storage,
        user,
        (USER, "Thủ đô nước Pháp?"),
        (ASSISTANT, abstention_notice("vi", [], selected_files=0, cross_language=False, closest="")),
    )
    # One real answer about language models, and the student's own question about them.
    llm = await _session(
        storage,
        user,
        (USER, "Mô hình ngôn ngữ lớn được huấn luyện thế nào?"),
        (ASSISTANT, "Một **mô hình ngôn ngữ** lớn được huấn luyện để đoán từ tiếp theo [1]."),
    )

    # The notice holds "mô hình ngôn ngữ" and "tài liệu": only the real mentions are found, the
    # student's question first, then the answer, then the question that shares "mô hình" only.
    hits = await _search(storage, user, "mô hình ngôn ngữ")
    osi = quoted["Mô hình OSI có mấy tầng?"]
    assert [(h.message.session_id, h.message.role) for h in hits] == [(llm, USER), (llm, ASSISTANT), (osi, USER)]
    assert await _search(storage, user, "trích nguyên văn tài liệu") == []
    assert await _search(storage, user, "trợ lý học tập") == []
    # A course term found only in the quotes leads to the student's question, not to the quote.
    hits = await _search(storage, user, "TCP")
    assert [(h.message.content, h.message.role) for h in hits] == [("Giao thức TCP là gì?", USER)]
    # Snippets are plain text: no Markdown marks, no citation markers; the match marked.
    answer = next(h for h in await _search(storage, user, "đoán từ tiếp theo") if h.message.role == ASSISTANT)
    assert answer.highlighted.startswith("Một mô hình ngôn ngữ lớn") and "<mark>đoán</mark>" in answer.highlighted
    assert "**" not in answer.highlighted and "[1]" not in answer.highlighted
    # The message itself is returned whole, as it was written.
    assert answer.message.content.startswith("Một **mô hình ngôn ngữ**")


async def test_the_students_own_messages_rank_first(storage: StorageClient) -> None:
    user = await storage.new_user()
    # The answer is shorter, so plain BM25 puts it ahead of the longer question.
    session = await _session(
        storage,
        user,
        (USER, "Cho mình hỏi cây AVL cân bằng lại thế nào"),
        (ASSISTANT, "Cây AVL xoay để cân bằng"),
    )
    await _session(storage, user, (USER, "Bảng băm xử lý đụng độ ra sao"), (ASSISTANT, "Bảng băm dùng dây chuyền"))
    hits = await _search(storage, user, "cây AVL")
    assert [(h.message.session_id, h.message.role) for h in hits] == [(session, USER), (session, ASSISTANT)]
    assert hits[0].score > hits[1].score
    # Another user sees none of it.
    assert await _search(storage, await storage.new_user(), "cây AVL") == []
