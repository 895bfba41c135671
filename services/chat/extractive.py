"""Answers without an LLM that still follow the agent: quotes, a summary, the defining sentence first,
practice questions, or Socratic hints, all sentences taken word for word from the cited passages.

Sentences are ranked by TextRank (Mihalcea and Tarau 2004): a graph of the passages' sentences, each
edge the overlap of two sentences' content words normalised by their lengths, ranked by PageRank.
Small and dependency-free (numpy); the passages of one answer hold a few dozen sentences.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from studyassist.core.stopwords import STOP_WORDS

from chat.context import Passage, format_quote
from chat.text import fold_accents

# What each agent's extractive answer is (agents.toml, `extractive`).
STYLES = ("quotes", "summary", "definition", "questions", "socratic")

_WORD = re.compile(r"[^\W_]+")
_STOP_FOLDED = frozenset(fold_accents(w) for w in STOP_WORDS)
# Where a sentence ends: after . ! ? … (and a space), at a line break, or before a list bullet.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?…])\s+|\s*\n+\s*")
MIN_SENTENCE_CHARS = 25
MAX_SENTENCE_CHARS = 400
# "X là Y", "X được gọi là Y", "X is a Y": a sentence that says what something is.
_DEFINES = re.compile(
    # The term holds no comma: "Trong UNIX, fork() tạo tiến trình con là bản sao ..." defines no
    # "Trong UNIX, fork() ...". "X are Y" is left out: plural sentences rarely define ("Balanced
    # parentheses are checked with a stack").
    r"^(?P<term>[^.!?:;,]{2,80}?)\s+(?:được gọi là|được định nghĩa là|được hiểu là|là|is an?|is the|refers to|means)"
    r"\s+(?P<rest>.{8,})$",
    re.IGNORECASE | re.DOTALL,
)
# A line of code, not prose: braces, a statement's closing semicolon, a keyword with its syntax. A
# semicolon inside a sentence is prose (Vietnamese notes use it often).
_CODE_HINT = re.compile(r"[{}]|;\s*$|\b(?:int|void|def|return|class|public)\b.*[;({:]|#include|==|->|\+\+")


@dataclass(frozen=True, slots=True)
class Sentence:
    passage: Passage
    position: int  # within its passage
    text: str

    @property
    def cite(self) -> str:
        return f"[{self.passage.index}]"


def prose_sentences(text: str) -> list[str]:
    """The prose sentences of one passage, in order; code, formulas and fragments left out."""
    found: list[str] = []
    for piece in _SENTENCE_BREAK.split(text):
        sentence = piece.strip(" -*•\t")
        if (
            len(sentence) < MIN_SENTENCE_CHARS
            or _CODE_HINT.search(sentence)
            or sentence.startswith(("#", "$", "|", "```"))
        ):
            continue
        if len(sentence) > MAX_SENTENCE_CHARS:
            sentence = sentence[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " …"
        found.append(sentence)
    return found


def sentences_of(passages: Sequence[Passage]) -> list[Sentence]:
    """The prose sentences of the passages, in order; code, formulas and fragments left out."""
    return [
        Sentence(passage, position, text)
        for passage in passages
        for position, text in enumerate(prose_sentences(passage.hit.text))
    ]


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(fold_accents(text)) if w not in _STOP_FOLDED and not w.isdigit()}


def textrank(sentences: Sequence[Sentence], damping: float = 0.85, iterations: int = 50) -> list[float]:
    """Each sentence's TextRank score (they sum to 1)."""
    n = len(sentences)
    if n == 0:
        return []
    words = [content_words(s.text) for s in sentences]
    weights = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            shared = len(words[i] & words[j])
            if shared:
                weights[i, j] = weights[j, i] = shared / (math.log(len(words[i]) + 1) + math.log(len(words[j]) + 1))
    sums = weights.sum(axis=1, keepdims=True)
    transition = np.where(sums > 0, weights / np.where(sums > 0, sums, 1), 1.0 / n)
    scores = np.full(n, 1.0 / n)
    for _ in range(iterations):
        scores = (1 - damping) / n + damping * transition.T @ scores
    return [float(x) for x in scores]


