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

    def source_label(self, language: str) -> str:
        where = location(self.hit.file_name, self.hit.page, self.hit.heading, language)
        return f"{self.hit.file_name}, {where}" if where else self.hit.file_name


_PLACE = {
    "vi": {"page": "trang {n}", "slide": "trang chiếu {n}"},
    "en": {"page": "page {n}", "slide": "slide {n}"},
}


def location(file_name: str, page: int, heading: str, language: str) -> str:
    """Where in its file a passage is, in the answer's language: a PPTX passage's page is its slide;
    the heading path when the chunk has one ("Chương 2 › Ngăn xếp")."""
    parts: list[str] = []
    if page:
        kind = "slide" if file_name.lower().endswith(".pptx") else "page"
        parts.append(_PLACE[language][kind].format(n=page))
    if heading:
        parts.append(f"«{heading}»" if language == "vi" else f"“{heading}”")
    return ", ".join(parts)


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + "…"


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


def format_context(passages: Sequence[Passage], language: str) -> str:
    return "\n\n".join(f"[{p.index}] ({p.source_label(language)})\n{p.text}" for p in passages)


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


QUOTE_CHARS = 600
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
# A line of code that lost its fence in extraction (PDF, DOCX): a statement end, a brace, an include.
_CODE_LINE = re.compile(r"(;|\{|\})\s*$|^\s*(#include|def |class |return\b|for\s*\(|while\s*\(|if\s*\()|^\s*\}")


def format_quote(text: str, limit: int = QUOTE_CHARS) -> list[str]:
    """A passage as Markdown block-quote lines that show it as it was written: line breaks kept,
    code kept in a fenced block (a fence the passage has, or one put around runs of code-looking
    lines), headings demoted to bold (a "# Title" line would render as a page-wide heading), display
    math on its own lines. Cut at a line end after about ``limit`` characters, closing an open fence."""
    lines: list[str] = []
    used = 0
    in_fence = False
    in_code = False  # a run of unfenced code lines we fenced
    for raw in text.strip().splitlines():
        line = raw.rstrip()
        if used >= limit:
            lines.append("…")
            break
        if _FENCE.match(line):
            if in_code:
                lines.append("```")
                in_code = False
            in_fence = not in_fence
            lines.append(line.strip())
        elif in_fence:
            lines.append(line)
        elif _CODE_LINE.search(line):
            if not in_code:
                lines.append("```")
                in_code = True
            lines.append(line)
        else:
            if in_code:
                lines.append("```")
                in_code = False
            heading = _HEADING.match(line)
            lines.append(f"**{heading.group(1)}**" if heading else line.strip())
        used += len(line) + 1
    if in_fence or in_code:
        lines.append("```")
    return [f"> {line}".rstrip() for line in lines]
