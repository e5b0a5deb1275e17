"""Stale or damaged indexes are never reused or searched (#26).

Collections are identified by content (an in-place edit that keeps size and mtime is a new collection);
truncated Lucene and FAISS files are named, with the rebuild command, on reuse and on open; an index of
another collection is refused when a dataset names both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADCOT_CACHE", str(tmp_path / "radcot-cache"))


def _edit_in_place(path: Path, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (same length) inside ``path`` and give it back its modification time."""
    assert len(old) == len(new)
    st = path.stat()
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def _small_collection(cranfield: Path, out: Path, n: int = 40) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    with open(cranfield / "corpus.jsonl", encoding="utf-8") as src:
        (out / "corpus.jsonl").write_text("".join(islice(src, n)), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ fingerprints


@pytest.mark.fast
def test_in_place_edit_keeping_size_and_mtime_changes_the_fingerprint(tmp_path):
    from radcot.retrieval.base import collection_fingerprint

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "the wing stalls"}\n{"_id": "d2", "text": "lift and drag"}\n')
    before = collection_fingerprint(corpus)
    _edit_in_place(corpus, b"stalls", b"flutes")
    assert collection_fingerprint(corpus) != before


@pytest.mark.fast
def test_fingerprint_is_the_content_not_the_place(tmp_path):
    from radcot.retrieval.base import collection_fingerprint

    a = tmp_path / "a" / "corpus.jsonl"
    a.parent.mkdir()
    a.write_text('{"_id": "d1", "text": "x"}\n')
    b = tmp_path / "b" / "collection.jsonl"
    b.parent.mkdir()
    shutil.copy(a, b)
    assert collection_fingerprint(a) == collection_fingerprint(b) == collection_fingerprint(a.parent)


@pytest.mark.fast
def test_fingerprint_is_remembered_by_file_identity(tmp_path, monkeypatch):
    from radcot.data import fingerprint as fp

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "d1", "text": "x"}\n')
    first = fp.collection_fingerprint(corpus)
    assert not list((tmp_path / "radcot-cache").rglob("*.json"))  # just written: too recent to remember
    monkeypatch.setattr(fp, "RACY_SECONDS", 0.0)  # as if it had been written long ago
    assert fp.collection_fingerprint(corpus) == first
    assert list((tmp_path / "radcot-cache" / "fingerprints").glob("*.json"))
    fp._memo.clear()  # a new process: only the on-disk memo is left

    def no_hashing(*a):
        raise AssertionError("the file was hashed again although it did not change")

    monkeypatch.setattr(fp, "_hash", no_hashing)
    assert fp.collection_fingerprint(corpus) == first
    time.sleep(0.05)  # past the kernel's coarse file clock tick
    os.utime(corpus)  # touched: its inode change time moves, so it is hashed again
    with pytest.raises(AssertionError, match="hashed again"):
        fp.collection_fingerprint(corpus)


# ------------------------------------------------------------------------------------------ BM25


def _radcot(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "radcot", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)


def _largest(index: Path, suffix: str) -> Path:
    return max((p for p in index.iterdir() if p.name.endswith(suffix)), key=lambda p: p.stat().st_size)


def _truncate(path: Path, by: int = 64) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - by)


@pytest.mark.java
def test_bm25_index_is_rebuilt_after_an_in_place_edit_keeping_size_and_mtime(cranfield, tmp_path):
    from radcot.retrieval.bm25 import BM25Retriever

    coll = _small_collection(cranfield, tmp_path / "coll")
    index = tmp_path / "idx"
    first = BM25Retriever.build(coll, index, show_progress=False).meta
    assert BM25Retriever.build(coll, index, show_progress=False).meta == first  # unchanged: reused
    word = next(w for w in (coll / "corpus.jsonl").read_bytes().split() if w.isalpha() and len(w) > 6)
    _edit_in_place(coll / "corpus.jsonl", word, b"z" * len(word))
    again = BM25Retriever.build(coll, index, show_progress=False).meta
    assert again["collection_fingerprint"] != first["collection_fingerprint"]
    assert BM25Retriever(index).search("z" * len(word), k=3), "the index holds the edited text: it was rebuilt"


