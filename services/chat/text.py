"""Pure text helpers: reply language, greetings, question normalisation, titles, token estimates."""

from __future__ import annotations

import re
import unicodedata

# Letters only Vietnamese uses among the languages students write here (base letters and tone marks).
_VI_LETTERS = set("ăâđêôơưĂÂĐÊÔƠƯ")
_VI_TONE_MARKS = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}
# Frequent Vietnamese words as students type them without accents.
_VI_WORDS = {
    "la", "gi", "cua", "khong", "nhung", "duoc", "trong", "voi", "lam", "sao", "vay", "giai", "thich", "bai",
    "cho", "em", "anh", "toi", "minh", "cac", "mot", "nay", "nao", "the", "thi", "hay", "ve", "co", "bao",
    "nhieu", "tai", "cach", "hoc", "mon", "chuong",
}  # fmt: skip
_EN_WORDS = {
    "the", "is", "what", "how", "why", "a", "an", "of", "to", "in", "and", "does", "do", "can", "explain",
    "are", "for", "this", "that", "with", "which", "me", "please", "summarise", "summarize",
}  # fmt: skip
_WORD = re.compile(r"\w+", re.UNICODE)


def fold_accents(text: str) -> str:
    """Lower-case ASCII-ish text: Vietnamese tone marks and diacritics removed, đ -> d."""
    decomposed = unicodedata.normalize("NFD", text.lower().replace("đ", "d").replace("Đ", "d"))
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def detect_language(text: str) -> str:
    """ "vi" or "en": Vietnamese letters or tone marks decide; else common unaccented words vote."""
    decomposed = unicodedata.normalize("NFD", text)
    marks = sum(1 for ch in decomposed if ch in _VI_TONE_MARKS or ch in _VI_LETTERS)
    if marks >= 2 or (marks == 1 and len(text) < 40):
        return "vi"
    words = _WORD.findall(fold_accents(text))
    vi = sum(1 for w in words if w in _VI_WORDS)
    en = sum(1 for w in words if w in _EN_WORDS)
    return "vi" if vi > en else "en"


_GREETINGS = {
    "hi", "hello", "hey", "hi there", "hello there", "good morning", "good afternoon", "good evening",
    "thanks", "thank you", "thanks a lot", "ok", "okay", "bye", "goodbye",
    "xin chao", "chao", "chao ban", "chao em", "chao anh", "chao chi", "hello ban", "hi ban",
    "cam on", "cam on ban", "cam on nhieu", "tam biet", "alo",
}  # fmt: skip


def normalise_question(text: str) -> str:
    """The form used for cache keys: NFC, lower case, single spaces, no trailing punctuation."""
    text = unicodedata.normalize("NFC", text).lower()
    text = " ".join(text.split())
    return text.strip(" ?!.,;:…")


def is_greeting(text: str) -> bool:
    """A trivial turn (hello, thanks, bye) that needs no retrieval."""
    folded = " ".join(_WORD.findall(fold_accents(text)))
    return len(folded) <= 30 and folded in _GREETINGS


def greeting_reply(text: str, language: str) -> str:
    folded = fold_accents(text)
    thanks = "cam on" in folded or "thank" in folded
    bye = "bye" in folded or "tam biet" in folded
    if language == "vi":
        if thanks:
            return "Không có gì! Bạn cứ hỏi tiếp nếu còn chỗ nào chưa rõ trong tài liệu nhé."
        if bye:
            return "Tạm biệt! Chúc bạn học tốt."
        return "Xin chào! Mình là trợ lý học tập của bạn. Hãy hỏi mình về tài liệu bạn đã tải lên nhé."
    if thanks:
        return "You're welcome! Ask again whenever something in your material is unclear."
    if bye:
        return "Goodbye, and good luck with your studies!"
    return "Hello! I'm your study assistant. Ask me anything about the material you've uploaded."


def make_title(question: str, max_chars: int = 60) -> str:
    """A short session title from the first question: its first words, cut at a word boundary."""
    words = " ".join(question.split()).strip(" ?!.,;:")
    if len(words) <= max_chars:
        return words or "New chat"
    cut = words[:max_chars].rsplit(" ", 1)[0]
    return (cut or words[:max_chars]).rstrip(" ,;:") + "…"


def estimate_tokens(text: str) -> int:
    """Roughly how many model tokens ``text`` takes (about 4 characters a token, 1 at least)."""
    return max(1, (len(text) + 3) // 4)
