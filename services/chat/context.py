"""Passages into the context budget, citations out of the answer, and the extractive answer."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from studyassist.common.v1 import common_pb2
from studyassist.storage.v1 import storage_pb2

from chat.text import estimate_tokens

SNIPPET_CHARS = 300
_CITE = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved chunk as it goes into the prompt, numbered for inline citations."""

    index: int
    hit: storage_pb2.ChunkHit
    text: str

    def citation(self) -> common_pb2.Citation:
        return common_pb2.Citation(
            index=self.index,
            file_id=self.hit.file_id,
            file_name=self.hit.file_name,
            page=self.hit.page,
            heading=self.hit.heading,
            snippet=snippet(self.hit.text),
            chunk_id=self.hit.chunk_id,
            score=self.hit.score,
        )

    def source_label(self) -> str:
        where = f", page {self.hit.page}" if self.hit.page else ""
        return f"{self.hit.file_name}{where}"


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + "…"


# Cosine similarity under which a hit that shares no word with the question is noise: vector search
# always returns its nearest neighbours, relevant or not. (MiniLM: unrelated text scores ~0-0.2.)
MIN_VECTOR_SCORE = 0.25


def relevant_hits(hits: Sequence[storage_pb2.ChunkHit]) -> list[storage_pb2.ChunkHit]:
    """Hits that match the question's words or are close in meaning; the rest are dropped so that an
    off-topic question gets "nothing found" instead of quotes from unrelated passages."""
    return [h for h in hits if h.text_score > 0 or h.vector_score >= MIN_VECTOR_SCORE]


def pack_passages(hits: Sequence[storage_pb2.ChunkHit], budget_tokens: int) -> list[Passage]:
    """The best hits, in order, that fit ``budget_tokens``; duplicates of one chunk kept once.

    A hit that does not fit whole is cut to the space left when at least a useful part fits,
    so the top passage always gets in, even when it alone is larger than the budget.
    """
    passages: list[Passage] = []
    seen: set[str] = set()
    left = budget_tokens
    for hit in hits:
        if hit.chunk_id in seen or not hit.text.strip():
            continue
        cost = estimate_tokens(hit.text) + 12  # the "[n] file, page" header line
        text = hit.text
        if cost > left:
            room_chars = (left - 12) * 4
            if room_chars < 200:
                break
            text = hit.text[:room_chars].rsplit(" ", 1)[0] + " …"
            cost = left
        seen.add(hit.chunk_id)
        passages.append(Passage(len(passages) + 1, hit, text))
        left -= cost
    return passages


def format_context(passages: Sequence[Passage]) -> str:
    return "\n\n".join(f"[{p.index}] ({p.source_label()})\n{p.text}" for p in passages)


def cited_indices(answer: str, count: int) -> list[int]:
    """Passage numbers the answer cites inline as [n], in order of first mention, valid ones only."""
    found: list[int] = []
    for match in _CITE.finditer(answer):
        index = int(match.group(1))
        if 1 <= index <= count and index not in found:
            found.append(index)
    return found


def answer_citations(answer: str, passages: Sequence[Passage]) -> list[common_pb2.Citation]:
    """Citations for the passages the answer cites; all given passages when it cites none inline
    (a small model may not write [n] markers, yet its answer still came from those passages)."""
    indices = cited_indices(answer, len(passages))
    chosen = [passages[i - 1] for i in indices] if indices else list(passages)
    return [p.citation() for p in chosen]


NO_LLM_NOTICE = {
    "vi": "Chưa kết nối mô hình ngôn ngữ nào, nên đây là các đoạn liên quan nhất "
    "được trích nguyên văn từ tài liệu của bạn:",
    "en": "No language model is connected, so here are the most relevant passages quoted from your documents:",
}
NOTHING_FOUND = {
    "vi": "Mình không tìm thấy nội dung liên quan trong tài liệu của bạn cho câu hỏi này.",
    "en": "I found nothing relevant to this question in your documents.",
}
NO_LLM_SHORT = {
    "vi": "(Chưa kết nối mô hình ngôn ngữ nào.)",
    "en": "(No language model is connected.)",
}


def extractive_answer(passages: Sequence[Passage], language: str, max_quotes: int = 3) -> str:
    """The answer when no LLM is reachable: a plain notice, then the best passages quoted and cited."""
    if not passages:
        return f"{NOTHING_FOUND[language]} {NO_LLM_SHORT[language]}"
    lines = [NO_LLM_NOTICE[language], ""]
    for passage in passages[:max_quotes]:
        quote = snippet(passage.hit.text, 600)
        lines.append(f"> {quote} [{passage.index}]")
        lines.append(f"> — {passage.source_label()}")
        lines.append("")
    return "\n".join(lines).rstrip()
