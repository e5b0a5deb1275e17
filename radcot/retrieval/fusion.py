"""Reciprocal-rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009) of TREC runs.

Example:
    >>> a = {"q1": {"d1": 3.0, "d2": 2.0}}
    >>> b = {"q1": {"d2": 9.0, "d3": 1.0}}
    >>> fused = reciprocal_rank_fusion([a, b], k=60)
    >>> list(fused["q1"])            # d2: 1/62 + 1/61 beats d1: 1/61 and d3: 1/62
    ['d2', 'd1', 'd3']
"""
from __future__ import annotations

from typing import Mapping, Sequence

from radcot.records import ScoredDoc

Run = dict[str, dict[str, float]]


def _ranked(hits) -> list[str]:
    """Doc ids of one query's hits, best first (score descending, ties by doc id ascending)."""
    if isinstance(hits, Mapping):
        items = list(hits.items())
    else:  # a list of ScoredDoc (or (doc_id, score) pairs), as batch_search returns
        items = [(h.doc_id, h.score) if isinstance(h, ScoredDoc) else (h[0], h[1]) for h in hits]
    return [d for d, _ in sorted(items, key=lambda kv: (-float(kv[1]), kv[0]))]


def reciprocal_rank_fusion(runs: Sequence[Mapping[str, Mapping[str, float] | Sequence[ScoredDoc]]], k: int = 60,
                           depth: int = 1000, max_docs: int | None = None,
                           weights: Sequence[float] | None = None) -> Run:
    """Fuse runs by ``score(d) = sum_r w_r / (k + rank_r(d))`` (ranks from 1).

    Args:
        runs: runs as ``{qid: {docid: score}}`` (or ``{qid: [ScoredDoc, ...]}``); ranks come from the scores
            (descending, ties broken by doc id), not from dict order.
        k: the RRF constant (60 in the paper and in pyserini).
        depth: only each run's top ``depth`` documents per query contribute.
        max_docs: keep this many fused documents per query (default: ``depth``).
        weights: optional per-run weights (default 1 each).

    Returns:
        ``{qid: {docid: fused score}}`` over the union of the runs' queries, each query's docs ordered best
        first (ties by doc id).

    Example:
        >>> reciprocal_rank_fusion([{"q": {"a": 1.0}}, {"q": {"b": 5.0, "a": 4.0}}])["q"]
        {'a': 0.03252247488101534, 'b': 0.01639344262295082}
    """
    if k < 0:
        raise ValueError(f"RRF constant k must be >= 0, got {k}")
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
    qids: list[str] = []
    seen: set[str] = set()
    for run in runs:
        for qid in run:
            if qid not in seen:
                seen.add(qid)
                qids.append(qid)
    for qid in qids:
        scores: dict[str, float] = {}
        for run, w in zip(runs, weights):
            hits = run.get(qid)
            if not hits:
                continue
            for rank, did in enumerate(_ranked(hits)[:depth], 1):
                scores[did] = scores.get(did, 0.0) + w / (k + rank)
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:max_docs]
        fused[qid] = dict(ranked)
    return fused