@pytest.mark.java
def test_truncated_lucene_file_is_named_on_open_and_never_reused(cranfield, tmp_path, caplog):
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.meta import IndexDamagedError

    coll = _small_collection(cranfield, tmp_path / "coll")
    index = tmp_path / "idx"
    BM25Retriever.build(coll, index, show_progress=False)
    damaged = _largest(index, ".fdt")
    _truncate(damaged)
    with pytest.raises(IndexDamagedError, match=rf"{damaged.name} has \d+ bytes but had \d+ .*\(truncated\); rebuild "
                                                r"the index: `radcot index --collection .* --overwrite`"):
        BM25Retriever(index)
    queries = tmp_path / "q.tsv"
    queries.write_text("1\tboundary layer\n")
    proc = _radcot("search", "--index", str(index), "--queries", str(queries), "--run", str(tmp_path / "r.trec"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert damaged.name in proc.stderr and "--overwrite" in proc.stderr
    assert not (tmp_path / "r.trec").exists()
    rebuilt = BM25Retriever.build(coll, index, show_progress=False)  # not "reused from the same collection"
    assert "rebuilding" in caplog.text and rebuilt.search("boundary layer", k=1)


@pytest.mark.java
def test_truncated_file_of_an_index_radcot_did_not_build_is_named_by_its_lucene_footer(cranfield, tmp_path):
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.meta import IndexDamagedError

    coll = _small_collection(cranfield, tmp_path / "coll")
    index = tmp_path / "idx"
    BM25Retriever.build(coll, index, show_progress=False)
    (index / "radcot_index.json").unlink()  # as a pyserini prebuilt or Anserini-built index: no recorded sizes
    damaged = _largest(index, ".tim")
    _truncate(damaged, by=8)
    with pytest.raises(IndexDamagedError, match=rf"index file .*{damaged.name} is damaged \(CorruptIndexException"):
        BM25Retriever(index).search("boundary layer", k=3)


@pytest.mark.java
def test_dataset_index_of_another_collection_is_refused(cranfield, vaswani, tmp_path):
    from radcot.data.fingerprint import IndexCollectionMismatchError
    from radcot.data.registry import load_dataset
    from radcot.retrieval.bm25 import BM25Retriever

    other = _small_collection(vaswani, tmp_path / "other")
    index = tmp_path / "idx"
    BM25Retriever.build(other, index, show_progress=False)
    with pytest.raises(IndexCollectionMismatchError, match=rf"index {index} was built from {other} .*not from this "
                                                           rf"dataset's corpus {cranfield}/corpus.jsonl"):
        load_dataset(cranfield, index=index)
    mine = _small_collection(cranfield, tmp_path / "mine", n=10**6)  # a copy of the same documents
    BM25Retriever.build(mine, tmp_path / "idx2", show_progress=False)
    assert load_dataset(cranfield, index=tmp_path / "idx2").index == str(tmp_path / "idx2")


# ------------------------------------------------------------------------------------------ dense


@pytest.mark.slow
def test_truncated_faiss_index_is_named_and_rebuilt(cranfield, tmp_path, caplog):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from radcot.retrieval.dense import DenseRetriever
    from radcot.retrieval.meta import IndexDamagedError

    coll = _small_collection(cranfield, tmp_path / "coll", n=30)
    index = tmp_path / "dense"
    DenseRetriever.build(coll, index, max_seq_length=64, show_progress=False)
    _truncate(index / "index.faiss")
    with pytest.raises(IndexDamagedError, match=r"index\.faiss has \d+ bytes but had \d+ .*--dense --overwrite"):
        DenseRetriever(index)
    meta = json.loads((index / "radcot_index.json").read_text())
    del meta["files"]  # an index from before sizes were recorded: FAISS's own read fails, named
    (index / "radcot_index.json").write_text(json.dumps(meta))
    with pytest.raises(IndexDamagedError, match=r"index file .*index\.faiss is damaged"):
        DenseRetriever(index).search("boundary layer", k=3)
    (index / "radcot_index.json").write_text(json.dumps({**meta, "files": {"index.faiss": 1}}))
    DenseRetriever.build(coll, index, max_seq_length=64, show_progress=False)
    assert "rebuilding" in caplog.text
    assert DenseRetriever(index).search("boundary layer", k=3)
