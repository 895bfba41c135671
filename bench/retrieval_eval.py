"""Retrieval quality on our own Vietnamese study material, through the real storage service.

    .venv/bin/python -m bench.retrieval_eval               # every subject under bench/data/retrieval
    .venv/bin/python -m bench.retrieval_eval --quick       # two subjects
    .venv/bin/python -m bench.retrieval_eval --weights 0,0.1,0.25,0.5,1   # the fusion sweep
    EMBEDDING_MODEL=/models/multilingual-e5-small .venv/bin/python -m bench.retrieval_eval

The data (bench/data/retrieval/<subject>.json) was written for this project: lecture-note passages
on PTIT subjects (Vietnamese, a few English), and questions as students ask them (keywords, full
questions, paraphrases sharing few words with the passage, typed without diacritics, English about
the Vietnamese notes), each with its one gold passage. Every passage is uploaded as its own .txt file
(ingestion chunks it, as it does a student's files); a hit counts for the passage of its file.

Printed, in one run, all through SearchChunks (top_k 10): recall@1/5/10 and MRR@10 for the product
(hybrid), lexical only (BM25), vectors only, and the previous product's text ranking (ts_rank_cd on
the same chunks) as the baseline; each question kind apart; every Vietnamese question again typed
without diacritics; and the fusion sweep: the product's fusion function applied to the two rankings
the service returned, at each weight (the service's own hybrid row must equal the sweep's row at its
configured weight, which this checks).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import math
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncpg
import grpc
from chat.grounding import Grounding
from storage import bm25
from storage.config import DEFAULT_VECTOR_WEIGHT
from storage.ranking import fuse_convex, fuse_rrf
from storage.textfold import fold, or_tsquery, query_terms
from studyassist.chat.v1 import chat_pb2, chat_pb2_grpc
from studyassist.core.channels import create_channel, user_metadata
from studyassist.core.embeddedpg import start_embedded_postgres
from studyassist.core.testing import ServiceProcess, spawn_service
from studyassist.storage.v1 import storage_pb2, storage_pb2_grpc

from bench.report import record

T = TypeVar("T")
DATA_DIR = Path(__file__).resolve().parent / "data" / "retrieval"
TOP_K = 10
# What each ranking brings to the fusion in the service (storage.servicer MIN_CANDIDATES).
CANDIDATES = 30
KINDS = ("keyword", "question", "paraphrase", "no_diacritics", "english_vi", "english")
VIETNAMESE_KINDS = ("keyword", "question", "paraphrase")


@dataclass(frozen=True)
class Question:
    query: str
    gold: str
    kind: str


@dataclass(frozen=True)
class Ranked:
    """One ranking of a question: passage ids best first, with the chunk scores they came with."""

    passages: list[str]
    scores: dict[str, float]  # chunk id -> score
    chunk_passage: dict[str, str]  # chunk id -> passage id
    hits: list[storage_pb2.ChunkHit] = field(default_factory=list)


@dataclass(frozen=True)
class Unanswerable:
    query: str
    kind: str  # off_topic | out_of_material
    subject: str  # general, or the subject whose field it is on


def load_unanswerable(data_dir: Path, subjects: Sequence[str] | None) -> list[Unanswerable]:
    """Questions no passage answers: off-topic ones, and ones on a subject's field that its
    passages do not cover (bench/data/retrieval/unanswerable.json)."""
    path = data_dir / "unanswerable.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        Unanswerable(q["query"], q["kind"], q["subject"])
        for q in data["questions"]
        if not subjects or q["subject"] in subjects or q["subject"] == "general"
    ]


def load(data_dir: Path, subjects: Sequence[str] | None) -> tuple[dict[str, str], list[Question]]:
    passages: dict[str, str] = {}
    questions: list[Question] = []
    for path in sorted(data_dir.glob("*.json")):
        if subjects and path.stem not in subjects:
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        if "passages" not in data:
            continue  # unanswerable.json: questions only (load_unanswerable)
        for passage in data["passages"]:
            passages[passage["id"]] = passage["text"]
        questions += [Question(q["query"], q["gold"], q["kind"]) for q in data["questions"]]
    return passages, questions


def metrics(rankings: Sequence[list[str]], golds: Sequence[str]) -> dict[str, float]:
    def recall(k: int) -> float:
        return statistics.mean(1.0 if gold in ranked[:k] else 0.0 for ranked, gold in zip(rankings, golds, strict=True))

    mrr = statistics.mean(
        1.0 / (ranked[:TOP_K].index(gold) + 1) if gold in ranked[:TOP_K] else 0.0
        for ranked, gold in zip(rankings, golds, strict=True)
    )
    return {"r@1": recall(1), "r@5": recall(5), "r@10": recall(10), "mrr": mrr}


def line(label: str, m: Mapping[str, float], count: int) -> str:
    return f"{label:52s} {m['r@1']:6.3f} {m['r@5']:6.3f} {m['r@10']:6.3f} {m['mrr']:6.3f}   ({count})"


HEADER = f"{'':52s} {'r@1':>6s} {'r@5':>6s} {'r@10':>6s} {'MRR':>6s}"


def dedupe(passage_ids: Sequence[str]) -> list[str]:
    """Passages in order of their best chunk (a passage ingested as two chunks counts once)."""
    return list(dict.fromkeys(passage_ids))


async def upload_all(
    stub: storage_pb2_grpc.StorageServiceAsyncStub, metadata: tuple[tuple[str, str], ...], passages: dict[str, str]
) -> tuple[dict[str, str], int]:
    """Each passage as its own .txt file: file id -> passage id, and the chunk count, once all are ready."""

    async def requests(passage_id: str, text: str) -> AsyncIterator[storage_pb2.UploadFileRequest]:
        yield storage_pb2.UploadFileRequest(metadata=storage_pb2.UploadMetadata(file_name=f"{passage_id}.txt"))
        yield storage_pb2.UploadFileRequest(chunk=text.encode("utf-8"))

    limit = asyncio.Semaphore(8)
    files: dict[str, str] = {}

    async def one(passage_id: str, text: str) -> None:
        async with limit:
            file = await stub.UploadFile(requests(passage_id, text), metadata=metadata)
            files[file.file_id] = passage_id

    await asyncio.gather(*(one(pid, text) for pid, text in passages.items()))
    deadline = time.monotonic() + 900
    while True:
        listed: list[storage_pb2.File] = []
        token = ""
        while True:
            page = await stub.ListFiles(
                storage_pb2.ListFilesRequest(page_size=100, page_token=token), metadata=metadata
            )
            listed += page.files
            token = page.next_page_token
            if not token:
                break
        failed = [f.file_name for f in listed if f.status == storage_pb2.FILE_STATUS_FAILED]
        if failed:
            raise SystemExit(f"ingestion failed for {failed[:5]}")
        if all(f.status == storage_pb2.FILE_STATUS_READY for f in listed) and len(listed) == len(passages):
            return files, sum(f.chunks_total for f in listed)
        if time.monotonic() > deadline:
            raise SystemExit("ingestion did not finish in 15 minutes")
        await asyncio.sleep(1.0)


async def search(
    stub: storage_pb2_grpc.StorageServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    files: dict[str, str],
    query: str,
    mode: storage_pb2.SearchMode,
    top_k: int,
) -> Ranked:
    try:
        response = await stub.SearchChunks(
            storage_pb2.SearchChunksRequest(query=query, top_k=top_k, mode=mode), metadata=metadata, timeout=30
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return Ranked([], {}, {})
        raise
    chunk_passage = {h.chunk_id: files[h.file_id] for h in response.hits}
    return Ranked(
        dedupe([files[h.file_id] for h in response.hits]),
        {h.chunk_id: h.score for h in response.hits},
        chunk_passage,
        list(response.hits),
    )


async def ts_rank_cd_baseline(
    database_url: str, user_id: str, files: dict[str, str], questions: Sequence[Question]
) -> list[list[str]]:
    """The previous product's text ranking (ts_rank_cd over the folded text, OR of the query's words,
    no IDF), on the same chunks, computed in SQL as it was."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TEMP TABLE baseline AS SELECT c.id, f.id AS file_id, to_tsvector('simple', c.text_folded) AS tsv "
            "FROM chunks c JOIN uploaded_files f ON f.document_id = c.document_id WHERE c.user_id = $1",
            uuid.UUID(user_id),
        )
        out: list[list[str]] = []
        for question in questions:
            terms = query_terms(question.query)
            if not terms:
                out.append([])
                continue
            found = await conn.fetch(
                "SELECT file_id, ts_rank_cd(tsv, q) AS rank FROM baseline, to_tsquery('simple', $1) q "
                "WHERE tsv @@ q ORDER BY rank DESC, id LIMIT $2",
                or_tsquery(terms),
                CANDIDATES,
            )
            out.append(dedupe([files[str(r["file_id"])] for r in found]))
        return out
    finally:
        await conn.close()


