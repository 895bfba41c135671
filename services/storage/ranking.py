"""Fusing the lexical (BM25) and vector (cosine) rankings of a search into one.

The weights are measured, not assumed (bench/retrieval_eval.py, numbers in BENCHMARKS.md): with
the bundled English MiniLM an equal vote for the vectors drags a good Vietnamese BM25 ranking down,
so the vector side gets ``vector_weight`` of the lexical side's vote. An operator who points
EMBEDDING_MODEL at a multilingual model raises SEARCH_VECTOR_WEIGHT after measuring with the
evaluation on their own model (README).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# Reciprocal-rank fusion's constant (Cormack et al. 2009): a hit at rank r gets 1 / (RRF_K + r).
RRF_K = 60


def _ranked(scores: Mapping[K, float]) -> list[K]:
    return sorted(scores, key=lambda key: scores[key], reverse=True)


def fuse_rrf(lexical: Mapping[K, float], vector: Mapping[K, float], vector_weight: float) -> list[tuple[K, float]]:
    """Weighted reciprocal-rank fusion, best first: 1/(k + lexical rank) + w/(k + vector rank)."""
    fused: dict[K, float] = {}
    for weight, scores in ((1.0, lexical), (vector_weight, vector)):
        if weight <= 0:
            continue
        for rank, key in enumerate(_ranked(scores), start=1):
            fused[key] = fused.get(key, 0.0) + weight / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)


def fuse_convex(lexical: Mapping[K, float], vector: Mapping[K, float], vector_weight: float) -> list[tuple[K, float]]:
    """Convex combination of normalised scores, best first: BM25 over the best BM25 score among the
    candidates, and cosine similarity as it is (negative taken as 0). Every candidate of either side
    is kept (the other side counting 0 for it).

    Chosen over weighted RRF on the evaluation: RRF gives the vector ranking's first places a fixed
    vote however weak their similarity, and moved the right passage down (MRR 0.82 -> 0.78 at
    weight 0.1), where the convex combination at the same weight raised it slightly (0.82)."""
    best = max(lexical.values(), default=0.0)
    lexical_weight = 1.0 - vector_weight
    fused: dict[K, float] = {}
    for key, score in lexical.items():
        fused[key] = lexical_weight * score / best if best > 0 else 0.0
    for key, score in vector.items():
        fused[key] = fused.get(key, 0.0) + vector_weight * max(score, 0.0)
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)


@dataclass(frozen=True, slots=True)
class Ranking:
    """How SearchChunks orders its candidates (SEARCH_VECTOR_WEIGHT)."""

    vector_weight: float

    def fuse(self, lexical: Mapping[K, float], vector: Mapping[K, float]) -> list[tuple[K, float]]:
        if not lexical:
            return sorted(vector.items(), key=lambda item: item[1], reverse=True)
        if not vector:
            return sorted(lexical.items(), key=lambda item: item[1], reverse=True)
        return fuse_convex(lexical, vector, self.vector_weight)
