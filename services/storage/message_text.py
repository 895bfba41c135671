"""What of a chat message history search indexes and shows: its substance, as plain text.

Why not the raw content: the assistant's answers open with stock sentences (the no-LLM notice,
"nothing found", greetings) and, without an LLM, are mostly passages quoted from the student's own
files. Indexed raw, a search for "tài liệu" or "mô hình" was led by dozens of identical notices,
and any course term by the quotes, ahead of what the student asked and what was answered; the
snippets showed "**", "> " and "[1]". So an assistant message is indexed (and its snippet cut)
without its quoted lines and its stock sentences, and every message as text without Markdown.

Why a list of the stock sentences here and not a mark from chat: storage keeps the messages of
every chat version already written, which carry no mark; a sentence known here is dropped from old
and new messages alike (a change of this list re-indexes every session: SESSION_TEXT_VERSION).
tests/storage/test_message_ranking.py checks that chat's own sentences are all listed here.
The quoted passages are not lost to search: they are the student's files, which document search
finds, and the question that brought them is indexed as the student wrote it.
"""

from __future__ import annotations

import re
import unicodedata

from studyassist.storage.v1 import storage_pb2

# Bump when what is indexed of a message changes: sessions indexed before are re-indexed at start.
SESSION_TEXT_VERSION = 1

# The assistant's fixed sentences (services/chat: context.py, text.py, extractive.py, grounding.py),
# in both languages, old wordings kept (messages already stored carry them). "{name}" stands for a
# part chat fills in (a file and page, a count); "{cite}" for a citation marker, which plain_text
# drops with the space before it.
STOCK_SENTENCES = (
    # No LLM connected (context.py before issue 17, then extractive.py).
    "Chưa kết nối mô hình ngôn ngữ nào, nên đây là các đoạn liên quan nhất được trích nguyên văn từ tài liệu của bạn:",
    "No language model is connected, so here are the most relevant passages quoted from your documents:",
    "Chưa kết nối mô hình ngôn ngữ nào, nên câu trả lời dưới đây được trích nguyên văn từ tài liệu của bạn.",
    "No language model is connected, so the answer below is quoted word for word from your documents.",
    "Mình không tìm thấy nội dung liên quan trong tài liệu của bạn cho câu hỏi này.",
    "I found nothing relevant to this question in your documents.",
    "(Chưa kết nối mô hình ngôn ngữ nào.)",
    "(No language model is connected.)",
    # An answer the student stopped (servicer._save_stopped).
    "(Đã dừng.)",
    "(Stopped.)",
    # The extractive answers' headings and hints.
    "Các đoạn liên quan nhất:",
    "The most relevant passages:",
    "Tóm tắt (các câu quan trọng nhất của những đoạn được trích):",
    "Summary (the key sentences of the cited passages):",
    "Ý chính:",
    "Key idea:",
    "Chi tiết trong tài liệu:",
    "In your material:",
    "Câu hỏi ôn tập từ tài liệu:",
    "Practice questions from your material:",
    "Đáp án:",
    "Answers:",
    "Thử tự trả lời trước nhé. Vài câu hỏi gợi mở:",
    "Try answering it yourself first. A few guiding questions:",
    "Gợi ý: đọc lại {where} {cite}, rồi tự diễn đạt câu trả lời bằng lời của bạn.",
    "Hint: reread {where} {cite}, then put the answer in your own words.",
    "Gợi ý: đọc lại {where}, rồi tự diễn đạt câu trả lời bằng lời của bạn.",
    "Hint: reread {where}, then put the answer in your own words.",
    "Vì sao điều này đúng, và nó liên hệ thế nào với câu hỏi của bạn?",
    "Why is this true, and how does it relate to your question?",
    "{term} là gì?",
    "What is {term}?",
    "Điền vào chỗ trống: «{blanked}»",
    "Fill in the blank: “{blanked}”",
    # Abstention (grounding.py).
    "Tài liệu của bạn không trả lời câu hỏi này: không có đoạn nào đủ liên quan, nên mình không trích dẫn nguồn nào.",
    "Your material does not answer this question: no passage is relevant enough, so I cite none.",
    "Mình chưa tìm thấy đoạn tài liệu nào: có thể bạn chưa tải tài liệu lên, hoặc tài liệu vẫn đang được xử lý.",
    "I found no passages at all: you may not have uploaded any documents yet, or they are still being processed.",
    "Hãy tải lên bài giảng, giáo trình hoặc ghi chú có nội dung này (trang Tài liệu), hoặc hỏi lại bằng thuật ngữ "
    "mà tài liệu dùng.",
    "Upload the lecture, textbook chapter or notes that cover it (Documents page), or ask again with the terms your "
    "material uses.",
    "Bạn đang hỏi trong {count} tài liệu đã chọn: hãy thử chọn «Dùng tất cả tài liệu».",
    "You are asking within {count} selected documents: try “Use all documents”.",
    "Đoạn gần nhất (nhưng chưa đủ liên quan) nằm ở {where}.",
    "The closest passage (not relevant enough) is in {where}.",
    "Câu hỏi viết bằng tiếng Anh còn tài liệu bằng tiếng Việt: hãy hỏi bằng tiếng Việt. Tìm kiếm giữa hai ngôn ngữ "
    "cần kết nối một mô hình ngôn ngữ (để dịch câu hỏi) hoặc một mô hình embedding đa ngôn ngữ (EMBEDDING_MODEL, "
    "xem README).",
    "Your question is in English and your material in Vietnamese: ask in Vietnamese. Searching across languages "
    "needs a connected language model (to translate the question) or a multilingual embedding model "
    "(EMBEDDING_MODEL, see the README).",
    # Greetings (text.py).
    "Không có gì! Bạn cứ hỏi tiếp nếu còn chỗ nào chưa rõ trong tài liệu nhé.",
    "Tạm biệt! Chúc bạn học tốt.",
    "Xin chào! Mình là trợ lý học tập của bạn. Hãy hỏi mình về tài liệu bạn đã tải lên nhé.",
    "You're welcome! Ask again whenever something in your material is unclear.",
    "Goodbye, and good luck with your studies!",
    "Hello! I'm your study assistant. Ask me anything about the material you've uploaded.",
)

