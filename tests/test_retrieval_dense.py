"""DenseRetriever with real FAISS and the real all-MiniLM-L6-v2 (offline wheel), and reciprocal-rank fusion."""
from __future__ import annotations

import json
from itertools import islice

import pytest

from radcot.records import Doc, Query

N_DOCS = 120  # of cranfield: enough for a meaningful check, small enough to encode quickly on 2 CPUs


@pytest.fixture(scope="module")
def cran_docs(cranfield) -> list[Doc]:
    from radcot.data.readers import read_corpus

    return [d for d in islice(read_corpus(cranfield), N_DOCS + 5) if d.text.strip()][:N_DOCS]


@pytest.fixture(scope="module")
def dense_index(cran_docs, tmp_path_factory):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from radcot.retrieval.dense import DenseRetriever

    out = tmp_path_factory.mktemp("dense") / "cran-dense"
    DenseRetriever.build(cran_docs, out, chunk_size=50, max_seq_length=128, show_progress=False)
    return out


def test_index_saves_encoder_dims_and_round_trips(dense_index, cran_docs):
    import faiss

    from radcot.retrieval import index_kind, load_retriever
    from radcot.retrieval.dense import DEFAULT_ENCODER, META_FILE, DenseRetriever

    meta = json.loads((dense_index / META_FILE).read_text())
    assert meta["encoder"] == DEFAULT_ENCODER and meta["dims"] == 384 and meta["num_docs"] == N_DOCS
    assert meta["index_type"] == "flat" and meta["normalize"] is True
    index = faiss.read_index(str(dense_index / "index.faiss"))
    assert index.ntotal == N_DOCS and index.d == 384
    assert (dense_index / "docids.txt").read_text().split() == [d.doc_id for d in cran_docs]
    assert index_kind(dense_index) == "dense"
    r = load_retriever(dense_index)
    assert isinstance(r, DenseRetriever) and r.dims == 384
    # doc(): stored text round-trips
    for d in cran_docs[::17]:
        assert r.doc(d.doc_id) == d
    assert r.doc("no-such-doc") is None
    # a second, independent load returns the same results
    q = [Query("a", "pressure distribution on a slender body"), Query("b", "heat transfer in laminar flow")]
    r1, r2 = r.batch_search(q, k=5), DenseRetriever(dense_index).batch_search(q, k=5)
    assert [h.doc_id for h in r1["a"]] == [h.doc_id for h in r2["a"]]
    assert [h.score for h in r1["b"]] == pytest.approx([h.score for h in r2["b"]], abs=1e-5)
    # scores are cosines (normalised vectors), best first
    scores = [h.score for h in r1["a"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)


def test_dense_retrieval_is_sensible(dense_index, cran_docs):
    """A document's own title, as a query, finds that document first (cranfield titles are distinctive)."""
    from radcot.retrieval.dense import DenseRetriever

    r = DenseRetriever(dense_index)
    probes = [d for d in cran_docs if len(d.title.split()) >= 5][:25]
    hits = r.batch_search([Query(d.doc_id, d.title) for d in probes], k=3)
    top1 = sum(hits[d.doc_id][0].doc_id == d.doc_id for d in probes) / len(probes)
    assert top1 >= 0.8, f"title -> own document at rank 1 for only {top1:.0%} of {len(probes)} probes"
    # k larger than the collection returns every document once
    run = r.run({"x": "shock wave"}, k=10_000)
    assert len(run["x"]) == N_DOCS


def test_hnsw_index_matches_flat_on_top_hits(cran_docs, dense_index, tmp_path):
    from radcot.retrieval.dense import DenseRetriever

    docs = cran_docs[:40]
    hnsw = DenseRetriever.build(docs, tmp_path / "hnsw", index_type="hnsw", hnsw_m=16, max_seq_length=128,
                                show_progress=False)
    assert hnsw.meta["index_type"] == "hnsw"
    flat = DenseRetriever(dense_index)
    queries = [Query(d.doc_id, d.title) for d in docs[:10]]
    h = hnsw.batch_search(queries, k=1)
    assert sum(h[q.query_id][0].doc_id == q.query_id for q in queries) >= 8
    assert hnsw.search("supersonic flow", k=3)[0].score <= 1.0001
    assert flat.num_docs == N_DOCS and hnsw.num_docs == 40


def test_unavailable_encoder_fails_with_an_actionable_message(tmp_path, monkeypatch):
    from radcot.records import OfflineResourceError
    from radcot.retrieval.dense import DenseRetriever

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no waiting on network timeouts; the message is the same
    with pytest.raises(OfflineResourceError, match="local directory"):
        DenseRetriever.build([Doc("1", "text")], tmp_path / "x", encoder="radcot-test/no-such-encoder",
                             show_progress=False)
    assert not (tmp_path / "x").exists()


def test_dense_errors(tmp_path, dense_index):
    from radcot.retrieval import RetrievalIndexError
    from radcot.retrieval.dense import DenseRetriever

    with pytest.raises(FileNotFoundError, match="radcot index --dense"):
        DenseRetriever(tmp_path)
    with pytest.raises(ValueError, match="index_type"):
        DenseRetriever.build([Doc("1", "x")], tmp_path / "y", index_type="ivf")
    meta = json.loads((dense_index / "radcot_index.json").read_text())
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "radcot_index.json").write_text(json.dumps({**meta, "kind": "bm25"}))
    with pytest.raises(RetrievalIndexError, match="not a dense one"):
        DenseRetriever(fake)