def _relevance(sentence: Sentence, question_words: set[str]) -> float:
    words = content_words(sentence.text)
    return len(words & question_words) / (len(question_words) or 1)


def definition(sentence: str) -> tuple[str, str] | None:
    """(term, what it is) when the sentence defines a short term: "Ngăn xếp là cấu trúc ..."."""
    match = _DEFINES.match(sentence)
    if match is None:
        return None
    term = match.group("term").strip(" ,:")
    if len(term.split()) > 8:
        return None
    return term, match.group("rest").strip()


_TEXT = {
    "vi": {
        "notice": "Chưa kết nối mô hình ngôn ngữ nào, nên câu trả lời dưới đây được trích nguyên văn từ tài liệu "
        "của bạn.",
        "quotes": "Các đoạn liên quan nhất:",
        "summary": "Tóm tắt (các câu quan trọng nhất của những đoạn được trích):",
        "definition": "Ý chính:",
        "details": "Chi tiết trong tài liệu:",
        "questions": "Câu hỏi ôn tập từ tài liệu:",
        "answers": "Đáp án:",
        "what_is": "{term} là gì?",
        "fill": "Điền vào chỗ trống: «{blanked}»",
        "socratic": "Thử tự trả lời trước nhé. Vài câu hỏi gợi mở:",
        "look": "Gợi ý: đọc lại {where}, rồi tự diễn đạt câu trả lời bằng lời của bạn.",
        "explain_why": "Vì sao điều này đúng, và nó liên hệ thế nào với câu hỏi của bạn?",
    },
    "en": {
        "notice": "No language model is connected, so the answer below is quoted word for word from your documents.",
        "quotes": "The most relevant passages:",
        "summary": "Summary (the key sentences of the cited passages):",
        "definition": "Key idea:",
        "details": "In your material:",
        "questions": "Practice questions from your material:",
        "answers": "Answers:",
        "what_is": "What is {term}?",
        "fill": "Fill in the blank: “{blanked}”",
        "socratic": "Try answering it yourself first. A few guiding questions:",
        "look": "Hint: reread {where}, then put the answer in your own words.",
        "explain_why": "Why is this true, and how does it relate to your question?",
    },
}


def _quotes(passages: Sequence[Passage], language: str, count: int) -> list[str]:
    lines: list[str] = []
    for passage in passages[:count]:
        lines += format_quote(passage.hit.text)
        lines.append(f"> — {passage.source_label(language)} [{passage.index}]")
        lines.append("")
    return lines


def _summary(passages: Sequence[Passage], question: str, language: str, sentences_wanted: int = 5) -> list[str]:
    sentences = sentences_of(passages)
    if not sentences:
        return [_TEXT[language]["quotes"], "", *_quotes(passages, language, 3)]
    # Central sentences (TextRank), those about the student's question first among equals: a cited
    # passage that is long but less on topic must not fill the summary.
    asked = content_words(question)
    ranks = textrank(sentences)
    scores = [rank * (1 + 2 * _relevance(s, asked)) for rank, s in zip(ranks, sentences, strict=True)]
    best = sorted(range(len(sentences)), key=lambda i: -scores[i])[:sentences_wanted]
    chosen = sorted(best, key=lambda i: (sentences[i].passage.index, sentences[i].position))
    return [_TEXT[language]["summary"], "", *(f"- {sentences[i].text} {sentences[i].cite}" for i in chosen)]


def _lead(passages: Sequence[Passage], question: str) -> Sentence | None:
    """The sentence to lead with: a definition about the question's words, else the most central one."""
    sentences = sentences_of(passages[:3])
    if not sentences:
        return None
    asked = content_words(question)
    scores = textrank(sentences)

    def score(i: int) -> tuple[float, float, float]:
        s = sentences[i]
        return (float(definition(s.text) is not None) + _relevance(s, asked), -s.passage.index, scores[i])

    return sentences[max(range(len(sentences)), key=score)]


