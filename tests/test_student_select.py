"""Checkpoint selection by retrieval quality (issue 12): expand dev queries with the checkpoint's CoTs, search
BM25, score with ir-measures, keep the best; config validation."""
from __future__ import annotations

import json

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)

torch = pytest.importorskip("torch")


def test_select_by_retrieval_needs_index_and_qrels():
    from radcot.student.train import TrainConfig

    with pytest.raises(ValueError, match="select_index and select_qrels"):
        TrainConfig(data="d", model="m", out="o", select_by="retrieval")
    with pytest.raises(ValueError, match="select_by must be"):
        TrainConfig(data="d", model="m", out="o", select_by="bleu")
    with pytest.raises(ValueError, match="not an ir-measures name"):
        TrainConfig(data="d", model="m", out="o", select_by="retrieval", select_index="i", select_qrels="q",
                    select_metric="nDCG@ten")
    assert TrainConfig(data="d", model="m", out="o", select_by="loss").selection_metric == "dev_loss"


def test_training_selects_best_by_ndcg_on_dev_queries(cranfield, cranfield_distill, tiny_t5, cranfield_bm25_index,
                                                      tmp_path):
    """The dev split holds Cranfield queries (the fixture's training queries; their qrels are Cranfield's judgements).
    Each evaluation logs nDCG@10 of BM25 over the expanded dev queries; best/ is the argmax; one logged value is
    recomputed independently from the saved dev generations."""
    from radcot.evaluation import evaluate
    from radcot.expansion import expand_text
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.train import TrainConfig, read_metrics, train

    qrels_file = cranfield / "qrels" / "test.tsv"
    cfg = TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path / "run"), max_steps=4,
                      batch_size=4, lr=2e-3, text_maxlength=48, target_maxlength=32, eval_every=2,
                      eval_max_new_tokens=12, eval_max_examples=12, save_every=4, log_every=1,
                      select_by="retrieval", select_index=str(cranfield_bm25_index), select_qrels=str(qrels_file))
    run = train(cfg, show_progress=False)
    evals = read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["nDCG@10"] <= 1.0 and r["n_select"] > 0 for r in evals)
    best = json.loads((run / "best" / "fid_config.json").read_text())["best"]
    top = max(evals, key=lambda r: r["nDCG@10"])
    assert best["metric"] == "nDCG@10" and best["step"] == top["step"] and best["value"] == top["nDCG@10"]
    # recompute step 4's value from its generations
    gens = [json.loads(line) for line in (run / "eval" / "step-4.jsonl").read_text().splitlines()]
    from radcot.data.readers import read_qrels

    ids = {g["query_id"] for g in gens}
    qrels = {}
    for q in read_qrels(qrels_file):
        if q.query_id in ids:
            qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    queries = {g["query_id"]: expand_text(g["query"], g["prediction"], "radcot") for g in gens if g["query_id"] in qrels}
    hits = BM25Retriever(cranfield_bm25_index).batch_search(queries, k=100)
    again = evaluate(qrels, hits, ["nDCG@10"])["nDCG@10"]
    assert again == pytest.approx(evals[-1]["nDCG@10"], abs=1e-9)