# ------------------------------------------------------------------------------------------------ fusion


@pytest.mark.fast
def test_rrf_hand_computed_example():
    from radcot.retrieval.fusion import reciprocal_rank_fusion

    a = {"q1": {"d1": 10.0, "d2": 9.0, "d3": 8.0}, "q2": {"x": 1.0}}
    b = {"q1": {"d3": 0.9, "d1": 0.8, "d4": 0.1}}
    fused = reciprocal_rank_fusion([a, b], rrf_constant=60)
    # d1: 1/61 + 1/62; d3: 1/63 + 1/61; d2: 1/62; d4: 1/63
    expected = {"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63}
    assert list(fused["q1"]) == ["d1", "d3", "d2", "d4"]
    assert fused["q1"] == pytest.approx(expected)
    assert fused["q2"] == pytest.approx({"x": 1 / 61})
    # depth: only each run's top-1 counts; max_docs caps the output
    top1 = reciprocal_rank_fusion([a, b], rrf_constant=60, depth=1, max_docs=10)
    assert top1["q1"] == pytest.approx({"d1": 1 / 61, "d3": 1 / 61})
    assert list(top1["q1"]) == ["d1", "d3"]  # tie broken by doc id
    assert len(reciprocal_rank_fusion([a, b], max_docs=2)["q1"]) == 2
    # ranks come from scores, not dict order; ScoredDoc lists work too
    from radcot.records import ScoredDoc

    c = {"q1": [ScoredDoc("q1", "d4", 5.0), ScoredDoc("q1", "d2", 7.0)]}
    assert list(reciprocal_rank_fusion([c], rrf_constant=0)["q1"]) == ["d2", "d4"]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([])


@pytest.mark.java
def test_rrf_of_bm25_and_dense(dense_index, cran_docs, cranfield_bm25_index):
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.dense import DenseRetriever
    from radcot.retrieval.fusion import reciprocal_rank_fusion

    ids = {d.doc_id for d in cran_docs}
    queries = [Query(d.doc_id, d.title) for d in cran_docs[:10]]
    bm25 = {q: {d: s for d, s in hits.items() if d in ids}
            for q, hits in BM25Retriever(cranfield_bm25_index).run(queries, k=1000, show_progress=False).items()}
    dense = DenseRetriever(dense_index).run(queries, k=N_DOCS)
    fused = reciprocal_rank_fusion([bm25, dense], rrf_constant=60, depth=100)
    assert set(fused) == {q.query_id for q in queries}
    assert sum(next(iter(fused[q.query_id])) == q.query_id for q in queries) >= 8


@pytest.mark.slow
def test_interrupted_build_resumes_from_saved_chunks(cran_docs, tmp_path, caplog):
    """Kill a real build after two embedding chunks, rebuild: the saved chunks are reused, the index completes."""
    import logging
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    pytest.importorskip("faiss")
    from radcot.retrieval.dense import DenseRetriever

    coll = tmp_path / "coll"
    coll.mkdir()
    (coll / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n"
                                               for d in cran_docs))
    out = tmp_path / "idx"
    partial = tmp_path / ".idx.partial"
    code = ("from radcot.retrieval.dense import DenseRetriever\n"
            f"DenseRetriever.build({str(coll)!r}, {str(out)!r}, chunk_size=20, max_seq_length=64, show_progress=False)\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 400
    try:
        while not (partial / "emb-00001.npy").exists():
            assert proc.poll() is None, f"build ended before it could be interrupted: {proc.stderr.read()[-2000:]!r}"
            assert time.time() < deadline, "no embedding chunk written in 400 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not out.exists()  # nothing half-written where the index goes
    done_before = sorted(p.name for p in partial.glob("emb-*.npy"))
    assert 2 <= len(done_before) < 6
    with caplog.at_level(logging.INFO, logger="radcot.retrieval.dense"):
        r = DenseRetriever.build(coll, out, chunk_size=20, max_seq_length=64, show_progress=False)
    assert any(f"{len(done_before)} of 6 embedding chunks already done" in m for m in caplog.messages)
    assert r.num_docs == N_DOCS and not partial.exists()
    probes = [d for d in cran_docs if len(d.title.split()) >= 5][:10]
    hits = r.batch_search([Query(d.doc_id, d.title) for d in probes], k=1)
    assert sum(hits[d.doc_id][0].doc_id == d.doc_id for d in probes) >= 8
