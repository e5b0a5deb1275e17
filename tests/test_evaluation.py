"""evaluate() against independent computations; RR@10 honours its cutoff; paired t-test."""
from __future__ import annotations

import json
import math

import pytest

from radcot.evaluation import compare_runs, evaluate, paired_ttest
from radcot.records import RadcotError

QRELS = {"q1": {"d1": 1, "d5": 2}, "q2": {"d9": 1}, "q3": {"d1": 1}}


def _ranked(*docs):
    return {d: float(len(docs) - i) for i, d in enumerate(docs)}


@pytest.mark.fast
def test_rr_at_10_cuts_off():
    # q1: first relevant at rank 11 -> RR@10 = 0 (uncut RR would be 1/11)
    run = {"q1": _ranked(*[f"x{i}" for i in range(10)], "d1"), "q2": _ranked("d9"), "q3": _ranked("a", "d1")}
    agg = evaluate(QRELS, run, ["RR@10"])
    assert agg["RR@10"] == pytest.approx((0 + 1 + 0.5) / 3)


@pytest.mark.fast
def test_ndcg_hand_computed():
    run = {"q1": _ranked("d5", "x", "d1")}
    qrels = {"q1": {"d1": 1, "d5": 2}}
    # trec_eval's nDCG: linear gain (rel), log2(rank + 1) discount
    dcg = 2 / math.log2(2) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert evaluate(qrels, run, ["nDCG@10"])["nDCG@10"] == pytest.approx(dcg / idcg)


@pytest.mark.fast
def test_judged_queries_missing_from_run_count_zero():
    run = {"q2": _ranked("d9")}
    agg, pq = evaluate(QRELS, run, ["RR@10"], per_query=True)
    assert agg["RR@10"] == pytest.approx(1 / 3)
    assert pq["RR@10"] == {"q1": 0.0, "q2": 1.0, "q3": 0.0}


@pytest.mark.fast
def test_unjudged_run_queries_ignored():
    run = {"q2": _ranked("d9"), "zzz": _ranked("d1")}
    assert evaluate({"q2": {"d9": 1}}, run, ["AP"])["AP"] == 1.0


@pytest.mark.fast
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


@pytest.mark.fast
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


# ------------------------------------------------------------------------- judged_only (issue 13)

@pytest.mark.fast
def test_judged_only_false_averages_over_run_queries_too():
    # q1 judged and perfect (AP 1), q2 judged but absent (0), zzz retrieved but never judged
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    run = {"q1": _ranked("d1"), "zzz": _ranked("d1")}
    assert evaluate(qrels, run, ["AP"], judged_only=True)["AP"] == pytest.approx(1 / 2)
    agg, pq = evaluate(qrels, run, ["AP"], per_query=True, judged_only=False)
    assert agg["AP"] == pytest.approx(1 / 3)
    assert pq["AP"] == {"q1": 1.0, "q2": 0.0, "zzz": 0.0}


@pytest.mark.fast
def test_judged_queries_absent_from_the_run_are_reported(caplog):
    from radcot.evaluation import missing_from_run

    qrels = {f"q{i:02d}": {"d1": 1} for i in range(12)}
    run = {"q00": _ranked("d1"), "q01": {}}  # an empty ranking counts as absent
    assert missing_from_run(qrels, run) == [f"q{i:02d}" for i in range(1, 12)]
    with caplog.at_level("WARNING"):
        evaluate(qrels, run, ["AP"])
    assert "11 of 12 judged queries are absent" in caplog.text and "q01, q02" in caplog.text
    assert "q11" not in caplog.text and caplog.text.rstrip().endswith("...")  # ten ids at most


@pytest.mark.fast
def test_a_run_sharing_no_query_with_the_qrels_is_an_error():
    with pytest.raises(RadcotError, match="none of the 1 queries of the run is judged"):
        evaluate({"1": {"d1": 1}}, {"301": _ranked("d1")}, ["AP"])


# ------------------------------------------------------------- graded metrics (rel=2), by hand

GRADED_QRELS = {"q1": {"d1": 2, "d2": 1, "d3": 2, "d4": 0, "d5": 2}, "q2": {"d7": 1}}
GRADED_RUN = {"q1": _ranked("d2", "d1", "d4", "d3", "x"), "q2": _ranked("d7")}


