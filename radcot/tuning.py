"""Expansion settings by measurement: pick a row's formula and CoT length on training queries with qrels.

How a CoT is turned into a query matters as much as the model (issue 12: the official RADCoT formula with
100-token CoTs helped where query2doc with 128 tokens hurt). :func:`tune_expansion` tries every
``formula`` x ``max_words`` of a small grid on *training* queries that have qrels (never the test
queries), searches each expansion with the row's retriever and keeps the best by one ir-measures metric.
The length grid truncates one long CoT per query (no regeneration). Ties go to the earlier grid point.

In a pipeline a row asks for it with ``tune: {formula: [radcot, query2doc], max_words: [32, 64, null],
metric: nDCG@10}`` (see :mod:`radcot.pipeline`); the choice is recorded in the manifest's stage entry.

Example:
    >>> truncate_words("a b c d", 2)
    'a b'
    >>> check_grid({"formula": ["radcot"], "max_words": [32, None]}, "rows[2].tune")["max_words"]
    [32, None]
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, Sequence

from radcot.records import Query, RadcotError

logger = logging.getLogger("radcot.tuning")

DEFAULT_GRID = {"formula": ["radcot", "query2doc"], "max_words": [32, 64, 100, None], "metric": "nDCG@10", "k": 100}


class TuningError(RadcotError, ValueError):
    """A tuning grid or input that cannot be used; names the key and the fix."""


@dataclasses.dataclass
class TuneResult:
    """The chosen setting and every grid point's score."""

    formula: str
    max_words: int | None
    metric: str
    score: float
    n_queries: int
    grid: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def truncate_words(text: str, max_words: int | None) -> str:
    """The first ``max_words`` words of ``text`` (all of them for ``None``)."""
    words = (text or "").split()
    return " ".join(words if max_words is None else words[:max_words])


def check_grid(spec: Mapping[str, Any] | None, where: str = "tune") -> dict[str, Any]:
    """Validate a grid (``formula``, ``max_words``, ``metric``, ``k``), filling in defaults."""
    from radcot.expansion import FORMULAS

    if spec is not None and not isinstance(spec, Mapping):
        raise TuningError(f"{where}: expected a mapping like {{formula: [radcot], max_words: [32, null]}}, got {spec!r}")
    grid = {**DEFAULT_GRID, **dict(spec or {})}
    unknown = set(grid) - set(DEFAULT_GRID)
    if unknown:
        raise TuningError(f"{where}: unknown keys {sorted(unknown)}; use {sorted(DEFAULT_GRID)}")
    for key in ("formula", "max_words"):
        if not isinstance(grid[key], list) or not grid[key]:
            raise TuningError(f"{where}.{key}: expected a non-empty list, got {grid[key]!r}")
    bad = [f for f in grid["formula"] if f not in FORMULAS or f == "none"]
    if bad:
        raise TuningError(f"{where}.formula: {bad} not among the expansion formulas {[f for f in FORMULAS if f != 'none']}")
    bad = [n for n in grid["max_words"] if n is not None and (not isinstance(n, int) or n < 1)]
    if bad:
        raise TuningError(f"{where}.max_words: {bad} must be positive integers or null (whole CoT)")
    if not isinstance(grid["k"], int) or isinstance(grid["k"], bool) or grid["k"] < 1:
        raise TuningError(f"{where}.k: run depth must be a positive integer, got {grid['k']!r}")
    grid["metric"] = _metric(grid["metric"], where)
    return grid


def _metric(name: Any, where: str) -> str:
    """The canonical ir-measures name of the grid's metric (``MRR@10`` -> ``RR@10``)."""
    from radcot.evaluation import canonical_measure

    if not isinstance(name, str):
        raise TuningError(f"{where}.metric: expected one ir-measures name such as nDCG@10, got {name!r}")
    try:
        return canonical_measure(name)
    except RadcotError as e:
        raise TuningError(f"{where}.metric: {e}") from None


def score_setting(queries: Sequence[Query], cots: Mapping[str, str], qrels, retriever, formula: str,
                  max_words: int | None, metric: str, k: int) -> float:
    """The ``metric`` (any ir-measures spelling: ``MRR@10`` is ``RR@10``) of BM25 (``retriever``) over
    ``queries`` expanded with truncated ``cots`` (scored on ``queries`` only)."""
    from radcot.evaluation import canonical_measure, evaluate
    from radcot.expansion import expand_queries

    ids = {q.query_id for q in queries}
    qrels = {q: d for q, d in _qrels_dict(qrels).items() if q in ids}  # judged queries outside the run would count 0
    cut = {qid: truncate_words(text, max_words) for qid, text in cots.items()}
    expanded = expand_queries(queries, cut, formula)
    run = retriever.run([Query(q.query_id, expanded.get(q.query_id, q.text)) for q in queries], k=k)
    return float(evaluate(qrels, run, [metric])[canonical_measure(metric)])


def tune_expansion(queries: Sequence[Query], cots: Mapping[str, str], qrels, retriever,
                   grid: Mapping[str, Any] | None = None) -> TuneResult:
    """Try every formula x max_words of ``grid`` on ``queries`` (training queries with ``qrels``); keep the best.

    Args:
        queries: training/dev queries (never the test queries).
        cots: ``{qid: CoT}`` for them (teacher CoTs, or a student's for held-out training queries).
        qrels: their judgements (path or ``{qid: {docid: rel}}``).
        retriever: what the row searches with (``run(queries, k)``).
        grid: ``formula``, ``max_words``, ``metric``, ``k`` (see :data:`DEFAULT_GRID`). The result and its grid
            points key the metric by its canonical ir-measures name (``metric: MRR@10`` gives ``RR@10``).

    Raises:
        TuningError: a bad grid, or no query with both a CoT and judgements.
    """
    g = check_grid(grid)
    qrels = _qrels_dict(qrels)
    usable = [q for q in queries if qrels.get(q.query_id) and (cots.get(q.query_id) or "").strip()]
    if not usable:
        raise TuningError(f"tuning needs training queries with both a CoT and qrels; none of {len(queries)} has both")
    points = []
    for formula in g["formula"]:
        for n in g["max_words"]:
            score = score_setting(usable, cots, qrels, retriever, formula, n, g["metric"], g["k"])
            points.append({"formula": formula, "max_words": n, g["metric"]: score})
            logger.info("tune: formula=%s max_words=%s %s=%.4f on %d training queries", formula, n, g["metric"],
                        score, len(usable))
    best = max(points, key=lambda p: p[g["metric"]])  # max keeps the first of equal scores
    return TuneResult(best["formula"], best["max_words"], g["metric"], best[g["metric"]], len(usable), points)


def _qrels_dict(qrels) -> dict[str, dict[str, int]]:
    if isinstance(qrels, Mapping):
        return {str(q): dict(d) for q, d in qrels.items()}
    from radcot.data.readers import read_qrels

    out: dict[str, dict[str, int]] = {}
    for r in read_qrels(qrels):
        out.setdefault(r.query_id, {})[r.doc_id] = r.relevance
    return out
