"""Evaluation on ir-measures: aggregate and per-query metrics, paired significance tests.

Metrics are keyed by their **canonical ir-measures name** everywhere in radcot (results, tables, tuning):
``MRR@10`` is ``RR@10``, ``NDCG@10`` is ``nDCG@10``, ``Recall@1000`` is ``R@1000``, ``MAP`` is ``AP``, as
:func:`ir_measures.parse_measure` spells them; trec_eval names (``ndcg_cut_10``, ``map``, ``recip_rank``)
are accepted too. :func:`canonical_measure` gives the name to look a result up by.

RR@10 (MRR@10) is computed through :func:`ir_measures.calc_aggregate`, which routes it to the provider
that honours the cutoff (pytrec_eval called directly silently returns uncut RR).

Example:
    >>> from radcot.evaluation import canonical_measure, evaluate
    >>> qrels = {"q1": {"d1": 1}}
    >>> run = {"q1": {"d1": 2.0, "d2": 1.0}}
    >>> evaluate(qrels, run, ["NDCG@10", "MRR@10"])
    {'nDCG@10': 1.0, 'RR@10': 1.0}
    >>> canonical_measure("Recall@1000")
    'R@1000'
"""
from __future__ import annotations

import functools
import logging
import math
import numbers
import os
from collections import defaultdict
from typing import Iterable, Mapping, NamedTuple, Sequence

from radcot.records import Qrel, RadcotError, ScoredDoc

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("nDCG@10", "RR@10", "R@1000", "AP")
#: examples named in the error for an unknown metric
METRIC_EXAMPLES = "nDCG@10, RR@10 (MRR@10), R@1000, AP, AP(rel=2), R(rel=2)@1000, P@10, Judged@10"

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


class MetricError(RadcotError, ValueError):
    """A metric name ir-measures does not know; names it, suggests a spelling and lists examples."""


def canonical_measure(name) -> str:
    """The canonical ir-measures name of a metric, the key radcot stores its results under.

    Args:
        name: an ir-measures name (``nDCG@10``, ``MRR@10``, ``AP(rel=2)``), a trec_eval name (``ndcg_cut_10``,
            ``map``) or an ir-measures measure object (``ir_measures.nDCG@10``).

    Raises:
        TypeError: ``name`` is not a str or a measure.
        MetricError: a name neither ir-measures nor trec_eval knows (with a suggested spelling when one fits).

    Example:
        >>> [canonical_measure(n) for n in ("MRR@10", "NDCG@10", "Recall(rel=2)@1000", "map", "ndcg_cut_10")]
        ['RR@10', 'nDCG@10', 'R(rel=2)@1000', 'AP', 'nDCG@10']
    """
    from ir_measures.measures import Measure

    if isinstance(name, Measure):
        return str(name)
    if not isinstance(name, str):
        raise TypeError(f"a metric must be an ir-measures name such as 'nDCG@10' (a str), got "
                        f"{type(name).__name__} {name!r}")
    return _canonical_name(name)


@functools.lru_cache(maxsize=256)
def _canonical_name(name: str) -> str:
    import ir_measures

    try:
        return str(ir_measures.parse_measure(name))
    except Exception as e:  # ir_measures raises ValueError/NameError/SyntaxError variants
        problem = e
    try:
        parsed = ir_measures.parse_trec_measure(name)
        if len(parsed) == 1:
            return str(parsed[0])
    except Exception:  # noqa: BLE001 - not a trec_eval name either
        pass
    raise MetricError(f"unknown metric {name!r}: {problem}.{_suggestion(name)} Use ir-measures names, e.g. "
                      f"{METRIC_EXAMPLES}")


def _suggestion(name: str) -> str:
    """`` Did you mean 'nDCG@10'?`` for a measure name spelled in the wrong case (``ndcg@10``), else ``""``."""
    import ir_measures

    head = name.split("@")[0].split("(")[0]
    by_lower = {known.lower(): known for known in ir_measures.measures.registry}
    fixed = by_lower.get(head.lower())
    if not fixed or fixed == head:
        return ""
    candidate = fixed + name[len(head):]
    try:
        return f" Did you mean {canonical_measure(candidate)!r}?"
    except MetricError:
        return ""


