"""Checkpoint selection by retrieval quality: a scorer of a checkpoint's dev CoTs for ``radcot train``.

The trainer (:func:`radcot.student.train.train`) sits below retrieval, expansion and evaluation in radcot's
layers, so it does not score checkpoints itself: with ``select_by: retrieval`` it calls an injected
``scorer({query_id: CoT}) -> float`` (higher is better) at every evaluation. :func:`retrieval_scorer` builds that
scorer from the :class:`~radcot.student.train.TrainConfig` fields that describe it, so every process that trains
(each ``torchrun`` rank runs ``radcot train``) can build the same one:

- the dev queries' texts come from the distillation data (``data``: its dev split, held-out *training* queries);
- each dev query is expanded with its generated CoT (``select_formula``), BM25 (``select_index``) searches
  ``select_k`` deep, and ``select_metric`` (an ir-measures name) is computed with ``select_qrels`` over the dev
  queries that have judgements.

The index and the qrels are opened at the first call (only the rank that evaluates, rank 0, opens them).

Example:
    >>> from radcot.selection import retrieval_scorer
    >>> from radcot.student.train import TrainConfig, train
    >>> config = TrainConfig(data="distill", model="google/flan-t5-base", out="runs/s", select_by="retrieval",
    ...                      select_index="indexes/train-bm25", select_qrels="qrels.train.tsv")  # doctest: +SKIP
    >>> train(config, scorer=retrieval_scorer(config))  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from radcot.expansion import FORMULAS, expand_queries
from radcot.records import Query, RadcotError

__all__ = ["RetrievalScorer", "SELECT_FORMULAS", "SelectionError", "retrieval_scorer"]

#: the formulas a BM25 checkpoint score can use (``dense`` joins query and CoT with ``[SEP]`` for dense encoders)
SELECT_FORMULAS = tuple(f for f in FORMULAS if f != "dense")

logger = logging.getLogger("radcot.selection")


class SelectionError(RadcotError, ValueError):
    """The checkpoint scorer cannot score (no judged dev query, dev queries unknown to the data)."""


class RetrievalScorer:
    """``scorer({query_id: CoT}) -> float``: ``metric`` of BM25 over the CoT-expanded dev queries.

    Args:
        data: the distillation data directory (the dev queries' texts).
        index: the BM25 index directory.
        qrels: judgements of the training queries: a qrels file, or a BEIR directory (``qrels/train.tsv``).
        metric: an ir-measures name (``nDCG@10``); results are keyed by its canonical name (:attr:`metric`).
        formula: expansion formula, one of :data:`SELECT_FORMULAS` (``radcot``, ``query2doc``, ``none``).
        k: BM25 depth.
    """

    def __init__(self, data: str, index: str, qrels: str, metric: str = "nDCG@10", formula: str = "radcot",
                 k: int = 100):
        import ir_measures

        if formula not in SELECT_FORMULAS:
            raise SelectionError(f"select_formula must be one of {', '.join(SELECT_FORMULAS)} (BM25 searches the "
                                 f"expanded dev queries), got {formula!r}")
        self.data, self.index, self.qrels_path, self.formula, self.k = Path(data), index, Path(qrels), formula, k
        self.metric = str(ir_measures.parse_measure(metric))
        self._retriever: Any = None
        self._queries: dict[str, str] | None = None
        self._qrels: dict[str, dict[str, int]] | None = None

    def __call__(self, cots: Mapping[str, str]) -> float:
        """The metric over the judged queries among ``cots``' (their CoTs expand them).

        Raises:
            SelectionError: none of the queries has judgements, or a query id is not in the data's dev split.
        """
        from radcot.evaluation import evaluate

        self._open()
        unknown = sorted(set(cots) - set(self._queries))
        if unknown:
            raise SelectionError(f"checkpoint selection: query ids {unknown[:3]} are not dev queries of {self.data}")
        qrels = {q: self._qrels[q] for q in cots if q in self._qrels}
        if not qrels:
            raise SelectionError(f"select_by=retrieval: none of the {len(cots)} dev queries has judgements in "
                                 f"{self.qrels_path}; pass the qrels of the training queries (select_qrels)")
        queries = expand_queries([Query(q, self._queries[q]) for q in qrels], cots, self.formula)
        run = self._retriever.batch_search(queries, k=self.k)
        return float(evaluate(qrels, run, [self.metric])[self.metric])

    def _open(self) -> None:
        """Open the index, read the qrels and the dev queries (once)."""
        if self._retriever is not None:
            return
        from radcot.data.readers import read_qrels
        from radcot.retrieval.bm25 import BM25Retriever
        from radcot.student.data import load_distillation_data

        dd, _ = load_distillation_data(self.data)
        dev = dd["dev"] if "dev" in dd else []
        self._queries = {r["query_id"]: r["query"] for r in dev}
        self._qrels = {}
        for q in read_qrels(self.qrels_path, split="train" if self.qrels_path.is_dir() else None):
            self._qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
        judged = sum(q in self._qrels for q in self._queries)
        logger.info("selection: %s of BM25 (%s, k=%d) over the %d of %d dev queries judged in %s", self.metric,
                    self.index, self.k, judged, len(self._queries), self.qrels_path)
        self._retriever = BM25Retriever(self.index)


def retrieval_scorer(config) -> RetrievalScorer:
    """The checkpoint scorer a :class:`~radcot.student.train.TrainConfig` with ``select_by: retrieval`` describes.

    Args:
        config: the TrainConfig (``data``, ``select_index``, ``select_qrels``, ``select_metric``, ``select_formula``,
            ``select_k``).

    Returns:
        a :class:`RetrievalScorer` (opens the index at its first call).

    Raises:
        SelectionError: ``config.select_by`` is not ``retrieval``, or its index or qrels are missing.
    """
    if config.select_by != "retrieval":
        raise SelectionError(f"retrieval_scorer: the config selects by {config.select_by!r}, not 'retrieval'")
    for name in ("select_index", "select_qrels"):
        if not Path(getattr(config, name)).exists():
            raise SelectionError(f"{name} {getattr(config, name)} does not exist (select_by=retrieval needs a BM25 "
                                 f"index and the qrels of the training queries)")
    return RetrievalScorer(config.data, config.select_index, config.select_qrels, metric=config.select_metric,
                           formula=config.select_formula, k=config.select_k)