def _definition(passages: Sequence[Passage], question: str, language: str) -> list[str]:
    lead = _lead(passages, question)
    lines: list[str] = []
    if lead is not None:
        lines += [f"**{_TEXT[language]['definition']}** {lead.text} {lead.cite}", ""]
    return [*lines, _TEXT[language]["details"], "", *_quotes(passages, language, 2)]


def practice_questions(
    passages: Sequence[Passage], question: str, language: str, wanted: int = 4
) -> list[tuple[str, str, Passage]]:
    """(question, answer, passage) pairs made from the passages' sentences, those about the student's
    question first, then by TextRank: "X là gì?" from a sentence defining X, else a cloze of the
    sentence's most specific word pair."""
    sentences = sentences_of(passages)
    scores = textrank(sentences)
    asked = content_words(question)
    order = sorted(range(len(sentences)), key=lambda i: (-_relevance(sentences[i], asked), -scores[i]))
    made: list[tuple[str, str, Passage]] = []
    defined: set[str] = set()
    for i in order:  # definitions first
        found = definition(sentences[i].text)
        if found is not None and fold_accents(found[0]) not in defined:
            defined.add(fold_accents(found[0]))
            made.append((_TEXT[language]["what_is"].format(term=found[0]), found[1], sentences[i].passage))
        if len(made) >= wanted:
            return made
    used = {a for _, a, _ in made}
    for i in order:
        sentence = sentences[i]
        if sentence.text in used or definition(sentence.text) is not None:
            continue
        blank = _cloze_word(sentence.text)
        if blank is None:
            continue
        blanked = sentence.text.replace(blank, "_____", 1)
        made.append((_TEXT[language]["fill"].format(blanked=blanked), blank, sentence.passage))
        if len(made) >= wanted:
            break
    return made


def _cloze_word(sentence: str) -> str | None:
    """The longest run of one or two content words of the sentence (the most specific term)."""
    words = [w for w in re.findall(r"[^\W_]+", sentence) if fold_accents(w) not in _STOP_FOLDED]
    if not words:
        return None
    pairs = [f"{a} {b}" for a, b in itertools.pairwise(words) if f"{a} {b}" in sentence]
    candidates = pairs or words
    best = max(candidates, key=len)
    return best if len(best) >= 4 else None


def _questions(passages: Sequence[Passage], question: str, language: str) -> list[str]:
    made = practice_questions(passages, question, language)
    if not made:
        return [_TEXT[language]["quotes"], "", *_quotes(passages, language, 3)]
    lines = [_TEXT[language]["questions"], ""]
    lines += [f"{n}. {q}" for n, (q, _, _) in enumerate(made, 1)]
    lines += ["", f"**{_TEXT[language]['answers']}**", ""]
    lines += [f"{n}. {a} [{p.index}]" for n, (_, a, p) in enumerate(made, 1)]
    return lines


def _socratic(passages: Sequence[Passage], question: str, language: str) -> list[str]:
    made = practice_questions(passages[:2], question, language, wanted=2)
    lines = [_TEXT[language]["socratic"], ""]
    lines += [f"- {q}" for q, _, _ in made]
    lines.append(f"- {_TEXT[language]['explain_why']}")
    where = "; ".join(f"{p.source_label(language)} [{p.index}]" for p in passages[:2])
    lines += ["", _TEXT[language]["look"].format(where=where)]
    return lines


def extractive_answer(style: str, passages: Sequence[Passage], question: str, language: str) -> str:
    """The agent's answer from ``passages`` (not empty) without an LLM."""
    notice = _TEXT[language]["notice"]
    if style == "summary":
        body = _summary(passages, question, language)
    elif style == "definition":
        body = _definition(passages, question, language)
    elif style == "questions":
        body = _questions(passages, question, language)
    elif style == "socratic":
        body = _socratic(passages, question, language)
    else:
        body = [_TEXT[language]["quotes"], "", *_quotes(passages, language, 3)]
    return "\n".join([notice, "", *body]).rstrip()
