"""Fusing the BM25 and vector rankings (storage.ranking)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from storage.config import DEFAULT_VECTOR_WEIGHT
from storage.ranking import Ranking, fuse_convex, fuse_rrf

LEXICAL = {"stack": 9.0, "queue": 6.0, "tree": 1.0}
VECTOR = {"tree": 0.62, "graph": 0.60, "queue": 0.41, "stack": 0.40}


def order(pairs: list[tuple[str, float]]) -> list[str]:
    return [key for key, _ in pairs]


def test_the_weight_moves_the_order_from_bm25_to_the_vectors() -> None:
    assert order(fuse_convex(LEXICAL, VECTOR, 0.0)) == ["stack", "queue", "tree", "graph"]
    assert order(fuse_convex(LEXICAL, VECTOR, 1.0)) == ["tree", "graph", "queue", "stack"]
    # The default: the vectors break near-ties but cannot lift a hit BM25 did not find over those it did.
    fused = order(Ranking(DEFAULT_VECTOR_WEIGHT).fuse(LEXICAL, VECTOR))
    assert fused[:2] == ["stack", "queue"] and fused.index("graph") > fused.index("tree")


def test_one_ranking_alone_keeps_its_own_order() -> None:
    ranking = Ranking(DEFAULT_VECTOR_WEIGHT)
    assert order(ranking.fuse(LEXICAL, {})) == ["stack", "queue", "tree"]
    assert order(ranking.fuse({}, VECTOR)) == ["tree", "graph", "queue", "stack"]
    assert ranking.fuse({}, {}) == []


def test_weighted_rrf_counts_ranks_not_scores() -> None:
    fused = dict(fuse_rrf(LEXICAL, VECTOR, 0.5))
    assert fused["stack"] == 1 / 61 + 0.5 / 64
    assert fused["graph"] == 0.5 / 62


scores = st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0.01, 50), max_size=8)
cosines = st.dictionaries(st.sampled_from("abcdefgh"), st.floats(-1, 1), max_size=8)


@given(scores, cosines, st.floats(0, 1))
def test_fusion_is_a_ranking_of_every_candidate_best_first(
    lexical: dict[str, float], vector: dict[str, float], weight: float
) -> None:
    fused = Ranking(weight).fuse(lexical, vector)
    assert sorted(order(fused)) == sorted(set(lexical) | set(vector))
    values = [value for _, value in fused]
    assert values == sorted(values, reverse=True)
