"""QueryExpander with a trained student as its source (a tiny FiD trained on Cranfield, real BM25 passages)."""
from __future__ import annotations

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)
from radcot.expansion import ExpandedSearcher, QueryExpander, expand_text, read_expansions

pytestmark = [pytest.mark.java, pytest.mark.slow]


@pytest.fixture(scope="module")
def five_queries(cranfield):
    from radcot.data.readers import read_queries

    return read_queries(cranfield)[10:15]


def test_student_source_generates_and_expands(trained_student, cranfield_retriever, five_queries, tmp_path):
    ex = QueryExpander(trained_student, formula="radcot", retriever=cranfield_retriever,
                       generate_kwargs={"max_new_tokens": 16, "batch_size": 8}, cache_dir=tmp_path)
    assert ex.kind == "student" and ex.student == trained_student / "best"
    cots = ex.cots(five_queries)
    assert all(len(c) == 1 and c[0].strip() for c in cots.values()), cots
    expanded = ex.expand_all(five_queries)
    for q in five_queries:
        assert expanded[q.query_id] == expand_text(q.text, cots[q.query_id][0], "radcot")
    # the generations were written as teacher-format JSONL in the cache directory
    assert (tmp_path / "student-cots.jsonl").is_file()


def test_searcher_hands_its_retriever_to_the_student(trained_student, cranfield_retriever, five_queries):
    ex = QueryExpander(trained_student, formula="query2doc", generate_kwargs={"max_new_tokens": 12})
    searcher = ExpandedSearcher(cranfield_retriever, ex)
    res = searcher.batch_search(five_queries, k=10)
    assert set(res) == {q.query_id for q in five_queries} and all(len(v) == 10 for v in res.values())
    assert ex.last_missing == []


def test_expand_cli_with_student(trained_student, cranfield_bm25_index, five_queries, tmp_path):
    from radcot.cli import main
    from radcot.data.readers import write_queries_tsv

    qfile, out = tmp_path / "q.tsv", tmp_path / "exp.tsv"
    write_queries_tsv(five_queries, qfile)
    assert main(["expand", "--student", str(trained_student), "--index", str(cranfield_bm25_index),
                 "--queries", str(qfile), "--out", str(out), "--max-new-tokens", "12"]) == 0
    got = read_expansions(out)
    for q in five_queries:
        head = (q.text + " ") * 5 + " "  # a long query: n = 5, then the student's CoT
        assert got[q.query_id].startswith(head) and got[q.query_id][len(head):].strip()


def test_student_samples_fused_with_rrf(trained_student, cranfield_retriever, five_queries):
    """samples=3: the student samples three CoTs per query; the searcher's run is the RRF of the three runs."""
    ex = QueryExpander(trained_student, formula="query2doc", samples=3, retriever=cranfield_retriever,
                       generate_kwargs={"max_new_tokens": 12, "temperature": 1.0, "seed": 5})
    cots = ex.cots(five_queries)
    # three sampled sequences per query; a tiny 40-step student may sample an empty one, which is dropped
    assert all(1 <= len(c) <= 3 for c in cots.values()) and any(len(c) == 3 for c in cots.values()), cots
    assert any(len(set(c)) > 1 for c in cots.values()), "sampling gave identical CoTs for every query"
    per_sample = ex.expand_samples(five_queries)
    assert len(per_sample) == 3
    runs = [cranfield_retriever.batch_search([type(q)(q.query_id, s[q.query_id]) for q in five_queries], k=50)
            for s in per_sample]
    fused = ExpandedSearcher(cranfield_retriever, ex, rrf_constant=60, depth=50).batch_search(five_queries, k=10)
    # RRF computed here by hand (Cormack et al. 2009): sum over runs of 1 / (60 + rank), ranks from 1
    for q in five_queries:
        expected: dict[str, float] = {}
        for run in runs:
            ranked = sorted(run[q.query_id], key=lambda h: (-h.score, h.doc_id))[:50]
            for rank, hit in enumerate(ranked, start=1):
                expected[hit.doc_id] = expected.get(hit.doc_id, 0.0) + 1.0 / (60 + rank)
        top = sorted(expected.items(), key=lambda t: (-t[1], t[0]))[:10]
        assert [d for d, _ in top] == [s.doc_id for s in fused[q.query_id]]
        assert [s.score for s in fused[q.query_id]] == pytest.approx([v for _, v in top])