Tokenizer = Callable[[str], list[str]]


def _syllables(text: str) -> list[list[str]]:
    return [[w for w in clause] for clause in bm25._clauses(fold(text))]


def tokens_syllables(text: str) -> list[str]:
    return [w for clause in _syllables(text) for w in clause]


def tokens_bigrams(text: str) -> list[str]:
    out: list[str] = []
    for clause in _syllables(text):
        out += clause
        out += [f"{a} {b}" for a, b in itertools.pairwise(clause)]
    return out


def pyvi_tokenizer() -> Tokenizer | None:
    """pyvi's word segmenter, where it is installed (`pip install pyvi`: not a project dependency)."""
    try:
        segmenter = importlib.import_module("pyvi.ViTokenizer")
    except ImportError:
        return None

    def words(text: str) -> list[str]:
        segmented: str = segmenter.tokenize(text)
        return [fold(w).replace("_", " ") for w in segmented.split() if any(c.isalnum() for c in w)]

    return words


def in_process_bm25(
    chunks: Sequence[tuple[str, str]], queries: Sequence[str], document: Tokenizer, query: Tokenizer
) -> list[list[str]]:
    """Plain BM25 (k1 1.2, b 0.75) over ``chunks`` (text, passage id) with the given tokenisation."""
    import math
    from collections import Counter

    docs = [Counter(document(text)) for text, _ in chunks]
    lengths = [sum(d.values()) for d in docs]
    average = sum(lengths) / len(lengths)
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)
    out: list[list[str]] = []
    for text in queries:
        terms = list(dict.fromkeys(query(text)))
        scores = []
        for d, length in zip(docs, lengths, strict=True):
            score = 0.0
            for t in terms:
                tf = d.get(t, 0)
                if tf:
                    idf = math.log1p((n - df[t] + 0.5) / (df[t] + 0.5))
                    score += idf * tf * (bm25.K1 + 1) / (tf + bm25.K1 * (1 - bm25.B + bm25.B * length / average))
            scores.append(score)
        order = sorted((i for i, v in enumerate(scores) if v > 0), key=lambda i: -scores[i])[:TOP_K]
        out.append(dedupe([chunks[i][1] for i in order]))
    return out


