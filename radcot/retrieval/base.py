"""The retriever contract (:class:`Retriever`) and passage retrieval (:func:`retrieve_passages`).

Both :class:`~radcot.retrieval.bm25.BM25Retriever` and :class:`~radcot.retrieval.dense.DenseRetriever`
implement :class:`Retriever` (:class:`~radcot.retrieval.fusion.FusedRetriever` its searching part); code that
only searches and reads documents (distillation data, student generation, expansion, the pipeline) should
accept any object that does. Index builds' process plumbing (temporary directories, signals, Java calls in threads) lives in
:mod:`radcot.retrieval.process`. Nothing here imports the JVM, torch or FAISS.

Example:
    >>> from radcot.retrieval.base import Retriever, as_queries
    >>> as_queries({"q1": "tidal forces"})
    [Query(query_id='q1', text='tidal forces')]
    >>> isinstance(object(), Retriever)
    False
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from radcot.data.fingerprint import INDEX_META_FILE
from radcot.records import Doc, Query, RadcotError, ScoredDoc

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Run = dict[str, dict[str, float]]

#: written into every index directory radcot builds (kind, build settings, collection, files); ``load_retriever`` reads it
META_FILE = INDEX_META_FILE


@runtime_checkable
class Retriever(Protocol):
    """What every radcot retriever does (BM25 over Lucene, dense over FAISS).

    Attributes:
        kind: ``"bm25"`` or ``"dense"`` (what :func:`radcot.retrieval.index_kind` reports for its index).
        index_dir: the index directory it reads.
        config: its parameters as a JSON-serialisable dict (saved next to runs and datasets).
        num_docs: number of documents in the index.

    Example:
        >>> from radcot.retrieval import load_retriever
        >>> r = load_retriever("runs/demo-bm25")            # doctest: +SKIP
        >>> isinstance(r, Retriever)                        # doctest: +SKIP
        True
    """

    kind: str
    index_dir: Path

    @property
    def config(self) -> dict: ...

    @property
    def num_docs(self) -> int: ...

    def search(self, query: str | Query, k: int = 10, query_id: str = "q") -> list[ScoredDoc]:
        """One query: up to ``k`` hits, best first."""

    def batch_search(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000,
                     threads: int | None = 2) -> dict[str, list[ScoredDoc]]:
        """Many queries: ``{qid: [ScoredDoc, ...]}`` with every query id present (``[]`` when nothing matched)."""

    def run(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int | None = 2) -> Run:
        """A TREC run ``{qid: {doc_id: score}}`` at depth ``k``."""

    def write_run(self, queries: Sequence[Query] | Mapping[str, str], path: PathLike, k: int = 1000) -> Run:
        """:meth:`run`, written as a TREC run file; returns the run."""

    def doc(self, doc_id: str) -> Doc | None:
        """The stored document ``doc_id``, or ``None`` when the index does not hold it."""

    def close(self) -> None:
        """Release what the retriever holds (readers, index, encoder); it reopens lazily when used again."""


# ---------------------------------------------------------------------------------------------- inputs


def check_k(k: Any) -> int:
    """``k`` (hits per query) checked: an integer >= 1 (numpy integers too).

    Raises:
        TypeError: a string (``k="10"``), bool or float, named.
        ValueError: ``k < 1``.

    Example:
        >>> check_k(10)
        10
    """
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        hint = "; pass a number, not a string" if isinstance(k, str) else ""
        raise TypeError(f"k must be an integer, got {k!r:.40} ({type(k).__name__}){hint}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def as_queries(queries: Iterable[Query] | Mapping[str, str] | PathLike) -> list[Query]:
    """Queries as a list of :class:`Query`, from records, ``(qid, text)`` pairs, ``{qid: text}`` or a file.

    Raises:
        TypeError: an item is none of these.

    Example:
        >>> as_queries([("1", "lift"), Query("2", "drag")])
        [Query(query_id='1', text='lift'), Query(query_id='2', text='drag')]
    """
    if isinstance(queries, (str, os.PathLike)):
        from radcot.data.readers import read_queries

        return list(read_queries(queries))
    if isinstance(queries, Mapping):
        return [Query(str(q), str(t)) for q, t in queries.items()]
    out = []
    for q in queries:
        if isinstance(q, Query):
            out.append(q)
        elif isinstance(q, (tuple, list)) and len(q) == 2:
            out.append(Query(str(q[0]), str(q[1])))
        else:
            raise TypeError(f"expected Query(query_id, text) records, (qid, text) pairs or a {{qid: text}} mapping, "
                            f"got {type(q).__name__}: {q!r:.80}")
    return out


def iter_docs(collection: PathLike | Iterable[Doc]) -> Iterable[Doc]:
    """The documents of a collection path (anything ``read_corpus`` reads) or of an iterable of :class:`Doc`/tuples.

    Example:
        >>> list(iter_docs([("d1", "text", "Title")]))
        [Doc(doc_id='d1', text='text', title='Title')]
    """
    if isinstance(collection, (str, os.PathLike)):
        from radcot.data.readers import read_corpus

        return read_corpus(collection)
    return (d if isinstance(d, Doc) else Doc(*d) for d in collection)


def collection_fingerprint(collection: PathLike | Iterable[Doc]) -> str | None:
    """A content fingerprint of a collection's files (:func:`radcot.data.fingerprint.collection_fingerprint`).

    ``None`` for an in-memory iterable (it cannot be fingerprinted without reading it).

    Raises:
        FileNotFoundError: the path does not exist.
    """
    from radcot.data.fingerprint import collection_fingerprint as fingerprint

    return fingerprint(collection)


# ---------------------------------------------------------------------------------------------- retrieve + fetch


def retrieve_passages(retriever: Retriever, queries: Sequence[Query], k: int, batch_size: int = 256,
                      error: type[Exception] = RadcotError,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The top-``k`` passages of each query, with their stored text: the retrieve-then-fetch join.

    Args:
        retriever: any :class:`Retriever`.
        queries: the queries (ids must be unique).
        k: passages per query.
        batch_size: queries per ``batch_search`` call.
        error: the exception raised when the index returns a doc id it holds no text for.
        on_batch: called with the number of queries done after each batch (for a progress bar).

    Returns:
        ``{qid: [{"doc_id", "title", "text", "score"}, ...]}`` in the queries' order, best passage first.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(queries), batch_size):
        chunk = list(queries[i:i + batch_size])
        hits = retriever.batch_search(chunk, k)
        for q in chunk:
            out[q.query_id] = [_passage(retriever, q, sd, error) for sd in list(hits.get(q.query_id, []))[:k]]
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def _passage(retriever: Retriever, q: Query, sd: ScoredDoc, error: type[Exception]) -> dict[str, Any]:
    doc = retriever.doc(sd.doc_id)
    if doc is None:
        raise error(f"the index {getattr(retriever, 'index_dir', '')} returned doc id {sd.doc_id!r} for query "
                    f"{q.query_id!r} but holds no stored text for it; rebuild it with `radcot index` (stores documents)")
    return {"doc_id": doc.doc_id, "title": doc.title or "", "text": doc.text, "score": float(sd.score)}
