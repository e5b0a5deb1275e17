"""The retriever contract (radcot.retrieval.base.Retriever), kept by BM25 (real Lucene) and dense (real FAISS),
the helpers both share, and the BM25 fast path failing loudly when Lucene's output is not what it parses."""
from __future__ import annotations

from itertools import islice

import pytest

from radcot.records import Doc, Query, RadcotError, ScoredDoc
from radcot.retrieval.base import Retriever, as_queries, iter_docs, retrieve_passages

N_DENSE = 60


@pytest.fixture(scope="module")
def small_docs(cranfield) -> list[Doc]:
    from radcot.data.readers import read_corpus

    return [d for d in islice(read_corpus(cranfield), N_DENSE + 5) if d.text.strip()][:N_DENSE]


@pytest.fixture(scope="module")
def dense(small_docs, tmp_path_factory):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from radcot.retrieval.dense import DenseRetriever

    out = tmp_path_factory.mktemp("dense") / "cran-dense"
    r = DenseRetriever.build(small_docs, out, chunk_size=64, max_seq_length=64, show_progress=False)
    yield r
    r.close()


@pytest.fixture(scope="module")
def bm25(cranfield_bm25_index):
    from radcot.retrieval.bm25 import BM25Retriever

    r = BM25Retriever(cranfield_bm25_index)
    yield r
    r.close()