async def chunk_texts(database_url: str, user_id: str, files: dict[str, str]) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT c.text, f.id AS file_id FROM chunks c JOIN uploaded_files f ON f.document_id = c.document_id "
            "WHERE c.user_id = $1 ORDER BY c.document_id, c.chunk_index",
            uuid.UUID(user_id),
        )
    finally:
        await conn.close()
    return [(r["text"], files[str(r["file_id"])]) for r in rows]


def fused(
    scored_terms: bool,
    lexical: Ranked,
    vector: Ranked,
    weight: float,
    fuse: Callable[[Mapping[str, float], Mapping[str, float], float], list[tuple[str, float]]],
) -> list[str]:
    if not scored_terms:
        return []  # stop words only: the service answers nothing
    if not lexical.scores:
        order = [c for c, _ in sorted(vector.scores.items(), key=lambda item: item[1], reverse=True)]
    elif not vector.scores or weight <= 0:
        order = [c for c, _ in sorted(lexical.scores.items(), key=lambda item: item[1], reverse=True)]
    else:
        order = [c for c, _ in fuse(lexical.scores, vector.scores, weight)]
    where = {**vector.chunk_passage, **lexical.chunk_passage}
    return dedupe([where[c] for c in order[:TOP_K]])


# Abstention is judged as a detector of questions the material does not answer (the positive class):
# precision = the abstentions that were right, recall = the unanswerable questions abstained on.
# The thresholds are chosen to abstain on as many unanswerable questions as possible while refusing
# at most this share of the answerable ones: a refused question the notes do answer costs the student
# more trust than a quote they can see is off the mark.
MAX_FALSE_ABSTENTION = 0.05
COVERAGES = [round(0.01 * i, 2) for i in range(0, 96)]
COSINES = [round(0.4 + 0.025 * i, 3) for i in range(21)] + [2.0]  # 2.0: the vectors never decide


@dataclass(frozen=True)
class Evidence:
    """What the abstention rule sees of a question's hits: chat's rule is "some hit has coverage >= c
    or some hit has cosine >= v", so the best of each decides."""

    coverage: float
    cosine: float
    bm25: float

    @classmethod
    def of(cls, ranked: Ranked) -> Evidence:
        hits = ranked.hits
        return cls(
            max((h.query_coverage for h in hits), default=0.0),
            max((h.vector_score for h in hits), default=0.0),
            max((h.text_score for h in hits), default=0.0),
        )


