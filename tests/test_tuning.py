"""Expansion settings chosen on the demo world's training queries (real kb teacher CoTs, real BM25)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from radcot.tuning import TuningError, check_grid, score_setting, truncate_words, tune_expansion

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


@pytest.mark.fast
def test_grid_validation_names_the_key():
    assert check_grid(None)["metric"] == "nDCG@10"
    with pytest.raises(TuningError, match=r"rows\[3\].tune.formula: \['rm3'\]"):
        check_grid({"formula": ["rm3"]}, "rows[3].tune")
    with pytest.raises(TuningError, match="max_words: \\[0\\]"):
        check_grid({"max_words": [0]})
    with pytest.raises(TuningError, match="unknown keys \\['lr'\\]"):
        check_grid({"lr": [1]})
    assert truncate_words(" a  b c ", None) == "a b c" and truncate_words("a b c", 1) == "a"


@pytest.mark.fast
def test_grid_metric_is_canonical():
    """``metric: MRR@10`` (valid for the pipeline schema) is RR@10, the key evaluate() returns."""
    assert check_grid({"metric": "MRR@10"})["metric"] == "RR@10"
    assert check_grid({"metric": "NDCG@10"})["metric"] == "nDCG@10"
    with pytest.raises(TuningError, match=r"rows\[2\].tune.metric: unknown metric 'ndcg@10'.*Did you mean 'nDCG@10'"):
        check_grid({"metric": "ndcg@10"}, "rows[2].tune")
    with pytest.raises(TuningError, match=r"tune.metric: expected one ir-measures name"):
        check_grid({"metric": ["nDCG@10"]})
    with pytest.raises(TuningError, match=r"tune.k: run depth must be a positive integer, got True"):
        check_grid({"k": True})


@pytest.mark.java
def test_tuning_by_a_metric_alias_on_real_bm25(cranfield, cranfield_bm25_index):
    """score_setting and tune_expansion with MRR@10 give RR@10's numbers (the old code raised KeyError)."""
    from radcot.data.readers import read_queries
    from radcot.retrieval.bm25 import BM25Retriever

    queries = list(read_queries(cranfield))[:20]
    cots = {q.query_id: "boundary layer flow over a flat plate in supersonic conditions" for q in queries}
    bm25 = BM25Retriever(cranfield_bm25_index)
    qrels = str(cranfield / "qrels" / "test.tsv")
    canonical = score_setting(queries, cots, qrels, bm25, "radcot", 4, "RR@10", 50)
    assert score_setting(queries, cots, qrels, bm25, "radcot", 4, "MRR@10", 50) == canonical
    result = tune_expansion(queries, cots, qrels, bm25, {"formula": ["radcot"], "max_words": [4], "metric": "MRR@10",
                                                         "k": 50})
    assert result.metric == "RR@10" and result.score == canonical and result.grid[0]["RR@10"] == canonical


@pytest.mark.java
@pytest.mark.slow
def test_pipeline_tunes_teacher_row_on_training_queries(tmp_path):
    """A demo pipeline row with tune: picks the grid point with the best training nDCG@10, records it in the
    manifest, and its search uses it; the choice is the argmax of independently re-scored grid points."""
    from radcot.data.readers import read_queries
    from radcot.pipeline import Pipeline

    cfg = {"experiment": "tune", "dataset": {"path": str(DEMO)}, "retriever": {"threads": 1},
           "teacher": {"backend": "kb", "args": {"world": str(DEMO)}, "concurrency": 1},
           "training_queries": {"mode": "split", "limit": 150},
           "rows": [{"name": "bm25"}, {"name": "teacher-cot", "cots": "teacher",
                                        "tune": {"formula": ["radcot", "query2doc"], "max_words": [4, None], "k": 50}}]}
    p = Pipeline(cfg, runs_dir=tmp_path)
    exp = p.run()
    manifest = json.loads((exp / "manifest.json").read_text())
    choice = manifest["stages"]["tune-teacher-cot"]["choice"]
    assert choice["n_queries"] == 150 and len(choice["grid"]) == 4
    assert all(not q.query_id.startswith("test") for q in p._folds()[0][0])  # tuned on training queries only
    best = max(choice["grid"], key=lambda g: g["nDCG@10"])
    assert (choice["formula"], choice["max_words"]) == (best["formula"], best["max_words"])
    # re-score one grid point outside the pipeline
    from radcot.teacher.runner import read_teacher_output

    train_q, _, teacher_out = p._folds()[0]
    cots = {q: r["text"] for q, r in read_teacher_output(teacher_out.dir / "cot.jsonl").items()}
    again = score_setting(train_q, cots, str(DEMO / "qrels" / "train.tsv"), p.retriever(), "radcot", 4, "nDCG@10", 50)
    point = next(g for g in choice["grid"] if g["formula"] == "radcot" and g["max_words"] == 4)
    assert again == pytest.approx(point["nDCG@10"], abs=1e-9)
    # the whole CoT carries the answer; 4 words rarely do: the tuner must see that
    assert best["max_words"] is None
    search = manifest["stages"]["search-teacher-cot"]  # keyed by the tune stage's content (its choice.json)
    assert search["upstream"]["tuned"] == [manifest["stages"]["tune-teacher-cot"]["digest"]]
    expanded = (Path(manifest["stages"]["search-teacher-cot"]["dir"]) / "expanded.tsv").read_text()
    assert "Answer:" in expanded  # whole CoTs (max_words None) went into the queries
    with pytest.raises(TuningError, match="none of 1 has both"):
        tune_expansion(list(read_queries(DEMO / "queries.test.tsv"))[:1], {}, {"x": {"d": 1}}, p.retriever())


@pytest.mark.java
@pytest.mark.slow
def test_kfold_tuning_is_cross_validated(tmp_path):
    """kfold: each fold's setting is chosen on the other folds' queries and applied to its own."""
    from radcot.pipeline import Pipeline

    cfg = {"experiment": "tunek", "dataset": {"path": str(DEMO), "limit_queries": 45}, "retriever": {"threads": 1},
           "teacher": {"backend": "kb", "args": {"world": str(DEMO)}, "concurrency": 1},
           "training_queries": {"mode": "kfold", "folds": 3},
           "rows": [{"name": "bm25"}, {"name": "teacher-cot", "cots": "teacher",
                                        "tune": {"formula": ["radcot"], "max_words": [3, None], "k": 20}}]}
    p = Pipeline(cfg, runs_dir=tmp_path)
    exp = p.run()
    stages = json.loads((exp / "manifest.json").read_text())["stages"]
    choices = [stages[n]["choice"] for n in ("tune-teacher-cot", "tune-teacher-cot-f1", "tune-teacher-cot-f2")]
    assert [c["n_queries"] for c in choices] == [30, 30, 30]
    tuned = p._tune_row(p.rows[1])
    for (ids, _), (train_q, eval_q, _) in zip(tuned, p._folds()):
        assert ids == {q.query_id for q in eval_q} and not ids & {q.query_id for q in train_q}
