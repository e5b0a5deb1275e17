"""PyTerrier transformers: a trained student as a query rewriter, and a radcot retriever as a retrieval stage.

:class:`RADCoTExpander` rewrites the ``query`` column with the student's expansion and keeps the original in
``query_0`` (earlier ``query_0``, ``query_1``... move up one), as PyTerrier's own query rewriters do
(``pt.model.push_queries``), so it composes with any retriever: ``RADCoTExpander(...) >> bm25``.
:class:`RADCoTRetriever` wraps a radcot retriever (e.g. :class:`~radcot.retrieval.bm25.BM25Retriever`, the
Lucene index the student reads its passages from) as the retrieval stage, without Terrier's Java.

PyTerrier itself is imported when this module is (``import radcot`` does not import it); PyTerrier's own
Java (Terrier) is never started here, so the one JVM of the process stays radcot's (pyserini's).

Example:
    >>> import pyterrier as pt                                                    # doctest: +SKIP
    >>> from ir_measures import nDCG                                              # doctest: +SKIP
    >>> from radcot.integrations.pyterrier import RADCoTExpander, RADCoTRetriever  # doctest: +SKIP
    >>> expand = RADCoTExpander.load("student/", cache="expansions.sqlite")      # doctest: +SKIP
    >>> pipeline = expand >> RADCoTRetriever(expand.expander.retriever, k=100)    # doctest: +SKIP
    >>> pt.Experiment([pipeline], topics, qrels, [nDCG @ 10])                     # doctest: +SKIP
"""
from __future__ import annotations

import os
from typing import Any

from radcot._deps import require
from radcot.records import RadcotError

pt = require("pyterrier", "the PyTerrier integration", extra="pyterrier")
pd = require("pandas", "the PyTerrier integration", extra="pyterrier")


def _check_columns(inp: "pd.DataFrame", needed: tuple[str, ...], who: str) -> None:
    missing = [c for c in needed if c not in inp.columns]
    if missing:
        raise RadcotError(f"{who} needs a queries frame with columns {list(needed)}; missing {missing} "
                          f"(it has {list(inp.columns)})")


class RADCoTExpander(pt.Transformer):
    """Rewrite each query with a trained student's expansion (``query``), keeping the original in ``query_0``.

    Args:
        expander: a loaded :class:`radcot.Expander`.
        formula: expansion formula (default: the expander's, i.e. the student's recorded one).
        cot_column: also write the student's CoT to this column (default: no).
        fallback_column: also write why a query stayed unexpanded (``no_cot``; ``None`` when expanded).

    Each distinct query text is expanded once per call (batched, greedy, through the expander's cache when it
    has one): equal to :meth:`radcot.Expander.expand`.
    """

    def __init__(self, expander: Any, formula: str | None = None, cot_column: str | None = None,
                 fallback_column: str | None = None):
        self.expander = expander
        self.formula = formula
        self.cot_column = cot_column
        self.fallback_column = fallback_column

    @classmethod
    def load(cls, student_dir: str | os.PathLike, index: str | os.PathLike | Any = None, formula: str | None = None,
             device: str = "auto", cot_column: str | None = None, cache: Any = None, **kwargs) -> "RADCoTExpander":
        """Load the student as :meth:`radcot.Expander.load` does: its recorded index and settings by default
        (``index``, ``force_index``, ``k``, ``max_new_tokens``... override them).

        Args:
            cache: a :class:`~radcot.serving.cache.CoTStore`, or a path: the SQLite cache ``radcot serve --cache``
                and ``radcot cache warm`` share (the same student and settings read each other's entries).
        """
        from radcot.serving.cache import SQLiteCache
        from radcot.serving.expander import Expander

        if isinstance(cache, (str, os.PathLike)):
            cache = SQLiteCache(cache)
        return cls(Expander.load(student_dir, index=index, formula=formula, device=device, cache=cache, **kwargs),
                   cot_column=cot_column)

    def transform(self, inp: "pd.DataFrame") -> "pd.DataFrame":
        """``inp`` (``qid``, ``query``, ...) -> the same rows with ``query`` expanded and ``query_0`` the original.

        Raises:
            RadcotError: a missing ``qid``/``query`` column.
            TypeError: a ``query`` that is not a string (NaN, None, a number), naming its row and qid.
        """
        _check_columns(inp, ("qid", "query"), "RADCoTExpander")
        texts = list(inp["query"])
        for row, (qid, t) in enumerate(zip(inp["qid"], texts)):
            if not isinstance(t, str):
                raise TypeError(f"RADCoTExpander: row {row} (qid {qid!r}) has query {t!r} of type "
                                f"{type(t).__name__}, expected a str; drop or fill such rows first")
        distinct = list(dict.fromkeys(texts))
        by_text = dict(zip(distinct, self.expander.expand_batch(distinct, self.formula)))
        out = pt.model.push_queries(inp)
        out["query"] = [by_text[t].expanded for t in texts]
        if self.cot_column:
            out[self.cot_column] = [by_text[t].cot for t in texts]
        if self.fallback_column:
            out[self.fallback_column] = [by_text[t].fallback for t in texts]
        return out

    def __repr__(self) -> str:
        return f"RADCoTExpander({self.expander!r}, formula={self.formula or self.expander.formula!r})"


