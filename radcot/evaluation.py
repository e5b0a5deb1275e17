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

import logging
import math
import os
from collections import defaultdict
from typing import Iterable, Mapping, NamedTuple, Sequence

from radcot.records import Qrel, RadcotError

logger = logging.getLogger(__name__)

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
        metrics: ir-measures names (``nDCG@10``, ``RR@10``, ``R@1000``, ``AP``, ``AP(rel=2)``, ...).
        per_query: also return ``{metric: {qid: value}}``.
        judged_only: ``True`` (the TREC convention): the mean is over the judged queries; queries of the run
            without judgements are ignored. ``False``: the mean is over every query of the run and every
            judged query; run queries without judgements score 0 (a system answering queries nobody judged
            is not credited for them). In both modes a judged query absent from the run scores 0 and is
            reported (a warning; :func:`missing_from_run` lists them).

    Returns:
        ``{metric: value}``, or ``(aggregate, per_query)`` when ``per_query``.

    Raises:
        RadcotError: empty qrels, an unknown metric, or a run none of whose queries is judged (wrong qrels).

    Example:
        >>> evaluate({"q1": {"d1": 1}}, {"q1": {"d1": 1.0}, "q9": {"d1": 1.0}}, ["AP"], judged_only=False)
        {'AP': 0.5}
    """
    qrels_d, run_d = _as_qrels(qrels), _as_run(run)
    _check_overlap(qrels_d, run_d, run)
    names, pq = _per_query(qrels_d, run_d, _parse(metrics))
    qids = set(qrels_d) if judged_only else set(qrels_d) | set(run_d)
    for values in pq.values():
        values.update({q: 0.0 for q in qids - values.keys()})  # judged but not retrieved / not judged
    aggregate = {name: sum(pq[name].values()) / len(qids) for name in names}
    return (aggregate, pq) if per_query else aggregate


def missing_from_run(qrels, run) -> list[str]:
    """The judged query ids (sorted) that the run has no result for; they score 0 in :func:`evaluate`."""
    qrels_d, run_d = _as_qrels(qrels), _as_run(run)
    return sorted(q for q in qrels_d if not run_d.get(q))


def _check_overlap(qrels_d: dict, run_d: dict, run) -> None:
    if not qrels_d:
        raise RadcotError("qrels are empty: nothing to evaluate against")
    where = f"run {run}" if isinstance(run, (str, os.PathLike)) else "the run"
    if run_d and not set(run_d) & set(qrels_d):
        raise RadcotError(f"none of the {len(run_d)} queries of {where} is judged in the qrels (run ids e.g. "
                          f"{sorted(run_d)[:3]}, judged e.g. {sorted(qrels_d)[:3]}): wrong qrels for this run?")
    missing = sorted(q for q in qrels_d if not run_d.get(q))
    if missing:
        logger.warning("%d of %d judged queries are absent from %s (they score 0): %s%s", len(missing),
                       len(qrels_d), where, ", ".join(missing[:10]), " ..." if len(missing) > 10 else "")


def _per_query(qrels_d: dict, run_d: dict, measures: list) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Per-query values of the judged queries the run retrieved for.

    Providers differ on judged queries without results (the msmarco provider behind RR@k emits 0 for them,
    pytrec_eval skips them), so only queries in both are computed and the caller fills in the zeros.
    """
    import ir_measures

    names = [str(m) for m in measures]
    by_measure = dict(zip(measures, names))
    judged_run = {q: docs for q, docs in run_d.items() if q in qrels_d and docs}
    pq: dict[str, dict[str, float]] = {name: {} for name in names}
    for metric in ir_measures.iter_calc(measures, qrels_d, judged_run) if judged_run else ():
        if metric.query_id in judged_run:
            pq[by_measure.get(metric.measure, str(metric.measure))][metric.query_id] = float(metric.value)
    return names, pq


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