@dataclass(frozen=True)
class Judged:
    precision: float
    recall: float
    false_abstentions: int

    @property
    def f1(self) -> float:
        total = self.precision + self.recall
        return 2 * self.precision * self.recall / total if total else 0.0


def judge(answerable: Sequence[bool], unanswerable: Sequence[bool]) -> Judged:
    """From whether each question was abstained on."""
    false_abstentions, true_abstentions = sum(answerable), sum(unanswerable)
    made = false_abstentions + true_abstentions
    return Judged(
        true_abstentions / made if made else 1.0,
        true_abstentions / len(unanswerable) if unanswerable else 0.0,
        false_abstentions,
    )


def judge_rule(answerable: Sequence[Evidence], unanswerable: Sequence[Evidence], grounding: Grounding) -> Judged:
    def abstains(e: Evidence) -> bool:
        return not (e.coverage >= grounding.min_coverage or e.cosine >= grounding.min_vector)

    return judge([abstains(e) for e in answerable], [abstains(e) for e in unanswerable])


def best_of(candidates: Sequence[tuple[Judged, T]], answerable_count: int) -> tuple[Judged, T]:
    """The candidate with the best recall among those refusing at most MAX_FALSE_ABSTENTION of the
    answerable questions (ties: the better precision; the first, i.e. lowest thresholds)."""
    allowed = [c for c in candidates if c[0].false_abstentions <= MAX_FALSE_ABSTENTION * answerable_count]
    pool = allowed or [min(candidates, key=lambda c: c[0].false_abstentions)]
    return max(pool, key=lambda c: (c[0].recall, c[0].precision))


def fit_grounding(answerable: Sequence[Evidence], unanswerable: Sequence[Evidence]) -> Grounding:
    candidates = [
        (judge_rule(answerable, unanswerable, g), g) for g in (Grounding(c, v) for c in COVERAGES for v in COSINES)
    ]
    return best_of(candidates, len(answerable))[1]


def fit_one(
    answerable: Sequence[Evidence], unanswerable: Sequence[Evidence], score: Callable[[Evidence], float]
) -> tuple[Judged, float]:
    """A baseline: one threshold on one score (abstain under it), chosen the same way."""
    thresholds = [*sorted({score(e) for e in (*answerable, *unanswerable)}), math.inf]
    candidates = [
        (judge([score(e) < t for e in answerable], [score(e) < t for e in unanswerable]), t) for t in thresholds
    ]
    return best_of(candidates, len(answerable))


