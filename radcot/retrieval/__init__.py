"""Retrieval backends, chosen by what an index directory holds.

- :class:`~radcot.retrieval.bm25.BM25Retriever`: BM25 (+ RM3/Rocchio) on a Lucene index (Anserini/JVM).
- :class:`~radcot.retrieval.dense.DenseRetriever`: a sentence-transformers encoder + FAISS.
- :func:`~radcot.retrieval.fusion.reciprocal_rank_fusion` of runs, and
  :class:`~radcot.retrieval.fusion.FusedRetriever` (RRF of several retrievers behind the same contract).

Both retrievers implement one contract, :class:`~radcot.retrieval.base.Retriever` (a ``typing.Protocol``):
``search(query, k)``, ``batch_search(queries, k, threads) -> {qid: [ScoredDoc]}``,
``run(queries, k) -> {qid: {docid: score}}``, ``write_run``, ``doc(doc_id) -> Doc | None``, ``close()``,
``config``, ``num_docs``, ``kind`` and ``index_dir``; each also has ``build(collection, index_dir, ...)``.
Nothing heavy (JVM, torch, FAISS) is imported until an index is used.

Example:
    >>> from radcot.retrieval import load_retriever
    >>> retriever = load_retriever("runs/vaswani-bm25", k1=0.9, b=0.4)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from radcot._deps import lazy_exports

from radcot.retrieval.base import META_FILE
from radcot.retrieval.errors import RetrievalIndexError

__all__ = ["BM25Retriever", "DenseRetriever", "FusedRetriever", "Retriever", "load_retriever", "index_kind",
           "reciprocal_rank_fusion", "RetrievalIndexError"]

_LAZY = {
    "BM25Retriever": "radcot.retrieval.bm25",
    "DenseRetriever": "radcot.retrieval.dense",
    "Retriever": "radcot.retrieval.base",
    "reciprocal_rank_fusion": "radcot.retrieval.fusion",
    "FusedRetriever": "radcot.retrieval.fusion",
}



__getattr__, __dir__ = lazy_exports("radcot.retrieval", _LAZY, globals())


def index_kind(index_dir: str | os.PathLike) -> str:
    """``"bm25"`` or ``"dense"``: from ``radcot_index.json``, else from the files (a Lucene ``segments_N``,
    a FAISS ``index.faiss``).

    Raises:
        FileNotFoundError: ``index_dir`` does not exist.
        RetrievalIndexError: it is neither kind of index.
    """
    path = Path(index_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"index {path} does not exist; build it with `radcot index --collection PATH --index {path}`")
    meta = path / META_FILE
    if meta.is_file():
        try:
            kind = json.loads(meta.read_text(encoding="utf-8")).get("kind")
        except json.JSONDecodeError:
            kind = None
        if kind in ("bm25", "dense"):
            return kind
    if (path / "index.faiss").is_file():
        return "dense"
    if any(p.name.startswith("segments_") for p in path.iterdir()):
        return "bm25"  # e.g. a pyserini prebuilt or an Anserini-built Lucene index
    raise RetrievalIndexError(f"{path} is neither a Lucene index (segments_N) nor a radcot dense index (index.faiss); "
                              f"build one with `radcot index --collection PATH --index {path}` (add --dense for FAISS)")


def load_retriever(index_dir: str | os.PathLike, **params):
    """Open ``index_dir`` with the retriever class that built it.

    Args:
        index_dir: a BM25 (Lucene) or dense (FAISS) index directory.
        **params: constructor parameters of that class (``k1``, ``b``, ``rm3`` for BM25; ``device``,
            ``batch_size`` for dense). Parameters meant for the other kind raise ``TypeError``.

    Returns:
        A :class:`BM25Retriever` or :class:`DenseRetriever`.

    Example:
        >>> load_retriever("runs/cranfield-dense").kind  # doctest: +SKIP
        'dense'
    """
    kind = index_kind(index_dir)
    if kind == "dense":
        from radcot.retrieval.dense import DenseRetriever

        return DenseRetriever(index_dir, **params)
    from radcot.retrieval.bm25 import BM25Retriever

    return BM25Retriever(index_dir, **params)