def _check_contract(r, docs_by_id: dict[str, Doc], queries: list[Query], tmp_path) -> None:
    """Each method of the contract does its job on a real index."""
    assert isinstance(r, Retriever)
    assert r.kind in ("bm25", "dense") and r.config["kind"] == r.kind and r.index_dir.is_dir()
    assert r.num_docs == (1398 if r.kind == "bm25" else N_DENSE)  # cranfield: 1,400 docs, 2 of them empty
    # search: k hits, best first, ScoredDoc with the given query id
    hits = r.search(queries[0].text, k=5, query_id="x")
    assert len(hits) == 5 and all(isinstance(h, ScoredDoc) and h.query_id == "x" for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # batch_search: every query id, same ranking as search; accepts {qid: text} too
    batch = r.batch_search(queries, k=5, threads=2)
    assert list(batch) == [q.query_id for q in queries]
    assert [h.doc_id for h in batch[queries[0].query_id]] == [h.doc_id for h in hits]
    assert r.batch_search({q.query_id: q.text for q in queries}, k=5, threads=1) == batch
    # run / write_run: the same hits as {qid: {doc: score}}, and a TREC file radcot reads back
    run = r.run(queries, k=5)
    assert {q: list(d) for q, d in run.items()} == {q: [h.doc_id for h in hs] for q, hs in batch.items()}
    from radcot.data.readers import read_run

    r.write_run(queries, tmp_path / f"{r.kind}.trec", k=5)
    assert {q: set(d) for q, d in read_run(tmp_path / f"{r.kind}.trec").items()} == {q: set(d) for q, d in run.items()}
    # doc: the stored document, None for an unknown id
    some = next(iter(docs_by_id.values()))
    assert r.doc(some.doc_id) == some and r.doc("no-such-doc") is None
    # close: releases, and the retriever reopens lazily on the next use
    r.close()
    assert [h.doc_id for h in r.search(queries[0].text, k=5)] == [h.doc_id for h in hits]


@pytest.mark.java
def test_bm25_keeps_the_contract(bm25, cranfield, tmp_path):
    from radcot.data.readers import read_corpus, read_queries

    docs = {d.doc_id: d for d in islice(read_corpus(cranfield), 3)}
    _check_contract(bm25, docs, read_queries(cranfield)[:4], tmp_path)


def test_dense_keeps_the_contract(dense, small_docs, tmp_path):
    queries = [Query(d.doc_id, d.title) for d in small_docs[:4]]
    _check_contract(dense, {d.doc_id: d for d in small_docs[:3]}, queries, tmp_path)


def test_faiss_thread_count_restored_after_search(dense, small_docs):
    import faiss

    before = faiss.omp_get_max_threads()
    dense.batch_search([Query("a", small_docs[0].title)], k=3, threads=1 if before != 1 else 2)
    assert faiss.omp_get_max_threads() == before


@pytest.mark.fast
def test_objects_without_the_methods_are_not_retrievers():
    class HalfRetriever:
        kind = "bm25"

        def search(self, query, k=10):
            return []

    assert not isinstance(HalfRetriever(), Retriever)


# ------------------------------------------------------------------------------------------------ shared helpers


@pytest.mark.fast
def test_as_queries_accepts_every_documented_shape(tmp_path):
    expected = [Query("1", "lift"), Query("2", "drag")]
    assert as_queries({"1": "lift", "2": "drag"}) == expected
    assert as_queries([("1", "lift"), ["2", "drag"]]) == expected
    assert as_queries(expected) == expected
    path = tmp_path / "q.tsv"
    path.write_text("1\tlift\n2\tdrag\n", encoding="utf-8")
    assert as_queries(path) == expected
    with pytest.raises(TypeError, match="got int"):
        as_queries([1])


@pytest.mark.fast
def test_iter_docs_and_fingerprint(tmp_path):
    from radcot.retrieval.base import collection_fingerprint

    assert list(iter_docs([("d1", "text", "T"), Doc("d2", "x")])) == [Doc("d1", "text", "T"), Doc("d2", "x")]
    coll = tmp_path / "corpus.jsonl"
    coll.write_text('{"_id": "d1", "title": "", "text": "lift"}\n', encoding="utf-8")
    assert [d.doc_id for d in iter_docs(tmp_path)] == ["d1"]
    fp = collection_fingerprint(tmp_path)
    assert fp == collection_fingerprint(tmp_path) and collection_fingerprint([Doc("d1", "x")]) is None
    coll.write_text('{"_id": "d1", "title": "", "text": "lift and drag"}\n', encoding="utf-8")
    assert collection_fingerprint(tmp_path) != fp  # the size changed
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collection_fingerprint(tmp_path / "missing")


def test_retrieve_passages_joins_hits_with_stored_text(dense, small_docs):
    queries = [Query(d.doc_id, d.title) for d in small_docs[:3]]
    done = []
    got = retrieve_passages(dense, queries, k=2, batch_size=2, on_batch=done.append)
    assert done == [2, 1] and list(got) == [q.query_id for q in queries]
    hits = dense.batch_search(queries, k=2)
    for q in queries:
        assert [p["doc_id"] for p in got[q.query_id]] == [h.doc_id for h in hits[q.query_id]]
        for p in got[q.query_id]:
            d = dense.doc(p["doc_id"])
            assert (p["title"], p["text"]) == (d.title, d.text)

    class Forgetful:  # an index that returns ids it holds no text for
        def batch_search(self, qs, k):
            return {q.query_id: [ScoredDoc(q.query_id, "ghost", 1.0)] for q in qs}

        def doc(self, doc_id):
            return None

    with pytest.raises(KeyError, match="'ghost'.*no stored text"):
        retrieve_passages(Forgetful(), queries, k=1, error=KeyError)


# ------------------------------------------------------------------------------------------------ BM25 fast path


@pytest.mark.java
def test_fast_path_checked_against_simple_searcher_once(cranfield_bm25_index, cranfield):
    from radcot.data.readers import read_queries
    from radcot.retrieval.bm25 import BM25Retriever

    r = BM25Retriever(cranfield_bm25_index)
    assert not r._fast_checked
    assert r.search("", k=5) == [] and not r._fast_checked  # nothing to compare on an empty result
    q = read_queries(cranfield)[0]
    r.search(q, k=20)
    assert r._fast_checked
    r.close()


@pytest.mark.java
def test_fast_path_format_change_fails_loudly(cranfield_bm25_index):
    """A Lucene whose public TopDocs fields were renamed: an error naming the cause, never empty results."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.errors import RetrievalIndexError

    class Renamed(BM25Retriever):  # as if Lucene renamed TopDocs.scoreDocs
        def _read_top_docs(self, payload):
            return super()._read_top_docs(payload.replace('"scoreDocs"', '"hits"'))

    r = Renamed(cranfield_bm25_index)
    with pytest.raises(RetrievalIndexError, match=r"TopDocs as JSON lacks KeyError 'scoreDocs'.*fast=False"):
        r.search("boundary layer transition", k=10)
    with pytest.raises(RetrievalIndexError, match="lacks KeyError"):
        r.batch_search({"1": "boundary layer", "2": "heat transfer"}, k=10, threads=2)
    r.close()

    class Lost(BM25Retriever):  # a serialisation that loses hits is caught by Lucene's own count, on every query
        def _read_top_docs(self, payload):
            hits, total, exact = super()._read_top_docs(payload)
            return hits[:-1], total, exact

    r = Lost(cranfield_bm25_index)
    for query in ("boundary layer transition", "heat transfer", "wing flutter"):
        with pytest.raises(RetrievalIndexError, match=r"read 9 hits .* Lucene found 10"):
            r.search(query, k=10)
    assert r.search("the of and", k=10) == []  # stopwords only: Lucene too finds nothing, so no error
    r.close()


@pytest.mark.java
def test_fast_path_disagreeing_with_anserini_fails_loudly(cranfield_bm25_index):
    """Hits read in the wrong order (or with wrong ids) are caught by the first-use comparison."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.errors import RetrievalIndexError

    class Misread(BM25Retriever):
        def _read_top_docs(self, payload):
            hits, total, exact = super()._read_top_docs(payload)
            return hits[1:2] + hits[:1] + hits[2:], total, exact  # first two hits swapped (scores swapped with them)

    r = Misread(cranfield_bm25_index)
    with pytest.raises(RetrievalIndexError, match="disagrees with Anserini's SimpleSearcher"):
        r.search("boundary layer transition", k=10)
    r.close()


@pytest.mark.java
def test_java_run_path_checks_empty_results(cranfield_bm25_index, monkeypatch):
    """RM3 (Anserini SearchCollection writing the run): a query Lucene matches but the run lacks is an error."""
    import radcot.retrieval.bm25 as bm25_mod
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.errors import RetrievalIndexError

    r = BM25Retriever(cranfield_bm25_index, rm3=True)
    ok = r.batch_search({"1": "boundary layer", "2": "the of"}, k=5)
    assert len(ok["1"]) == 5 and ok["2"] == []
    real = bm25_mod._read_java_run
    monkeypatch.setattr(bm25_mod, "_read_java_run", lambda path, qs: {**real(path, qs), "1": []})
    with pytest.raises(RetrievalIndexError, match="no hits for query '1'.*Lucene matches"):
        r.batch_search({"1": "boundary layer"}, k=5)
    r.close()


@pytest.mark.fast
def test_malformed_java_run_line_is_named(tmp_path):
    from radcot.retrieval.bm25 import _read_java_run
    from radcot.retrieval.errors import RetrievalIndexError

    run = tmp_path / "run.trec"
    run.write_text("1 Q0 d1 1 3.5 radcot\n1 Q0 d2 2\n", encoding="utf-8")
    with pytest.raises(RetrievalIndexError, match="line 2"):
        _read_java_run(run, [Query("1", "x")])
    assert issubclass(RetrievalIndexError, RadcotError)
