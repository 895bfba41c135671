"""When the material answers a question: the abstention rule and what chat says when it abstains.

A question is answerable when at least one retrieved passage is about it: the passage holds enough of
what the question asks (storage's query_coverage, the idf-weighted share of the question's terms it
holds, comparable across questions where a BM25 score is not), or is close in meaning (the cosine of
the embeddings). Vector search always returns its nearest neighbours and BM25 matches any shared
word, so without this rule an off-topic question ("Thủ đô của nước Pháp là gì?") was answered with
quotes from unrelated passages. The thresholds were chosen on bench/retrieval_eval.py's answerable
and unanswerable questions (BENCHMARKS.md: abstention precision and recall).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from studyassist.storage.v1 import storage_pb2

from chat.text import detect_language

# Chosen on the retrieval evaluation (bench/retrieval_eval.py, "Abstention"): for the most abstentions
# on 170 questions no passage answers while refusing at most 5 % of 320 answerable ones. Fitted on all
# of them: coverage 0.29 with cosine 0.65; fitted leaving each subject out in turn: 0.27 to 0.30
# (abstention precision 0.88, recall 0.68 on the subjects left out); this is those folds' median.
DEFAULT_MIN_COVERAGE = 0.28
# Cosine of the default embedding model (all-MiniLM-L6-v2) from which a passage is close in meaning
# whatever words it shares. Another EMBEDDING_MODEL needs its own value (CHAT_ABSTAIN_MIN_VECTOR; the
# evaluation fits the pair for the model it runs with).
DEFAULT_MIN_VECTOR = 0.65


@dataclass(frozen=True, slots=True)
class Grounding:
    min_coverage: float = DEFAULT_MIN_COVERAGE
    min_vector: float = DEFAULT_MIN_VECTOR

    def relevant(self, hit: storage_pb2.ChunkHit) -> bool:
        return hit.query_coverage >= self.min_coverage or hit.vector_score >= self.min_vector

    def answerable(self, hits: Sequence[storage_pb2.ChunkHit]) -> bool:
        return any(self.relevant(hit) for hit in hits)

    def passages(self, hits: Sequence[storage_pb2.ChunkHit]) -> list[storage_pb2.ChunkHit]:
        """The hits to answer from: none when no hit is about the question; else the relevant ones."""
        return [hit for hit in hits if self.relevant(hit)]


# Reciprocal-rank fusion's usual constant: a hit's share falls slowly with its rank.
RRF_K = 60


def fuse_hits(
    first: Sequence[storage_pb2.ChunkHit], second: Sequence[storage_pb2.ChunkHit], limit: int
) -> list[storage_pb2.ChunkHit]:
    """Two searches' hits (the question and its translation) as one list by reciprocal rank; a chunk
    both found keeps the hit that is more about its query (each coverage is of its own query)."""
    score: dict[str, float] = {}
    best: dict[str, storage_pb2.ChunkHit] = {}
    for hits in (first, second):
        for rank, hit in enumerate(hits):
            score[hit.chunk_id] = score.get(hit.chunk_id, 0.0) + 1.0 / (RRF_K + rank + 1)
            kept = best.get(hit.chunk_id)
            if kept is None or (hit.query_coverage, hit.vector_score) > (kept.query_coverage, kept.vector_score):
                best[hit.chunk_id] = hit
    order = sorted(score, key=lambda chunk_id: -score[chunk_id])
    return [best[chunk_id] for chunk_id in order[:limit]]


def material_language(hits: Sequence[storage_pb2.ChunkHit]) -> str | None:
    """The language of the passages retrieved (relevant or not): that of the student's material."""
    sample = " ".join(hit.text[:300] for hit in hits[:3])
    return detect_language(sample) if sample.strip() else None


_ABSTAIN = {
    "vi": {
        "none": "Tài liệu của bạn không trả lời câu hỏi này: không có đoạn nào đủ liên quan, nên mình không trích "
        "dẫn nguồn nào.",
        "empty": "Mình chưa tìm thấy đoạn tài liệu nào: có thể bạn chưa tải tài liệu lên, hoặc tài liệu vẫn đang "
        "được xử lý.",
        "upload": "Hãy tải lên bài giảng, giáo trình hoặc ghi chú có nội dung này (trang Tài liệu), hoặc hỏi lại "
        "bằng thuật ngữ mà tài liệu dùng.",
        "selected": "Bạn đang hỏi trong {count} tài liệu đã chọn: hãy thử chọn «Dùng tất cả tài liệu».",
        "closest": "Đoạn gần nhất (nhưng chưa đủ liên quan) nằm ở {where}.",
        "cross": "Câu hỏi viết bằng tiếng Anh còn tài liệu bằng tiếng Việt: hãy hỏi bằng tiếng Việt. Tìm kiếm "
        "giữa hai ngôn ngữ cần kết nối một mô hình ngôn ngữ (để dịch câu hỏi) hoặc một mô hình embedding đa "
        "ngôn ngữ (EMBEDDING_MODEL, xem README).",
    },
    "en": {
        "none": "Your material does not answer this question: no passage is relevant enough, so I cite none.",
        "empty": "I found no passages at all: you may not have uploaded any documents yet, or they are still "
        "being processed.",
        "upload": "Upload the lecture, textbook chapter or notes that cover it (Documents page), or ask again "
        "with the terms your material uses.",
        "selected": "You are asking within {count} selected documents: try “Use all documents”.",
        "closest": "The closest passage (not relevant enough) is in {where}.",
        "cross": "Your question is in English and your material in Vietnamese: ask in Vietnamese. Searching "
        "across languages needs a connected language model (to translate the question) or a multilingual "
        "embedding model (EMBEDDING_MODEL, see the README).",
    },
}


def abstention_notice(
    language: str,
    hits: Sequence[storage_pb2.ChunkHit],
    *,
    selected_files: int,
    cross_language: bool,
    closest: str,
) -> str:
    """What chat says, in the student's language, when the material does not answer: that, and what
    to upload or where to look."""
    text = _ABSTAIN[language]
    lines = [text["none"] if hits else text["empty"]]
    if cross_language:
        lines.append(text["cross"])
    if selected_files:
        lines.append(text["selected"].format(count=selected_files))
    lines.append(text["upload"])
    if closest:
        lines.append(text["closest"].format(where=closest))
    return "\n\n".join(lines)
