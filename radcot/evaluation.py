"""Evaluation on ir-measures: aggregate and per-query metrics, paired significance tests.

RR@10 (MRR@10) is computed through :func:`ir_measures.calc_aggregate`, which routes it to the provider
that honours the cutoff (pytrec_eval called directly silently returns uncut RR).

Example:
    >>> from radcot.evaluation import evaluate
    >>> qrels = {"q1": {"d1": 1}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}}
    >>> evaluate(qrels, run, ["nDCG@10", "RR@10"])
    {'nDCG@10': 1.0, 'RR@10': 1.0}
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Iterable, Mapping, NamedTuple, Sequence

from radcot.records import Qrel, RadcotError

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@1000", "AP")

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def _as_qrels(qrels) -> dict[str, dict[str, int]]:
    from radcot.data.readers import read_qrels

    if isinstance(qrels, (str, os.PathLike)):
        qrels = read_qrels(qrels)
    if isinstance(qrels, Mapping):
        return {str(q): {str(d): int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for item in qrels:
        q = item if isinstance(item, Qrel) else Qrel(*item)
        out[str(q.query_id)][str(q.doc_id)] = int(q.relevance)
    return dict(out)


def _as_run(run) -> dict[str, dict[str, float]]:
    from radcot.data.readers import read_run, run_from_scored

    if isinstance(run, (str, os.PathLike)):
        return read_run(run)
    if isinstance(run, Mapping):
        first = next(iter(run.values()), None)
        if isinstance(first, list):  # {qid: [ScoredDoc, ...]} as returned by batch_search
            return run_from_scored(s for docs in run.values() for s in docs)
        return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in run.items()}
    return run_from_scored(run)


def _parse(metrics: Iterable[str | object]):
    import ir_measures

    out = []
    for m in metrics:
        if not isinstance(m, str):
            out.append(m)
            continue
        try:
            out.append(ir_measures.parse_measure(m))
        except Exception as e:  # ir_measures raises ValueError/NameError/SyntaxError variants
            raise RadcotError(f"unknown metric {m!r}: {e}. Use ir-measures names, e.g. nDCG@10, RR@10, "
                              f"R@1000, AP, P@10, Judged@10") from None
    return out


def evaluate(qrels, run, metrics: Sequence[str] = DEFAULT_METRICS, per_query: bool = False,
             judged_only: bool = True):
    """Score a run with ir-measures.

    Args:
        qrels: a path (TREC or BEIR qrels, or a BEIR directory), ``{qid: {docid: rel}}`` or :class:`Qrel` records.
        run: a path (TREC run), ``{qid: {docid: score}}``, ``{qid: [ScoredDoc]}`` or ScoredDoc records.
        metrics: ir-measures names (``nDCG@10``, ``RR@10``, ``R@1000``, ``AP``, ...).
        per_query: also return ``{metric: {qid: value}}``.
        judged_only: evaluate only queries that have judgements (TREC convention; unjudged queries in the
            run are ignored, judged queries missing from the run count as 0).

    Returns:
        ``{metric: value}`` (mean over judged queries), or ``(aggregate, per_query)`` when ``per_query``.
    """
    import ir_measures

    qrels_d, run_d = _as_qrels(qrels), _as_run(run)
    if not qrels_d:
        raise RadcotError("qrels are empty: nothing to evaluate against")
    if judged_only:
        run_d = {q: docs for q, docs in run_d.items() if q in qrels_d}
    measures = _parse(metrics)
    names = [str(m) for m in measures]
    # Mean over *all* judged queries: a judged query with no results scores 0. Providers differ here
    # (the msmarco provider behind RR@k emits 0 for them, pytrec_eval skips them), so the mean is taken
    # here over per-query values rather than trusting each provider's aggregate.
    by_str = dict(zip(measures, names))
    pq: dict[str, dict[str, float]] = {name: {q: 0.0 for q in qrels_d} for name in names}
    for metric in ir_measures.iter_calc(measures, qrels_d, run_d) if run_d else ():
        if metric.query_id in qrels_d:
            pq[by_str.get(metric.measure, str(metric.measure))][metric.query_id] = float(metric.value)
    aggregate = {name: sum(pq[name].values()) / len(qrels_d) for name in names}
    if not per_query:
        return aggregate
    return aggregate, pq


class TTestResult(NamedTuple):
    metric: str
    mean_a: float
    mean_b: float
    delta: float
    t: float
    p_value: float
    n: int


def paired_ttest(per_query_a: Mapping[str, float], per_query_b: Mapping[str, float], metric: str = "") -> TTestResult:
    """Two-sided paired t-test over the queries both runs were scored on (scipy.stats.ttest_rel).

    Identical per-query values give p = 1.0 (no difference), not NaN.
    """
    from scipy import stats

    qids = sorted(set(per_query_a) & set(per_query_b))
    if len(qids) < 2:
        raise RadcotError(f"paired t-test needs >= 2 common queries, got {len(qids)}")
    a = [per_query_a[q] for q in qids]
    b = [per_query_b[q] for q in qids]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    diffs = [y - x for x, y in zip(a, b)]
    if all(abs(d - diffs[0]) < 1e-15 for d in diffs):
        t, p = (0.0, 1.0) if abs(diffs[0]) < 1e-15 else (math.copysign(math.inf, diffs[0]), 0.0)
    else:
        res = stats.ttest_rel(b, a)
        t, p = float(res.statistic), float(res.pvalue)
    return TTestResult(metric, mean_a, mean_b, mean_b - mean_a, t, p, len(qids))


def compare_runs(qrels, run_a, run_b, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, TTestResult]:
    """Evaluate two runs and paired-t-test each metric (b against a)."""
    _, pq_a = evaluate(qrels, run_a, metrics, per_query=True)
    _, pq_b = evaluate(qrels, run_b, metrics, per_query=True)
    return {m: paired_ttest(pq_a[m], pq_b[m], m) for m in pq_a}