class RADCoTRetriever(pt.Transformer):
    """A radcot retriever (``batch_search``) as a PyTerrier retrieval stage: queries in, ranked results out.

    Args:
        retriever: e.g. :class:`~radcot.retrieval.bm25.BM25Retriever` or an index directory
            (:func:`radcot.retrieval.load_retriever`).
        k: results per query.
        max_terms: cut each query text to this many distinct terms first (Lucene refuses more than 1024
            clauses; an expanded query repeats the query and adds a CoT); ``None``: no cut.

    Output: the input's columns plus ``docno``, ``score``, ``rank`` (from 0, PyTerrier's convention), one row
    per hit, best first within each query.
    """

    def __init__(self, retriever: Any, k: int = 1000, max_terms: int | None = 1000):
        if isinstance(retriever, (str, os.PathLike)):
            from radcot.retrieval import load_retriever

            retriever = load_retriever(retriever)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.retriever, self.k, self.max_terms = retriever, int(k), max_terms

    def transform(self, inp: "pd.DataFrame") -> "pd.DataFrame":
        from radcot.expansion import limit_terms
        from radcot.records import Query

        _check_columns(inp, ("qid", "query"), "RADCoTRetriever")
        rows = inp.drop_duplicates("qid")
        for row, (qid, t) in enumerate(zip(rows["qid"], rows["query"])):
            if not isinstance(t, str):
                raise TypeError(f"RADCoTRetriever: row {row} (qid {qid!r}) has query {t!r} of type "
                                f"{type(t).__name__}, expected a str; drop or fill such rows first")
        queries = [Query(str(r.qid), limit_terms(r.query, self.max_terms) if self.max_terms else r.query)
                   for r in rows.itertuples(index=False)]
        hits = self.retriever.batch_search(queries, k=self.k) if queries else {}
        ranked = pd.DataFrame([{"qid": q.query_id, "docno": h.doc_id, "score": float(h.score), "rank": r}
                               for q in queries for r, h in enumerate(hits.get(q.query_id, []))],
                              columns=["qid", "docno", "score", "rank"])
        keep = rows.drop(columns=[c for c in ("docno", "score", "rank") if c in rows.columns])
        return keep.assign(qid=keep["qid"].astype(str)).merge(ranked, on="qid", how="inner")

    def __repr__(self) -> str:
        return f"RADCoTRetriever({self.retriever!r}, k={self.k})"


__all__ = ["RADCoTExpander", "RADCoTRetriever"]