def canonical_measures(metrics, argument: str = "metrics") -> list[str]:
    """Canonical names of a list of metrics, in order, each once (``[MRR@10, RR@10]`` -> ``[RR@10]``).

    Raises:
        TypeError: ``metrics`` is a single str or not a list of names (``argument`` names it).
        MetricError: an unknown metric.
    """
    if isinstance(metrics, (str, bytes)) or not isinstance(metrics, Iterable):
        raise TypeError(f"{argument}: expected a list of ir-measures names such as ['nDCG@10', 'AP'], got "
                        f"{type(metrics).__name__} {metrics!r}")
    out: list[str] = []
    for m in metrics:
        name = canonical_measure(m)
        if name not in out:
            out.append(name)
    if not out:
        raise MetricError(f"{argument}: no metric given; name at least one, e.g. {METRIC_EXAMPLES}")
    return out


def _parse(metrics: Iterable[str | object]):
    """ir-measures measure objects for ``metrics`` (canonical, each once)."""
    import ir_measures

    return [ir_measures.parse_measure(name) for name in canonical_measures(metrics)]


def _check_bool(value, argument: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{argument}: expected True or False, got {type(value).__name__} {value!r}")


def _is_dataframe(obj) -> bool:
    return type(obj).__name__ == "DataFrame" and hasattr(obj, "columns")


def _as_qrels(qrels) -> dict[str, dict[str, int]]:
    """``{qid: {docid: relevance}}`` from a path, a mapping, Qrel records/tuples or a pandas DataFrame."""
    from radcot.data.readers import read_qrels

    if isinstance(qrels, (str, os.PathLike)):
        qrels = read_qrels(qrels)
    if isinstance(qrels, Mapping):
        return {str(q): _judgements(q, docs) for q, docs in qrels.items()}
    if _is_dataframe(qrels):
        from ir_measures.util import QrelsConverter

        return _as_qrels(QrelsConverter(qrels).as_dict_of_dict())
    if not isinstance(qrels, Iterable) or isinstance(qrels, bytes):
        raise TypeError(f"qrels: expected a path, {{qid: {{docid: relevance}}}}, Qrel records or a DataFrame "
                        f"(query_id, doc_id, relevance), got {type(qrels).__name__}")
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for i, item in enumerate(qrels):
        q = _record(Qrel, item, f"qrels[{i}]")
        out[str(q.query_id)][str(q.doc_id)] = _number(q.relevance, f"qrels[{i}].relevance", int)
    return dict(out)


def _judgements(qid, docs) -> dict[str, int]:
    if not isinstance(docs, Mapping):
        raise TypeError(f"qrels[{qid!r}]: expected {{docid: relevance}}, got {type(docs).__name__} {docs!r}")
    return {str(d): _number(r, f"qrels[{qid!r}][{d!r}]", int) for d, r in docs.items()}


def _record(cls, item, where: str):
    if isinstance(item, cls):
        return item
    if isinstance(item, (str, bytes)) or not isinstance(item, Sequence) or len(item) != len(cls._fields):
        raise TypeError(f"{where}: expected a {cls.__name__} or a tuple {cls._fields}, got {item!r}")
    return cls(*item)


def _number(value, where: str, kind: type = float):
    """``value`` as ``kind``; a bool, non-number or non-finite value raises naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise TypeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RadcotError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        raise RadcotError(f"{where}: expected {'an integer' if kind is int else 'a finite number'}, got {value!r}")
    return kind(number)


def _as_run(run) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` from a path, a mapping (of scores or of ScoredDoc lists), ScoredDoc
    records/tuples or a pandas DataFrame."""
    from radcot.data.readers import read_run

    if isinstance(run, (str, os.PathLike)):
        return read_run(run)
    if isinstance(run, Mapping):
        first = next(iter(run.values()), None)
        if isinstance(first, list):  # {qid: [ScoredDoc, ...]} as returned by batch_search
            return _as_run([s for docs in run.values() for s in docs])
        return {str(q): _scores(q, docs) for q, docs in run.items()}
    if _is_dataframe(run):
        from ir_measures.util import RunConverter

        return _as_run(RunConverter(run).as_dict_of_dict())
    if not isinstance(run, Iterable) or isinstance(run, bytes):
        raise TypeError(f"run: expected a path, {{qid: {{docid: score}}}}, ScoredDoc records or a DataFrame "
                        f"(query_id, doc_id, score), got {type(run).__name__}")
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for i, item in enumerate(run):
        s = _record(ScoredDoc, item, f"run[{i}]")
        out[str(s.query_id)][str(s.doc_id)] = _number(s.score, f"run[{i}].score")
    return dict(out)


def _scores(qid, docs) -> dict[str, float]:
    if not isinstance(docs, Mapping):
        raise TypeError(f"run[{qid!r}]: expected {{docid: score}} or a list of ScoredDoc, got "
                        f"{type(docs).__name__} {docs!r}")
    return {str(d): _number(s, f"run[{qid!r}][{d!r}]") for d, s in docs.items()}


def evaluate(qrels, run, metrics: Sequence[str] = DEFAULT_METRICS, per_query: bool = False,
             judged_only: bool = True):
    """Score a run with ir-measures.

    Args:
        qrels: a path (TREC or BEIR qrels, or a BEIR directory), ``{qid: {docid: rel}}`` or :class:`Qrel` records.
        run: a path (TREC run), ``{qid: {docid: score}}``, ``{qid: [ScoredDoc]}`` or ScoredDoc records.
        metrics: ir-measures names (``nDCG@10``, ``RR@10``, ``R@1000``, ``AP``, ``AP(rel=2)``, ...); aliases
            (``MRR@10``, ``NDCG@10``) and trec_eval names are accepted, results are keyed canonically.
        per_query: also return ``{metric: {qid: value}}``.
        judged_only: ``True`` (the TREC convention): the mean is over the judged queries; queries of the run
            without judgements are ignored. ``False``: the mean is over every query of the run and every
            judged query; run queries without judgements score 0 (a system answering queries nobody judged
            is not credited for them). In both modes a judged query absent from the run scores 0 and is
            reported (a warning; :func:`missing_from_run` lists them).

    Returns:
        ``{metric: value}``, or ``(aggregate, per_query)`` when ``per_query``; keyed by the canonical
        ir-measures name (:func:`canonical_measure`: ``MRR@10`` -> ``RR@10``).

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        RadcotError: empty qrels, an unknown metric (:class:`MetricError`), a bad relevance or score, or a run
            none of whose queries is judged (wrong qrels).

    Example:
        >>> evaluate({"q1": {"d1": 1}}, {"q1": {"d1": 1.0}, "q9": {"d1": 1.0}}, ["AP"], judged_only=False)
        {'AP': 0.5}
    """
    measures = _parse(metrics)
    _check_bool(per_query, "per_query")
    _check_bool(judged_only, "judged_only")
    qrels_d, run_d = _as_qrels(qrels), _as_run(run)
    _check_overlap(qrels_d, run_d, run)
    names, pq = _per_query(qrels_d, run_d, measures)
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

    Args:
        per_query_a, per_query_b: ``{qid: value}`` of one metric (``evaluate(..., per_query=True)[1][metric]``).
        metric: the metric's name, carried into the result.

    Raises:
        TypeError: an argument that is not a mapping of numbers (the message names it and the query).
        RadcotError: fewer than 2 common queries, or a value that is not finite.

    Example:
        >>> t = paired_ttest({"1": 0.1, "2": 0.5, "3": 0.3}, {"1": 0.2, "2": 0.7, "3": 0.3}, "AP")
        >>> round(t.delta, 4), t.n
        (0.1, 3)
    """
    from scipy import stats

    a_d = _values(per_query_a, "per_query_a")
    b_d = _values(per_query_b, "per_query_b")
    if not isinstance(metric, str):
        raise TypeError(f"metric: expected the metric's name (a str), got {type(metric).__name__} {metric!r}")
    qids = sorted(set(a_d) & set(b_d))
    if len(qids) < 2:
        raise RadcotError(f"paired t-test needs >= 2 common queries, got {len(qids)}")
    a = [a_d[q] for q in qids]
    b = [b_d[q] for q in qids]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    diffs = [y - x for x, y in zip(a, b)]
    if all(abs(d - diffs[0]) < 1e-15 for d in diffs):
        t, p = (0.0, 1.0) if abs(diffs[0]) < 1e-15 else (math.copysign(math.inf, diffs[0]), 0.0)
    else:
        res = stats.ttest_rel(b, a)
        t, p = float(res.statistic), float(res.pvalue)
    return TTestResult(metric, mean_a, mean_b, mean_b - mean_a, t, p, len(qids))


def _values(per_query, argument: str) -> dict[str, float]:
    if not isinstance(per_query, Mapping):
        raise TypeError(f"{argument}: expected {{qid: value}} (one metric's per-query values), got "
                        f"{type(per_query).__name__}")
    return {str(q): _number(v, f"{argument}[{q!r}]") for q, v in per_query.items()}


def compare_runs(qrels, run_a, run_b, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, TTestResult]:
    """Evaluate two runs and paired-t-test each metric (b against a)."""
    _, pq_a = evaluate(qrels, run_a, metrics, per_query=True)
    _, pq_b = evaluate(qrels, run_b, metrics, per_query=True)
    return {m: paired_ttest(pq_a[m], pq_b[m], m) for m in pq_a}