@pytest.mark.fast
def test_graded_metrics_at_rel_2_by_hand_and_by_pytrec_eval():
    import pytrec_eval

    # q1, rel >= 2: relevant {d1, d3, d5}; retrieved at ranks 2 (d1) and 4 (d3), d5 never.
    #   AP = (1/2 + 2/4) / 3 = 1/3;  R@1000 = 2/3;  R@3 = 1/3 (d1 only)
    # q2: no document with rel >= 2 -> AP = R = 0 (still averaged: it is judged)
    # binary AP (rel >= 1), q1: relevant {d1, d2, d3, d5} at ranks 2, 1, 4 -> (1 + 1 + 3/4) / 4 = 11/16; q2: 1
    by_hand = {"AP(rel=2)": (1 / 3 + 0) / 2, "R(rel=2)@1000": (2 / 3 + 0) / 2, "R(rel=2)@3": (1 / 3 + 0) / 2,
               "AP": (11 / 16 + 1) / 2}
    ours = evaluate(GRADED_QRELS, GRADED_RUN, list(by_hand))
    assert ours == pytest.approx(by_hand)
    # independently: pytrec_eval (trec_eval's code) with relevance level 2
    ev = pytrec_eval.RelevanceEvaluator(GRADED_QRELS, {"map", "recall.1000", "recall.3"}, relevance_level=2)
    res = ev.evaluate(GRADED_RUN)
    assert (res["q1"]["map"] + res["q2"]["map"]) / 2 == pytest.approx(by_hand["AP(rel=2)"])
    assert (res["q1"]["recall_1000"] + res["q2"]["recall_1000"]) / 2 == pytest.approx(by_hand["R(rel=2)@1000"])
    assert (res["q1"]["recall_3"] + res["q2"]["recall_3"]) / 2 == pytest.approx(by_hand["R(rel=2)@3"])


# ------------------------------------------------------------------------------ radcot evaluate CLI

