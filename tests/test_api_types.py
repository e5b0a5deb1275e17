"""The Python API's typed boundary in retrieval, fusion, expansion and run files (issue 26's "Python API types"):
a string where a number or a list belongs is a TypeError naming the argument, raised before any work, instead of
an AttributeError or a comparison error from deep inside. (The teacher and student areas check theirs in
radcot.teacher._checks and radcot.student._check.)"""
from __future__ import annotations

import pytest

from radcot.records import Query

pytestmark = pytest.mark.fast


def test_k_as_a_string_is_named():
    from radcot.retrieval.base import check_k

    with pytest.raises(TypeError, match=r"k must be an integer, got '10' \(str\); pass a number, not a string"):
        check_k("10")
    with pytest.raises(TypeError, match="k must be an integer, got True"):
        check_k(True)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        check_k(0)
    import numpy as np

    assert check_k(np.int64(5)) == 5 and isinstance(check_k(np.int64(5)), int)


def test_bm25_and_dense_search_check_k_before_searching():
    """BM25Retriever(...).search(q, k='10') failed with "'<' not supported between instances of 'str' and 'int'".
    k is checked before the index is touched (the retrievers here have no index; the fault table's API case
    searches a real one)."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.dense import DenseRetriever

    bm25, dense = object.__new__(BM25Retriever), object.__new__(DenseRetriever)
    calls = [lambda: bm25.search("who taught Vacer Sark", k="10"), lambda: bm25.batch_search([], k="10"),
             lambda: bm25.run([], k="10"), lambda: dense.batch_search([], k="10")]
    for call in calls:
        with pytest.raises(TypeError, match=r"k must be an integer, got '10' \(str\)"):
            call()


def test_fusion_refuses_a_path_one_run_and_non_runs():
    from radcot.retrieval.fusion import reciprocal_rank_fusion

    with pytest.raises(TypeError, match="got the path 'bm25.trec'; read run files with radcot.read_run"):
        reciprocal_rank_fusion("bm25.trec")
    with pytest.raises(TypeError, match="got dict; wrap one run in a list"):
        reciprocal_rank_fusion({"q": {"a": 1.0}})
    with pytest.raises(TypeError, match=r"runs\[1\]: expected a run .* got str"):
        reciprocal_rank_fusion([{"q": {"a": 1.0}}, "dense.trec"])
    assert list(reciprocal_rank_fusion([{"q": {"a": 1.0}}])["q"]) == ["a"]


def test_expand_queries_refuses_one_string_and_takes_pairs():
    """expand_queries('a string', cots) failed with AttributeError: 'str' object has no attribute 'text'."""
    from radcot.expansion import expand_queries

    with pytest.raises(TypeError, match="expand_queries: queries must be Query records .* got one str 'who taught"):
        expand_queries("who taught Vacer Sark", {"q1": "a CoT"})
    assert expand_queries([("1", "q")], {"1": "c"}, "query2doc") == expand_queries([Query("1", "q")], {"1": "c"},
                                                                                    "query2doc")


def test_write_run_names_a_score_that_is_not_a_number(tmp_path):
    """write_run({'q1': {'d1': '1.5'}}) failed with "bad operand type for unary -: 'str'"."""
    from radcot.data.readers import write_run

    with pytest.raises(TypeError, match=r"the score of doc 'd1' for query 'q1' is '1.5' \(str\), expected a number"):
        write_run({"q1": {"d1": "1.5", "d2": 1.0}}, tmp_path / "out.trec")
    assert list(tmp_path.iterdir()) == []  # nothing written