_FENCE = re.compile(r"^\s*(```|~~~)")
_QUOTE = re.compile(r"^\s*>")
_QUOTE_MARKS = re.compile(r"^\s*(?:>\s?)+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_CITATION = re.compile(r"\s?\[\d{1,3}\]")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_UNDERSCORE = re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)")
_CODE = re.compile(r"`+([^`]*)`+")
_MATH = re.compile(r"\${1,2}([^$]+)\${1,2}")


def plain_text(markdown: str) -> str:
    """``markdown`` as the text a reader sees: marks, link targets, citation markers and table
    rules gone; code, math and link texts kept; one line per block. Anything like an HTML tag stays
    (the app shows it as text, and "#include <vector>" is a student's question)."""
    lines: list[str] = []
    for raw in markdown.splitlines():
        if _FENCE.match(raw) or _RULE.match(raw) or _TABLE_RULE.match(raw):
            continue
        line = _HEADING.sub("", _QUOTE_MARKS.sub("", raw))
        line = _LIST_MARK.sub("", line)
        line = _IMAGE.sub(r"\1", line)
        line = _LINK.sub(r"\1", line)
        line = _CITATION.sub("", line)
        line = _UNDERSCORE.sub(r"\1", _EMPHASIS.sub(r"\2", line))
        line = _CODE.sub(r"\1", line)
        line = _MATH.sub(r"\1", line)
        line = line.replace("|", " ")
        line = " ".join(line.split())
        if line:
            lines.append(line)
    return "\n".join(lines)


_SLOT = re.compile(r"\\\{(\w+)\\\}")


def _stock_pattern(sentences: tuple[str, ...]) -> re.Pattern[str]:
    """One pattern for every stock sentence as plain_text leaves it. One with a "{part}" (any text)
    must be the whole line: "{term} là gì?" is chat's when it is all the line says, and a file name
    in a part may hold a full stop; chat puts each of those on a line of its own."""
    shapes = []
    for sentence in sentences:
        shape = re.escape(plain_text(sentence.replace(" {cite}", "")))
        shapes.append(f"^{_SLOT.sub('.+', shape)}$" if _SLOT.search(shape) else shape)
    # Longest first, so a sentence holding a shorter one is removed whole.
    return re.compile("|".join(sorted(shapes, key=len, reverse=True)))


_STOCK = _stock_pattern(STOCK_SENTENCES)


def without_quotes(answer: str) -> str:
    """An assistant answer without its quoted lines: passages of the student's files, their source."""
    return "\n".join(line for line in answer.splitlines() if not _QUOTE.match(line))


def searchable_text(role: int, content: str) -> str:
    """What of a message the index holds and its search snippet shows."""
    content = unicodedata.normalize("NFC", content)
    if role != storage_pb2.ROLE_ASSISTANT:
        return plain_text(content)
    lines = (" ".join(_STOCK.sub(" ", line).split()) for line in plain_text(without_quotes(content)).splitlines())
    return "\n".join(line for line in lines if line)