@pytest.mark.fast
def test_cli_reports_missing_judged_queries(tmp_path, capsys, caplog):
    from radcot.cli import main
    from radcot.data.readers import write_run

    (tmp_path / "qrels.txt").write_text("".join(f"q{i} 0 d1 1\n" for i in range(1, 14)))
    write_run({"q1": _ranked("d1"), "q2": _ranked("x", "d1")}, tmp_path / "r.trec")
    with caplog.at_level("WARNING"):
        assert main(["evaluate", "--qrels", str(tmp_path / "qrels.txt"), "--run", str(tmp_path / "r.trec"),
                     "--metrics", "RR@10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["RR@10"] == pytest.approx((1 + 0.5) / 13)
    assert out["missing_from_run"] == {"count": 11, "query_ids": sorted(f"q{i}" for i in range(3, 14))[:10]}
    assert "11 of 13 judged queries are absent" in caplog.text


@pytest.mark.fast
def test_cli_unknown_metric_fails_before_reading(tmp_path, capsys):
    from radcot.cli import main

    with pytest.raises(SystemExit) as e:  # a usage error: argparse's exit 2, before any file is read
        main(["evaluate", "--qrels", str(tmp_path / "none"), "--run", "x", "--metrics", "nDCG@ten"])
    assert e.value.code == 2
    assert "unknown metric 'nDCG@ten'" in capsys.readouterr().err


# --------------------------------------------------------------- canonical metric names (issue 22)

@pytest.mark.fast
def test_canonical_measure_aliases_and_trec_names():
    import ir_measures

    from radcot.evaluation import canonical_measure, canonical_measures

    assert canonical_measure("MRR@10") == "RR@10" and canonical_measure("NDCG@10") == "nDCG@10"
    assert canonical_measure("Recall@1000") == "R@1000" and canonical_measure("MAP") == "AP"
    assert canonical_measure("Recall(rel=2)@1000") == "R(rel=2)@1000"
    assert canonical_measure("ndcg_cut_10") == "nDCG@10" and canonical_measure("recip_rank") == "RR"
    assert canonical_measure(ir_measures.nDCG @ 10) == "nDCG@10"
    assert canonical_measures(["MRR@10", "RR@10", "nDCG@10"]) == ["RR@10", "nDCG@10"]


@pytest.mark.fast
def test_unknown_metric_suggests_a_spelling():
    from radcot.evaluation import MetricError, canonical_measure, canonical_measures

    with pytest.raises(MetricError, match=r"unknown metric 'ndcg@10'.*Did you mean 'nDCG@10'\?"):
        canonical_measure("ndcg@10")
    with pytest.raises(MetricError, match="unknown metric 'nDCG@ten'") as e:
        canonical_measure("nDCG@ten")
    assert "Did you mean" not in str(e.value)
    with pytest.raises(TypeError, match="a metric must be an ir-measures name"):
        canonical_measure(10)
    with pytest.raises(MetricError, match="no metric given"):
        canonical_measures([])


@pytest.mark.fast
def test_evaluate_keys_results_canonically():
    run = {"q1": _ranked("x", "d1"), "q2": _ranked("d9"), "q3": _ranked("d1")}
    agg, pq = evaluate(QRELS, run, ["MRR@10", "NDCG@10", "RR@10"], per_query=True)
    assert list(agg) == ["RR@10", "nDCG@10"] and agg["RR@10"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert set(pq) == {"RR@10", "nDCG@10"}
    assert compare_runs(QRELS, run, run, ["MRR@10"])["RR@10"].p_value == 1.0


# --------------------------------------------------------------------- API types at the boundary

@pytest.mark.fast
def test_evaluate_argument_types_are_named():
    run = {"q1": _ranked("d1")}
    with pytest.raises(TypeError, match=r"metrics: expected a list of ir-measures names .* got str 'AP'"):
        evaluate(QRELS, run, "AP")  # the old code read it letter by letter ('unknown metric A')
    with pytest.raises(TypeError, match="qrels: expected a path, .* got NoneType"):
        evaluate(None, run, ["AP"])
    with pytest.raises(TypeError, match=r"qrels\['q1'\]: expected \{docid: relevance\}, got int"):
        evaluate({"q1": 1}, run, ["AP"])
    with pytest.raises(RadcotError, match=r"qrels\['q1'\]\['d1'\]: expected an integer, got 1.5"):
        evaluate({"q1": {"d1": 1.5}}, run, ["AP"])
    with pytest.raises(TypeError, match="run: expected a path, .* got int"):
        evaluate(QRELS, 7, ["AP"])
    with pytest.raises(RadcotError, match=r"run\['q1'\]\['d1'\]: expected a number, got 'high'"):
        evaluate(QRELS, {"q1": {"d1": "high"}}, ["AP"])
    with pytest.raises(RadcotError, match=r"run\['q1'\]\['d1'\]: expected a finite number, got nan"):
        evaluate(QRELS, {"q1": {"d1": float("nan")}}, ["AP"])
    with pytest.raises(TypeError, match=r"run\[0\]: expected a ScoredDoc or a tuple"):
        evaluate(QRELS, ["q1 d1 1.0"], ["AP"])
    with pytest.raises(TypeError, match="per_query: expected True or False, got str 'yes'"):
        evaluate(QRELS, run, ["AP"], per_query="yes")
    with pytest.raises(TypeError, match="judged_only: expected True or False"):
        evaluate(QRELS, run, ["AP"], judged_only=None)


@pytest.mark.fast
def test_evaluate_accepts_records_tuples_and_dataframes():
    pd = pytest.importorskip("pandas")
    from radcot.records import Qrel, ScoredDoc

    run = {"q1": _ranked("x", "d1"), "q2": _ranked("d9")}
    expect = evaluate(QRELS, run, ["AP"])
    qrels_rows = [(q, d, r) for q, docs in QRELS.items() for d, r in docs.items()]
    run_rows = [(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    assert evaluate([Qrel(*r) for r in qrels_rows], [ScoredDoc(*r) for r in run_rows], ["AP"]) == expect
    assert evaluate(qrels_rows, run_rows, ["AP"]) == expect
    qrels_df = pd.DataFrame(qrels_rows, columns=["query_id", "doc_id", "relevance"])
    run_df = pd.DataFrame(run_rows, columns=["query_id", "doc_id", "score"])
    assert evaluate(qrels_df, run_df, ["AP"]) == expect


@pytest.mark.fast
def test_paired_ttest_argument_types_are_named():
    a = {"1": 0.1, "2": 0.5, "3": 0.3}
    with pytest.raises(TypeError, match=r"per_query_a: expected \{qid: value\}.*got list"):
        paired_ttest([0.1, 0.5, 0.3], a)
    with pytest.raises(TypeError, match=r"per_query_b\['2'\]: expected a number, got NoneType None"):
        paired_ttest(a, {"1": 0.1, "2": None, "3": 0.2})
    with pytest.raises(RadcotError, match=r"per_query_a\['1'\]: expected a finite number, got nan"):
        paired_ttest({**a, "1": float("nan")}, a)
    with pytest.raises(TypeError, match="metric: expected the metric's name"):
        paired_ttest(a, a, metric=None)
