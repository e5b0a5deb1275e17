"""Fusion lives in radcot.retrieval (#24): FusedRetriever beside reciprocal_rank_fusion, and the RRF constant named
``rrf_constant`` (``k`` is a result count everywhere else); the old keyword names still work, with a warning."""
from __future__ import annotations

import warnings

import pytest

from radcot.records import Doc, Query, ScoredDoc

pytestmark = pytest.mark.fast

A = {"q1": {"d1": 3.0, "d2": 2.0}}
B = {"q1": {"d2": 9.0, "d3": 1.0}}


class _Listed:
    """A real, minimal retriever over a fixed ranking (the contract FusedRetriever fuses)."""

    def __init__(self, ranking: dict[str, float], docs: dict[str, str]):
        self.ranking, self.docs = ranking, docs

    def batch_search(self, queries, k=10):
        return {q.query_id: [ScoredDoc(q.query_id, d, s) for d, s in
                             sorted(self.ranking.items(), key=lambda kv: -kv[1])[:k]] for q in queries}

    def doc(self, doc_id):
        return Doc(doc_id, self.docs[doc_id]) if doc_id in self.docs else None


def test_fused_retriever_is_exported_from_retrieval():
    import radcot.retrieval
    from radcot.retrieval import FusedRetriever
    import radcot.student.data

    assert "FusedRetriever" in radcot.retrieval.__all__ and not hasattr(radcot.student.data, "FusedRetriever")
    fused = FusedRetriever([_Listed(A["q1"], {"d1": "one"}), _Listed(B["q1"], {"d2": "two", "d3": "three"})])
    hits = fused.batch_search([Query("q1", "x")], k=2)["q1"]
    assert [h.doc_id for h in hits] == ["d2", "d1"] and fused.doc("d3").text == "three" and fused.doc("zz") is None
    assert fused.search("x", k=1)[0].doc_id == "d2"
    assert fused.config["rrf_constant"] == 60 and fused.kind == "fused"


def test_rrf_constant_is_named_so_and_k_still_works_with_a_warning():
    from radcot.retrieval import reciprocal_rank_fusion

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = reciprocal_rank_fusion([A, B], rrf_constant=0)
    assert named["q1"] == {"d2": 1 / 2 + 1 / 1, "d1": 1 / 1, "d3": 1 / 2}
    with pytest.warns(DeprecationWarning, match="k= is deprecated, it is the RRF constant: pass rrf_constant=0"):
        assert reciprocal_rank_fusion([A, B], k=0) == named
    with pytest.raises(TypeError, match="pass rrf_constant= only"):
        reciprocal_rank_fusion([A, B], rrf_constant=1, k=0)


def test_fused_retriever_rrf_k_is_deprecated():
    from radcot.retrieval import FusedRetriever

    parts = [_Listed(A["q1"], {}), _Listed(B["q1"], {})]
    with pytest.warns(DeprecationWarning, match="rrf_k= is deprecated"):
        assert FusedRetriever(parts, rrf_k=10).rrf_constant == 10
    assert FusedRetriever(parts, rrf_constant=10).rrf_constant == 10
