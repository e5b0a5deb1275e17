"""Reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009): of TREC runs, and of retrievers.

Three numbers, three names: ``rrf_constant`` is the RRF constant (60), ``depth`` how many of each run's top
documents take part, and ``k`` -- as everywhere in radcot -- how many results a search returns.

Example:
    >>> a = {"q1": {"d1": 3.0, "d2": 2.0}}
    >>> b = {"q1": {"d2": 9.0, "d3": 1.0}}
    >>> fused = reciprocal_rank_fusion([a, b], rrf_constant=60)
    >>> list(fused["q1"])            # d2: 1/62 + 1/61 beats d1: 1/61 and d3: 1/62
    ['d2', 'd1', 'd3']
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

from radcot.records import Query, ScoredDoc

Run = dict[str, dict[str, float]]


def _ranked(hits) -> list[str]:
    """Doc ids of one query's hits, best first (score descending, ties by doc id ascending)."""
    if isinstance(hits, Mapping):
        items = list(hits.items())
    else:  # a list of ScoredDoc (or (doc_id, score) pairs), as batch_search returns
        items = [(h.doc_id, h.score) if isinstance(h, ScoredDoc) else (h[0], h[1]) for h in hits]
    return [d for d, _ in sorted(items, key=lambda kv: (-float(kv[1]), kv[0]))]


#: the RRF constant of Cormack et al. (and pyserini's default)
DEFAULT_RRF_CONSTANT = 60