def report_abstention(
    answerable_questions: Sequence[Question],
    answerable: Sequence[Ranked],
    english_vi: Sequence[Ranked],
    unanswerable_questions: Sequence[Unanswerable],
    unanswerable: Sequence[Ranked],
    chat_abstained: Sequence[bool],
) -> None:
    yes = [Evidence.of(r) for r in answerable]
    no = [Evidence.of(r) for r in unanswerable]
    print(
        f"\n## Abstention: {len(yes)} answerable questions (English about the Vietnamese notes aside), "
        f"{len(no)} that no passage answers "
        f"({sum(u.kind == 'off_topic' for u in unanswerable_questions)} off-topic, "
        f"{sum(u.kind == 'out_of_material' for u in unanswerable_questions)} on a subject but not in its notes)"
    )
    print(
        "positive class: the material does not answer; precision = abstentions that were right; thresholds "
        f"fitted for the best recall refusing at most {MAX_FALSE_ABSTENTION:.0%} of the answerable questions"
    )
    print(f"{'rule':72s} {'prec':>6s} {'recall':>6s} {'F1':>6s} {'refused':>8s}")
    rows: list[tuple[str, Judged]] = []
    # What chat kept before (context.relevant_hits): a hit sharing any word, or with a cosine of 0.25.
    previous = judge(
        [not (e.bm25 > 0 or e.cosine >= 0.25) for e in yes], [not (e.bm25 > 0 or e.cosine >= 0.25) for e in no]
    )
    rows.append(("baseline: the previous filter (any shared word, or cosine >= 0.25)", previous))
    for label, score in (
        ("baseline: BM25 score alone", lambda e: e.bm25),
        ("baseline: cosine alone", lambda e: e.cosine),
        ("query coverage alone", lambda e: e.coverage),
    ):
        judged, threshold = fit_one(yes, no, score)
        rows.append((f"{label} (>= {threshold:.2f}), fitted here", judged))
    fitted = fit_grounding(yes, no)
    rows.append(
        (
            f"coverage >= {fitted.min_coverage:g} or cosine >= {fitted.min_vector:g}, fitted here",
            judge_rule(yes, no, fitted),
        )
    )
    product = Grounding()
    product_judged = judge_rule(yes, no, product)
    rows.append((f"product: coverage >= {product.min_coverage:g} or cosine >= {product.min_vector:g}", product_judged))
    # Leave one subject out: thresholds fitted on the other subjects' questions (the off-topic ones
    # dealt round the folds), judged on the subject left out; the folds' verdicts pooled.
    subject_of_answerable = [q.gold.split("-")[0] for q in answerable_questions]
    subjects = sorted(set(subject_of_answerable))
    general = [i for i, u in enumerate(unanswerable_questions) if u.subject == "general"]
    dealt = {index: subjects[n % len(subjects)] for n, index in enumerate(general)}
    subject_of_unanswerable = [dealt.get(i, u.subject) for i, u in enumerate(unanswerable_questions)]
    verdict_yes: list[bool] = []
    verdict_no: list[bool] = []
    fold_rules: list[str] = []
    for subject in subjects:
        rule = fit_grounding(
            [e for e, s in zip(yes, subject_of_answerable, strict=True) if s != subject],
            [e for e, s in zip(no, subject_of_unanswerable, strict=True) if s != subject],
        )
        fold_rules.append(f"{rule.min_coverage:g}/{rule.min_vector:g}")
        verdict_yes += [
            not (e.coverage >= rule.min_coverage or e.cosine >= rule.min_vector)
            for e, s in zip(yes, subject_of_answerable, strict=True)
            if s == subject
        ]
        verdict_no += [
            not (e.coverage >= rule.min_coverage or e.cosine >= rule.min_vector)
            for e, s in zip(no, subject_of_unanswerable, strict=True)
            if s == subject
        ]
    held_out = judge(verdict_yes, verdict_no)
    rows.append((f"fitted leaving each subject out (coverage/cosine {', '.join(fold_rules)})", held_out))
    for label, j in rows:
        print(f"{label:72s} {j.precision:6.3f} {j.recall:6.3f} {j.f1:6.3f} {j.false_abstentions:4d}/{len(yes)}")

    def refused(e: Evidence) -> bool:
        return not (e.coverage >= product.min_coverage or e.cosine >= product.min_vector)

    for kind in ("off_topic", "out_of_material"):
        picked = [e for u, e in zip(unanswerable_questions, no, strict=True) if u.kind == kind]
        print(f"product abstains on {sum(map(refused, picked))} of {len(picked)} {kind} questions")
    for kind in KINDS:
        picked = [e for q, e in zip(answerable_questions, yes, strict=True) if q.kind == kind]
        if picked:
            print(f"product refuses {sum(map(refused, picked))} of {len(picked)} answerable {kind} questions")
    found = [e for q, r, e in zip(answerable_questions, answerable, yes, strict=True) if q.gold in r.passages[:5]]
    print(
        f"answerable questions whose gold passage is in the top 5, refused anyway: {sum(map(refused, found))} "
        f"of {len(found)}"
    )
    cross = sum(refused(Evidence.of(r)) for r in english_vi)
    print(
        f"English questions about the Vietnamese notes refused (chat then says that cross-language questions "
        f"need an LLM or a multilingual model): {cross} of {len(english_vi)}"
    )
    if chat_abstained:
        print(
            f"chat (extractive) abstained, citing nothing, on {sum(chat_abstained)} of {len(chat_abstained)} "
            "unanswerable questions"
        )
    record(
        "retrieval_abstain_precision",
        product_judged.precision,
        f"abstention precision {product_judged.precision:.3f}, recall {product_judged.recall:.3f}, "
        f"{product_judged.false_abstentions} of {len(yes)} answerable refused ({len(no)} unanswerable questions)",
        f"previous filter: precision {previous.precision:.3f}, recall {previous.recall:.3f}; "
        f"leaving each subject out: {held_out.precision:.3f} / {held_out.recall:.3f}",
    )
    record(
        "retrieval_abstain_recall",
        product_judged.recall,
        f"abstains on {product_judged.recall:.1%} of the questions the material does not answer",
        f"previous filter {previous.recall:.1%}; leaving each subject out {held_out.recall:.1%}",
    )


