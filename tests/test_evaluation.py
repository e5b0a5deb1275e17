"""evaluate() against independent computations; RR@10 honours its cutoff; paired t-test."""
from __future__ import annotations

import math

import pytest

from radcot.evaluation import compare_runs, evaluate, paired_ttest
from radcot.records import RadcotError

QRELS = {"q1": {"d1": 1, "d5": 2}, "q2": {"d9": 1}, "q3": {"d1": 1}}


def _ranked(*docs):
    return {d: float(len(docs) - i) for i, d in enumerate(docs)}


def test_rr_at_10_cuts_off():
    # q1: first relevant at rank 11 -> RR@10 = 0 (uncut RR would be 1/11)
    run = {"q1": _ranked(*[f"x{i}" for i in range(10)], "d1"), "q2": _ranked("d9"), "q3": _ranked("a", "d1")}
    agg = evaluate(QRELS, run, ["RR@10"])
    assert agg["RR@10"] == pytest.approx((0 + 1 + 0.5) / 3)


def test_ndcg_hand_computed():
    run = {"q1": _ranked("d5", "x", "d1")}
    qrels = {"q1": {"d1": 1, "d5": 2}}
    # trec_eval's nDCG: linear gain (rel), log2(rank + 1) discount
    dcg = 2 / math.log2(2) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert evaluate(qrels, run, ["nDCG@10"])["nDCG@10"] == pytest.approx(dcg / idcg)


def test_judged_queries_missing_from_run_count_zero():
    run = {"q2": _ranked("d9")}
    agg, pq = evaluate(QRELS, run, ["RR@10"], per_query=True)
    assert agg["RR@10"] == pytest.approx(1 / 3)
    assert pq["RR@10"] == {"q1": 0.0, "q2": 1.0, "q3": 0.0}


def test_unjudged_run_queries_ignored():
    run = {"q2": _ranked("d9"), "zzz": _ranked("d1")}
    assert evaluate({"q2": {"d9": 1}}, run, ["AP"])["AP"] == 1.0


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(RadcotError, match="unknown metric"):
        evaluate(QRELS, {"q1": {"d1": 1.0}}, ["nDCG@ten"])


def test_paired_ttest_matches_scipy():
    from scipy import stats

    a = {"1": 0.1, "2": 0.5, "3": 0.3, "4": 0.9}
    b = {"1": 0.2, "2": 0.6, "3": 0.2, "4": 1.0}
    res = paired_ttest(a, b)
    ref = stats.ttest_rel([0.2, 0.6, 0.2, 1.0], [0.1, 0.5, 0.3, 0.9])
    assert res.p_value == pytest.approx(ref.pvalue) and res.delta == pytest.approx(0.05)
    assert paired_ttest(a, a).p_value == 1.0


def test_vaswani_run_file_evaluation_matches_ir_measures(vaswani, tmp_path):
    import ir_measures

    from radcot.data.readers import read_qrels, write_run

    qrels = read_qrels(vaswani)
    # a deterministic pseudo-run over the judged docs, some relevant docs dropped
    run = {}
    for i, q in enumerate(qrels):
        run.setdefault(q.query_id, {})
        if i % 3:
            run[q.query_id][q.doc_id] = float((i * 7919) % 101)
    write_run(run, tmp_path / "r.trec")
    ours = evaluate(vaswani, tmp_path / "r.trec", ["nDCG@10", "AP"])
    # independent: ir-measures straight on the files' contents, mean over all judged queries
    per_q = {m: {} for m in ("nDCG@10", "AP")}
    for m in ir_measures.iter_calc([ir_measures.nDCG @ 10, ir_measures.AP], _qd(qrels),
                                   list(ir_measures.read_trec_run(str(tmp_path / "r.trec")))):
        per_q[str(m.measure)][m.query_id] = m.value
    n = len(_qd(qrels))
    assert ours["nDCG@10"] == pytest.approx(sum(per_q["nDCG@10"].values()) / n)
    assert ours["AP"] == pytest.approx(sum(per_q["AP"].values()) / n)
    cmp = compare_runs(vaswani, run, run, ["AP"])
    assert cmp["AP"].p_value == 1.0


def _qd(qrels):
    out = {}
    for q in qrels:
        out.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    return out
