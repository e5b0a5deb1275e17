"""Checkpoint selection by retrieval quality (issue 12): expand dev queries with the checkpoint's CoTs, search
BM25, score with ir-measures, keep the best; config validation; the scorer is injected into the trainer (which
imports no retrieval, expansion or evaluation code); metrics are keyed by ir-measures' canonical names."""
from __future__ import annotations

import json

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)

torch = pytest.importorskip("torch")


@pytest.mark.fast
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

    from radcot.selection import retrieval_scorer

    qrels_file = cranfield / "qrels" / "test.tsv"
    cfg = TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path / "run"), max_steps=4,
                      batch_size=4, lr=2e-3, text_maxlength=48, target_maxlength=32, eval_every=2,
                      eval_max_new_tokens=12, eval_max_examples=12, save_every=4, log_every=1,
                      select_by="retrieval", select_index=str(cranfield_bm25_index), select_qrels=str(qrels_file),
                      select_metric="NDCG@10")  # an alias: the canonical nDCG@10 keys everything
    run = train(cfg, show_progress=False, scorer=retrieval_scorer(cfg))
    evals = read_metrics(run, "eval")
    assert [r["step"] for r in evals] == [2, 4]
    assert all(0.0 <= r["nDCG@10"] <= 1.0 and "NDCG@10" not in r for r in evals)
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


@pytest.mark.fast
def test_select_metric_is_keyed_by_its_canonical_name():
    """ir-measures parses NDCG@10 to nDCG@10 and MRR@10 to RR@10: the config keeps the canonical name, which keys
    the metrics rows and best/ (the user's spelling used to be looked up in results keyed canonically: KeyError)."""
    from radcot.student.train import TrainConfig

    base = dict(data="d", model="m", out="o", select_by="retrieval", select_index="i", select_qrels="q")
    for spelled, canonical in (("NDCG@10", "nDCG@10"), ("nDCG@10", "nDCG@10"), ("MRR@10", "RR@10")):
        cfg = TrainConfig(**base, select_metric=spelled)
        assert cfg.select_metric == canonical and cfg.selection_metric == canonical


@pytest.mark.fast
def test_select_by_retrieval_without_a_scorer_is_an_error(tmp_path):
    """The trainer does not build a retriever itself: select_by=retrieval needs an injected scorer, said before
    anything is read or written."""
    from radcot.student.train import TrainConfig, TrainingError, train

    cfg = TrainConfig(data=str(tmp_path / "data"), model="m", out=str(tmp_path / "run"), select_by="retrieval",
                      select_index="i", select_qrels="q")
    with pytest.raises(TrainingError, match="needs a scorer.*retrieval_scorer"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.fast
def test_the_trainer_imports_no_retrieval_expansion_or_evaluation_code():
    """Layering (records -> data -> retrieval -> student -> expansion ...): the student trainer gets its checkpoint
    scorer injected (radcot.selection builds it) instead of opening BM25 and running evaluation itself."""
    import ast
    from pathlib import Path

    import radcot.student.launch
    import radcot.student.train

    for module in (radcot.student.train, radcot.student.launch):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        above = sorted(m for m in imported if m.startswith(("radcot.retrieval", "radcot.expansion",
                                                            "radcot.evaluation", "radcot.selection")))
        assert not above, f"{module.__name__} imports {above}"


@pytest.mark.fast
def test_retrieval_scorer_checks_its_config(tmp_path):
    from radcot.selection import SelectionError, retrieval_scorer
    from radcot.student.train import TrainConfig

    with pytest.raises(SelectionError, match="not 'retrieval'"):
        retrieval_scorer(TrainConfig(data="d", model="m", out="o"))
    cfg = TrainConfig(data="d", model="m", out="o", select_by="retrieval", select_index=str(tmp_path / "no-index"),
                      select_qrels=str(tmp_path))
    with pytest.raises(SelectionError, match="select_index .*no-index does not exist"):
        retrieval_scorer(cfg)


def test_aliases_select_the_same_checkpoint_with_an_injected_scorer(cranfield_distill, tiny_t5, tmp_path):
    """Any callable scores the dev CoTs ({query id: CoT} of the evaluated dev queries); NDCG@10 and nDCG@10 keep
    the same best/ and write the same canonical key."""
    from radcot.student.data import load_distillation_data
    from radcot.student.train import TrainConfig, read_metrics, train

    dd, _ = load_distillation_data(cranfield_distill)
    dev_ids = list(dd["dev"]["query_id"])[:3]
    bests = []
    for spelled in ("NDCG@10", "nDCG@10"):
        seen, values = [], iter([0.2, 0.6, 0.4])

        def scorer(cots):
            seen.append(dict(cots))
            return next(values)

        cfg = TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path / spelled), max_steps=3,
                          batch_size=2, text_maxlength=32, target_maxlength=16, eval_every=1, eval_max_examples=3,
                          eval_max_new_tokens=4, save_every=3, select_by="retrieval", select_index="unused",
                          select_qrels="unused", select_metric=spelled)
        run = train(cfg, show_progress=False, scorer=scorer)
        assert [list(c) for c in seen] == [dev_ids] * 3 and all(isinstance(t, str) for c in seen for t in c.values())
        assert [r["nDCG@10"] for r in read_metrics(run, "eval")] == [0.2, 0.6, 0.4]
        bests.append(json.loads((run / "best" / "fid_config.json").read_text())["best"])
    assert bests[0] == bests[1] == {"step": 2, "value": 0.6, "metric": "nDCG@10"}