async def abstention_through_chat(
    address: str, metadata: tuple[tuple[str, str], ...], questions: Sequence[Unanswerable]
) -> list[bool]:
    """Whether chat's answer to each unanswerable question cites nothing (it said the material lacks it)."""
    channel = create_channel(address, default_timeout=60)
    stub = chat_pb2_grpc.ChatServiceStub(channel)  # type: ignore[no-untyped-call]
    try:
        return [
            not (await stub.Chat(chat_pb2.ChatRequest(message=q.query), metadata=metadata)).citations for q in questions
        ]
    finally:
        await channel.close(None)


async def evaluate(args: argparse.Namespace) -> None:
    subjects = args.subjects.split(",") if args.subjects else (["dsa", "net"] if args.quick else None)
    passages, questions = load(Path(args.data), subjects)
    unanswerable = load_unanswerable(Path(args.data), subjects)
    if not questions:
        raise SystemExit(f"no data under {args.data}")
    weights = [float(w) for w in args.weights.split(",")]
    work = Path(tempfile.mkdtemp(prefix="retrieval-eval-"))
    pg = start_embedded_postgres(work / "pg", cleanup_mode="delete")
    processes: list[ServiceProcess] = []
    try:
        quiet = {"REDIS_URL": "", "LOG_LEVEL": "warning"}
        embedding_env = {"EMBEDDING_PORT": "0", **quiet, "LOG_LEVEL": "info"}
        if os.environ.get("EMBEDDING_MODEL"):
            embedding_env["EMBEDDING_MODEL"] = os.environ["EMBEDDING_MODEL"]
        embedding = spawn_service("embedding", embedding_env)
        processes.append(embedding)
        storage_env = {
            "STORAGE_PORT": "0",
            "DATABASE_URL": pg.get_uri(),
            "EMBEDDING_ADDR": embedding.address,
            "BLOB_DIR": str(work / "blobs"),
            **quiet,
            "LOG_LEVEL": "info",
        }
        if os.environ.get("SEARCH_VECTOR_WEIGHT"):
            storage_env["SEARCH_VECTOR_WEIGHT"] = os.environ["SEARCH_VECTOR_WEIGHT"]
        if os.environ.get("EMBEDDING_DIM"):
            storage_env["EMBEDDING_DIM"] = os.environ["EMBEDDING_DIM"]
        storage = spawn_service("storage", storage_env)
        processes.append(storage)
        # No LLM (a closed port): chat answers in extractive mode, quoting and citing what it retrieved.
        chat = spawn_service(
            "chat",
            {
                "CHAT_PORT": "0",
                "STORAGE_ADDR": storage.address,
                "EMBEDDING_ADDR": embedding.address,
                "LLM_BASE_URL": "http://127.0.0.1:9/v1",
                **quiet,
                "LOG_LEVEL": "info",
            },
        )
        processes.append(chat)
        product_weight = float(os.environ.get("SEARCH_VECTOR_WEIGHT", DEFAULT_VECTOR_WEIGHT))
        channel = create_channel(storage.address)
        stub = storage_pb2_grpc.StorageServiceStub(channel)  # type: ignore[no-untyped-call]
        user = await stub.CreateUser(storage_pb2.CreateUserRequest(email="eval@ptit.edu.vn", password_hash="h"))
        metadata = user_metadata(user.user_id)
        started = time.perf_counter()
        files, chunks = await upload_all(stub, metadata, passages)
        ingest_s = time.perf_counter() - started
        print(
            f"# Retrieval on our own data: {len(passages)} passages uploaded as files ({chunks} chunks, "
            f"ingested in {ingest_s:.0f} s), {len(questions)} questions, top_k {TOP_K}"
        )

        async def run(query: str, mode: storage_pb2.SearchMode, top_k: int) -> Ranked:
            return await search(stub, metadata, files, query, mode, top_k)

        golds = [q.gold for q in questions]
        product = [await run(q.query, storage_pb2.SEARCH_MODE_HYBRID, TOP_K) for q in questions]
        lexical = [await run(q.query, storage_pb2.SEARCH_MODE_LEXICAL, CANDIDATES) for q in questions]
        vector = [await run(q.query, storage_pb2.SEARCH_MODE_VECTOR, CANDIDATES) for q in questions]
        baseline = await ts_rank_cd_baseline(pg.get_uri(), user.user_id, files, questions)
        old_product = [
            dedupe(
                [
                    p
                    for p, _ in fuse_rrf(
                        {p: 1.0 / (i + 1) for i, p in enumerate(base)},
                        {p: 1.0 / (i + 1) for i, p in enumerate(vec.passages)},
                        1.0,
                    )
                ]
            )
            for base, vec in zip(baseline, vector, strict=True)
        ]
        rows = {
            "product: SearchChunks hybrid (BM25 + vectors, weighted)": [r.passages for r in product],
            "lexical only: BM25 (SEARCH_MODE_LEXICAL)": [r.passages[:TOP_K] for r in lexical],
            "vectors only (SEARCH_MODE_VECTOR)": [r.passages[:TOP_K] for r in vector],
            "baseline: ts_rank_cd, the previous text ranking": [b[:TOP_K] for b in baseline],
            "baseline: the previous product (equal RRF of the two)": [b[:TOP_K] for b in old_product],
        }
        print("\n## All questions")
        print(HEADER)
        results = {label: metrics(ranked, golds) for label, ranked in rows.items()}
        for label, m in results.items():
            print(line(label, m, len(questions)))

        print("\n## By kind of question (product | lexical | vectors: recall@5)")
        for kind in KINDS:
            picked = [i for i, q in enumerate(questions) if q.kind == kind]
            if not picked:
                continue
            cells = []
            for label in list(rows)[:3]:
                m = metrics([rows[label][i] for i in picked], [golds[i] for i in picked])
                cells.append(f"{m['r@5']:.3f}")
            print(f"{kind:14s} ({len(picked):3d})  " + " | ".join(cells))

        print("\n## Vietnamese questions typed with and without diacritics (the same questions, folded)")
        picked = [i for i, q in enumerate(questions) if q.kind in VIETNAMESE_KINDS]
        folded = [await run(fold(questions[i].query), storage_pb2.SEARCH_MODE_HYBRID, TOP_K) for i in picked]
        with_marks = metrics([rows[next(iter(rows))][i] for i in picked], [golds[i] for i in picked])
        without = metrics([r.passages for r in folded], [golds[i] for i in picked])
        print(HEADER)
        print(line("product, with diacritics", with_marks, len(picked)))
        print(line("product, typed without diacritics", without, len(picked)))
        loss = 1 - without["r@5"] / with_marks["r@5"] if with_marks["r@5"] else 0.0
        print(f"recall@5 lost without diacritics: {loss * 100:.1f} % (aim: at most 5 %)")

        print("\n## Chat (POST /v1/chat's RPC, extractive mode: no LLM), every n-th question")
        chat_channel = create_channel(chat.address, default_timeout=60)
        chat_stub = chat_pb2_grpc.ChatServiceStub(chat_channel)  # type: ignore[no-untyped-call]
        by_file = {file_id: passage for file_id, passage in files.items()}
        step = max(1, len(questions) // args.chat_questions)
        picked_for_chat = list(range(0, len(questions), step))[: args.chat_questions]
        asked = [questions[i] for i in picked_for_chat]
        product_rows = rows[next(iter(rows))]
        asked_recall = metrics([product_rows[i] for i in picked_for_chat], [golds[i] for i in picked_for_chat])["r@5"]
        # Each agent answers its own way without an LLM (and cites what its answer used): the default
        # (the Socratic tutor, which cites the two passages it points to) and the explainer (its
        # defining sentence and two quotes).
        cites: dict[str, tuple[int, int, int]] = {}
        for agent in ("", "explainer"):
            cited_any = cited_first = abstained = 0
            for question in asked:
                answer = await chat_stub.Chat(
                    chat_pb2.ChatRequest(message=question.query, agent_id=agent), metadata=metadata
                )
                cited = [by_file.get(c.file_id) for c in answer.citations]
                cited_any += question.gold in cited
                cited_first += bool(cited) and cited[0] == question.gold
                abstained += not cited
            cites[agent] = (cited_any, cited_first, abstained)
            print(
                f"{agent or 'default agent'}: answers citing the gold passage's file {cited_any} of {len(asked)}, "
                f"first citation the gold one {cited_first}, abstained (no citation) {abstained}"
            )
        await chat_channel.close(None)
        cited_any, cited_first, abstained = cites[""]
        record(
            "retrieval_chat_cites",
            100 * cited_any / len(asked),
            f"{cited_any} of {len(asked)} extractive answers (default agent) cite the gold passage "
            f"({cited_first} first, {abstained} abstained); explainer {cites['explainer'][0]}",
            f"SearchChunks recall@5 on the same questions {asked_recall:.3f}",
        )

        if unanswerable:
            answerable = [i for i, q in enumerate(questions) if q.kind != "english_vi"]
            unanswered = [await run(u.query, storage_pb2.SEARCH_MODE_HYBRID, TOP_K) for u in unanswerable]
            chat_abstained = await abstention_through_chat(chat.address, metadata, unanswerable)
            report_abstention(
                [questions[i] for i in answerable],
                [product[i] for i in answerable],
                [product[i] for i, q in enumerate(questions) if q.kind == "english_vi"],
                unanswerable,
                unanswered,
                chat_abstained,
            )

        print("\n## Lexical variants: plain BM25 in this process over the same chunks (design choices)")
        texts = await chunk_texts(pg.get_uri(), user.user_id, files)
        queries = [q.query for q in questions]
        variants: dict[str, tuple[Tokenizer, Tokenizer]] = {
            "syllables": (tokens_syllables, tokens_syllables),
            "syllables + bigrams, every query term": (tokens_bigrams, tokens_bigrams),
            "syllables + bigrams, stop words dropped (product)": (tokens_bigrams, bm25.query_terms),
        }
        segmenter = pyvi_tokenizer()
        if segmenter is not None:
            variants["pyvi words"] = (segmenter, segmenter)
            both = lambda text: segmenter(text) + tokens_syllables(text)  # noqa: E731
            variants["pyvi words + syllables"] = (both, both)
        else:
            print("(pyvi is not installed: `pip install pyvi` adds its word segmenter to this table)")
        print(HEADER)
        for name, (document, query) in variants.items():
            ranked = in_process_bm25(texts, queries, document, query)
            print(line(name, metrics(ranked, golds), len(questions)))

        print("\n## Fusion sweep: the service's two rankings fused offline by storage.ranking (r@1 r@5 MRR)")
        has_terms = [bool(bm25.query_terms(q.query)) for q in questions]
        vietnamese = [i for i, q in enumerate(questions) if q.kind not in ("english", "english_vi")]
        english = [i for i, q in enumerate(questions) if q.kind == "english"]
        print(f"{'fusion':28s} {'all':>18s} {'Vietnamese':>18s} {'English':>18s}")
        for name, fuse in (("rrf", fuse_rrf), ("convex", fuse_convex)):
            for weight in weights:
                ranked = [fused(has_terms[i], lexical[i], vector[i], weight, fuse) for i in range(len(questions))]
                cells = []
                for subset in (range(len(questions)), vietnamese, english):
                    part = metrics([ranked[i] for i in subset], [golds[i] for i in subset]) if subset else None
                    cells.append(f"{part['r@1']:.3f} {part['r@5']:.3f} {part['mrr']:.3f}" if part else "-")
                print(f"{name + f' vector weight {weight:g}':28s} " + " ".join(f"{c:>18s}" for c in cells))
        offline = [
            fused(has_terms[i], lexical[i], vector[i], product_weight, fuse_convex) for i in range(len(questions))
        ]
        same = sum(1 for a, b in zip(offline, product, strict=True) if a == b.passages)
        print(
            f"\nthe service's hybrid ranking equals the offline fusion at weight {product_weight:g} "
            f"for {same} of {len(questions)} questions"
        )

        best_single = max(
            results["lexical only: BM25 (SEARCH_MODE_LEXICAL)"]["r@5"],
            results["vectors only (SEARCH_MODE_VECTOR)"]["r@5"],
        )
        m = results["product: SearchChunks hybrid (BM25 + vectors, weighted)"]
        record(
            "retrieval_recall5",
            m["r@5"],
            f"recall@5 {m['r@5']:.3f}, recall@1 {m['r@1']:.3f}, MRR {m['mrr']:.3f} ({len(questions)} questions)",
            f"BM25 alone {results['lexical only: BM25 (SEARCH_MODE_LEXICAL)']['r@5']:.3f}, vectors alone "
            f"{results['vectors only (SEARCH_MODE_VECTOR)']['r@5']:.3f}, previous product "
            f"{results['baseline: the previous product (equal RRF of the two)']['r@5']:.3f} "
            f"(best single {best_single:.3f})",
        )
        record(
            "retrieval_no_diacritics",
            loss * 100,
            f"{loss * 100:.1f} % recall@5 lost typed without diacritics",
            f"with diacritics recall@5 {with_marks['r@5']:.3f}",
        )
        await channel.close(None)
    finally:
        for process in reversed(processes):
            process.stop()
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA_DIR))
    parser.add_argument("--subjects", default="", help="comma-separated file stems (default: all)")
    parser.add_argument("--quick", action="store_true", help="two subjects")
    parser.add_argument("--chat-questions", type=int, default=120, help="questions also asked through chat")
    parser.add_argument("--weights", default="0,0.1,0.25,0.5,0.75,1", help="vector weights for the fusion sweep")
    asyncio.run(evaluate(parser.parse_args()))


if __name__ == "__main__":
    main()