def _renamed(new_name: str, new_value, old_name: str, old_value, where: str):
    """``new_value``, or the value passed under the deprecated ``old_name`` (with a warning); never both."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise TypeError(f"{where}: pass {new_name}= only ({old_name}= is its deprecated name)")
    warnings.warn(f"{where}: {old_name}= is deprecated, it is the RRF constant: pass {new_name}={old_value!r}",
                  DeprecationWarning, stacklevel=3)
    return old_value


def _check_runs(runs: Any) -> None:
    """``runs`` is a list of runs (``{qid: ...}`` mappings): a path, one run, or anything else is a TypeError."""
    if isinstance(runs, (str, bytes, os.PathLike)):
        raise TypeError(f"runs: expected a list of runs ({{qid: {{docid: score}}}}), got the path {runs!r:.80}; "
                        f"read run files with radcot.read_run")
    if isinstance(runs, Mapping) or not isinstance(runs, Sequence):
        raise TypeError(f"runs: expected a list of runs ({{qid: {{docid: score}}}}), got {type(runs).__name__}"
                        + ("; wrap one run in a list" if isinstance(runs, Mapping) else ""))
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise TypeError(f"runs[{i}]: expected a run ({{qid: {{docid: score}}}}), got {type(run).__name__}: "
                            f"{run!r:.60}")


def reciprocal_rank_fusion(runs: Sequence[Mapping[str, Mapping[str, float] | Sequence[ScoredDoc]]],
                           rrf_constant: float | None = None, depth: int = 1000, max_docs: int | None = None,
                           weights: Sequence[float] | None = None, *, k: float | None = None) -> Run:
    """Fuse runs by ``score(d) = sum_r w_r / (rrf_constant + rank_r(d))`` (ranks from 1).

    Args:
        runs: runs as ``{qid: {docid: score}}`` (or ``{qid: [ScoredDoc, ...]}``); ranks come from the scores
            (descending, ties broken by doc id), not from dict order.
        rrf_constant: the RRF constant (default :data:`DEFAULT_RRF_CONSTANT`, 60, as in the paper and pyserini).
        depth: only each run's top ``depth`` documents per query contribute.
        max_docs: keep this many fused documents per query (default: ``depth``).
        weights: optional per-run weights (default 1 each).
        k: deprecated name of ``rrf_constant`` (a warning; ``k`` means a result count elsewhere in radcot).

    Returns:
        ``{qid: {docid: fused score}}`` over the union of the runs' queries, each query's docs ordered best
        first (ties by doc id).

    Example:
        >>> reciprocal_rank_fusion([{"q": {"a": 1.0}}, {"q": {"b": 5.0, "a": 4.0}}])["q"]
        {'a': 0.03252247488101534, 'b': 0.01639344262295082}
    """
    _check_runs(runs)
    rrf_constant = _renamed("rrf_constant", rrf_constant, "k", k, "reciprocal_rank_fusion")
    rrf_constant = DEFAULT_RRF_CONSTANT if rrf_constant is None else rrf_constant
    if rrf_constant < 0:
        raise ValueError(f"the RRF constant must be >= 0, got {rrf_constant}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not runs:
        raise ValueError("reciprocal_rank_fusion needs at least one run")
    if weights is None:
        weights = [1.0] * len(runs)
    if len(weights) != len(runs):
        raise ValueError(f"{len(weights)} weights for {len(runs)} runs")
    max_docs = depth if max_docs is None else max_docs
    fused: Run = {}
    for qid in dict.fromkeys(qid for run in runs for qid in run):  # the union of the runs' queries, in order
        scores: dict[str, float] = {}
        for run, w in zip(runs, weights):
            hits = run.get(qid)
            if not hits:
                continue
            for rank, did in enumerate(_ranked(hits)[:depth], 1):
                scores[did] = scores.get(did, 0.0) + w / (rrf_constant + rank)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:max_docs]
        fused[qid] = dict(ranked)
    return fused


class FusedRetriever:
    """Reciprocal rank fusion of several retrievers behind the retriever contract (``batch_search``, ``doc``).

    Used for a student's context (``student.context_retriever: fused``): BM25 and dense hits fused by
    :func:`reciprocal_rank_fusion`; documents come from the first retriever that stores them.

    Args:
        retrievers: objects with ``batch_search(queries, k) -> {qid: [ScoredDoc]}`` and ``doc(doc_id)``.
        depth: hits taken from each retriever before fusing (at least the ``k`` asked for).
        rrf_constant: the RRF constant (default 60, as in the paper and pyserini).
        rrf_k: deprecated name of ``rrf_constant``.

    Example:
        >>> fused = FusedRetriever([bm25, dense])  # doctest: +SKIP
        >>> fused.batch_search([Query("q1", "who taught Velkor")], k=5)["q1"][0].doc_id  # doctest: +SKIP
    """

    kind = "fused"

    def __init__(self, retrievers: Sequence[Any], depth: int = 100, rrf_constant: float | None = None, *,
                 rrf_k: float | None = None):
        if len(retrievers) < 2:
            raise ValueError(f"FusedRetriever needs at least two retrievers, got {len(retrievers)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        rrf_constant = _renamed("rrf_constant", rrf_constant, "rrf_k", rrf_k, "FusedRetriever")
        self.retrievers, self.depth = list(retrievers), int(depth)
        self.rrf_constant = DEFAULT_RRF_CONSTANT if rrf_constant is None else rrf_constant

    @property
    def config(self) -> dict:
        """The fusion's parameters and each retriever's config (JSON-serialisable)."""
        return {"kind": self.kind, "depth": self.depth, "rrf_constant": self.rrf_constant,
                "retrievers": [getattr(r, "config", None) or {"class": type(r).__name__} for r in self.retrievers]}

    def batch_search(self, queries: Sequence[Query] | Mapping[str, str], k: int = 10, threads: int | None = None,
                     **_) -> dict[str, list[ScoredDoc]]:
        """``{qid: [ScoredDoc, ...]}``: the top ``k`` of the fused top-``depth`` lists of every retriever."""
        depth = max(self.depth, int(k))
        runs = [r.batch_search(queries, depth) for r in self.retrievers]
        fused = reciprocal_rank_fusion(runs, rrf_constant=self.rrf_constant, depth=depth, max_docs=int(k))
        return {qid: [ScoredDoc(qid, d, s) for d, s in docs.items()] for qid, docs in fused.items()}

    def search(self, query: str | Query, k: int = 10, query_id: str = "q") -> list[ScoredDoc]:
        """One query: up to ``k`` fused hits, best first."""
        if isinstance(query, Query):
            query_id, query = query.query_id, query.text
        return self.batch_search([Query(query_id, query)], k=k).get(query_id, [])

    def doc(self, doc_id: str):
        """The document from the first retriever that stores it, or ``None``."""
        for r in self.retrievers:
            d = r.doc(doc_id)
            if d is not None:
                return d
        return None
