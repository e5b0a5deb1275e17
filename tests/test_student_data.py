"""Distillation data from a real BM25 index, the no-context ablation, resumable student CoT generation, CLI."""
from __future__ import annotations

import csv
import json

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)
from _student_fixtures import K


def test_build_data_joins_bm25_passages_and_reports_exclusions(cranfield_distill, cranfield_retriever):
    from radcot.records import Query
    from radcot.student.data import EXCLUDED_FILE, META_FILE, load_distillation_data

    dd, meta = load_distillation_data(cranfield_distill)
    assert meta["k"] == K and meta["n_usable"] == 223 and meta["n_excluded"] == 2
    assert meta["n_train"] + meta["n_dev"] == 223 and meta["n_dev"] == 22
    assert meta["retriever"]["class"] == "BM25Retriever"
    # what a student trained on it records as its retriever (radcot_student.json), reopened by consumers
    from radcot.student.profile import RetrieverRecord

    rec = meta["student_retriever"]
    assert rec == RetrieverRecord.of(cranfield_retriever).to_dict() and rec["kind"] == "bm25"
    assert RetrieverRecord.from_dict(rec).indexes[0].identity["collection_fingerprint"]
    with open(cranfield_distill / EXCLUDED_FILE, encoding="utf-8") as f:
        excluded = {r["query_id"]: r["reason"] for r in csv.DictReader(f, delimiter="\t")}
    assert excluded == {"1": "teacher_error", "2": "empty_output"}
    assert json.loads((cranfield_distill / META_FILE).read_text())["teacher"]["sha256"]
    ex = dd["train"][0]
    hits = cranfield_retriever.search(Query(ex["query_id"], ex["query"]), k=K)
    assert [p["doc_id"] for p in ex["passages"]] == [h.doc_id for h in hits]
    assert all(p["text"] for p in ex["passages"])


def test_no_context_ablation_trains_and_generates(cranfield, cranfield_cots, tiny_t5, tmp_path):
    """Distillation without retrieval: one input per query, no passages, no retriever needed anywhere."""
    from radcot.student.data import NO_CONTEXT_TEMPLATE, build_distillation_data, load_distillation_data
    from radcot.student.generate import generate_cots
    from radcot.student.model import FiDStudent
    from radcot.student.train import TrainConfig, read_metrics, train
    from radcot.teacher.runner import read_teacher_output

    data = build_distillation_data(cranfield, cranfield_cots, None, k=K, out_dir=tmp_path / "nc", no_context=True,
                                   show_progress=False)
    dd, meta = load_distillation_data(data)
    assert meta["no_context"] and meta["retriever"] is None
    assert all(len(p) == 0 for p in dd["train"]["passages"])
    # the experiment's passage template (shared with the RADCoT row) gives way to the no-context one
    run = train(TrainConfig(data=str(data), model=str(tiny_t5), out=str(tmp_path / "run"), max_steps=6, batch_size=8,
                            lr=2e-3, target_maxlength=48, eval_every=0, eval_max_examples=4, eval_max_new_tokens=8,
                            log_every=1, template="question: {query} context: {passage}"), show_progress=False)
    student = FiDStudent.from_pretrained(run / "best")
    assert student.fid_config.no_context and student.fid_config.n_context == 1
    assert student.fid_config.template == NO_CONTEXT_TEMPLATE
    ii, _, _ = student.collator.encode_inputs([{"query": "why do wings stall", "passages": []}])
    assert ii.shape[:2] == (1, 1)
    rows = read_metrics(run, "train")
    assert len(rows) == 6
    out = generate_cots(run / "best", tmp_path / "nc.jsonl", queries=cranfield, limit=5, max_new_tokens=8,
                        show_progress=False)
    recs = read_teacher_output(out)
    assert len(recs) == 5 and all(r["doc_ids"] == [] for r in recs.values())


def test_generate_cots_teacher_format_resumable(trained_student, cranfield_distill, tmp_path):
    from radcot.student.generate import GenerationConfigMismatch, generate_cots
    from radcot.teacher.runner import is_usable, read_teacher_output

    out = tmp_path / "cots.jsonl"
    generate_cots(trained_student / "best", out, data=cranfield_distill, split="dev", max_new_tokens=16,
                  batch_size=8, limit=12, show_progress=False)
    lines = out.read_text().splitlines()
    assert len(lines) == 12
    full = [json.loads(x) for x in lines]
    # simulate a kill: keep 5 records and a torn sixth line, then resume
    out.write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])
    generate_cots(trained_student / "best", out, data=cranfield_distill, split="dev", max_new_tokens=16,
                  batch_size=8, limit=12, show_progress=False)
    again = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["query_id"] for r in again] == [r["query_id"] for r in full]
    assert [r["text"] for r in again] == [r["text"] for r in full]  # batch composition does not change greedy output
    recs = read_teacher_output(out)
    assert len(recs) == 12 and all(is_usable(r) for r in recs.values())
    r0 = full[0]
    assert r0["params"]["max_new_tokens"] == 16 and r0["finish_reason"] in ("stop", "length") and len(r0["doc_ids"]) == K
    with pytest.raises(GenerationConfigMismatch, match="params"):
        generate_cots(trained_student / "best", out, data=cranfield_distill, split="dev", max_new_tokens=20,
                      limit=12, show_progress=False)


def test_generate_no_repeat_ngram_guard(trained_student, cranfield_distill, tmp_path):
    from radcot.student.generate import generate_cots
    from radcot.student.model import FiDStudent
    from radcot.teacher.runner import read_teacher_output

    out = generate_cots(trained_student / "best", tmp_path / "nr.jsonl", data=cranfield_distill, split="dev",
                        max_new_tokens=40, limit=6, no_repeat_ngram_size=2, show_progress=False)
    recs = list(read_teacher_output(out).values())
    assert len(recs) == 6 and recs[0]["params"]["no_repeat_ngram_size"] == 2
    tok = FiDStudent.from_pretrained(trained_student / "best").tokenizer
    for r in recs:  # no token bigram occurs twice in any output
        ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        bigrams = list(zip(ids, ids[1:]))
        assert len(bigrams) == len(set(bigrams)), r["text"]
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        generate_cots(trained_student / "best", tmp_path / "bad.jsonl", data=cranfield_distill, no_repeat_ngram_size=-1)


def test_generate_cots_from_queries_and_index_with_beams(trained_student, cranfield, cranfield_retriever, tmp_path):
    from radcot.student.generate import DEFAULT_MAX_NEW_TOKENS, generate_cots
    from radcot.teacher.runner import read_teacher_output

    assert DEFAULT_MAX_NEW_TOKENS == 150
    out = generate_cots(trained_student / "best", tmp_path / "q.jsonl", queries=cranfield, retriever=cranfield_retriever,
                        limit=4, max_new_tokens=10, num_beams=3, num_return_sequences=2, show_progress=False)
    recs = read_teacher_output(out)
    assert len(recs) == 4
    assert all(len(r["texts"]) == 2 and r["text"] == r["texts"][0] for r in recs.values())


def test_cli_build_data_train_generate(cranfield, cranfield_cots, cranfield_bm25_index, tiny_t5, tmp_path, capsys):
    from radcot.cli import main

    assert main(["build-data", "--queries", str(cranfield), "--teacher-out", str(cranfield_cots), "--index",
                 str(cranfield_bm25_index), "--k", "2", "--out", str(tmp_path / "d"), "--dev-fraction", "0.05",
                 "--no-progress"]) == 0
    assert "excluded 2" in capsys.readouterr().out
    assert main(["train", "--data", str(tmp_path / "d"), "--model", str(tiny_t5), "--out", str(tmp_path / "r"),
                 "--steps", "3", "--batch-size", "4", "--text-maxlength", "48", "--eval-every", "0",
                 "--eval-max-examples", "2", "--eval-max-new-tokens", "4", "--no-progress"]) == 0
    assert main(["generate", "--student", str(tmp_path / "r" / "best"), "--queries", str(cranfield), "--index",
                 str(cranfield_bm25_index), "--limit", "3", "--max-new-tokens", "6", "--out", str(tmp_path / "g.jsonl"),
                 "--no-progress"]) == 0
    assert len((tmp_path / "g.jsonl").read_text().splitlines()) == 3


def _small_collection(cranfield, root: Path, n_docs: int = 150) -> Path:
    """A BEIR directory with the first ``n_docs`` Cranfield documents and the queries judged on them."""
    import csv as _csv

    root.mkdir(parents=True, exist_ok=True)
    lines = (cranfield / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:n_docs]
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = {json.loads(x)["_id"] for x in lines}
    rows = list(_csv.reader(open(cranfield / "qrels" / "test.tsv", encoding="utf-8"), delimiter="\t"))
    kept = [r for r in rows[1:] if r[1] in ids]
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text("\n".join(["\t".join(rows[0])] + ["\t".join(r) for r in kept]) + "\n")
    qids = {r[0] for r in kept}
    qs = [x for x in (cranfield / "queries.jsonl").read_text(encoding="utf-8").splitlines() if json.loads(x)["_id"] in qids]
    (root / "queries.jsonl").write_text("\n".join(qs) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_pipeline_context_retrievers_dense_and_fused(cranfield, tmp_path):
    """student.context_retriever: dense builds the index-dense stage (shared across experiments, as the data stages
    that name it are); fused is RRF of BM25 and dense."""
    pytest.importorskip("faiss")
    from radcot.pipeline import Pipeline, PipelineError
    from radcot.records import Query
    from radcot.retrieval.base import retrieve_passages
    from radcot.retrieval.fusion import FusedRetriever

    data = _small_collection(cranfield, tmp_path / "small")
    p = Pipeline({"experiment": "ctx", "dataset": {"path": str(data)}, "rows": [{"name": "bm25"}],
                  "retriever": {"threads": 1}}, runs_dir=tmp_path / "runs")
    with pytest.raises(PipelineError, match="context_retriever 'sparse'"):
        p.context_retriever("sparse")
    dense, fused, bm25 = p.context_retriever("dense"), p.context_retriever("fused"), p.context_retriever("bm25")
    (dense_dir,) = (tmp_path / "runs" / "_shared").glob("index-dense-*")
    other = Pipeline({"experiment": "ctx2", "dataset": {"path": str(data)}, "rows": [{"name": "bm25"}],
                      "retriever": {"threads": 1}}, runs_dir=tmp_path / "runs")
    assert other._dense_index() == str(dense_dir / "index") and other._state.stages["index-dense"]["reused"]
    assert isinstance(fused, FusedRetriever) and dense.kind == "dense" and bm25.kind == "bm25"
    queries = [Query(q["_id"], q["text"]) for q in map(json.loads, (data / "queries.jsonl").read_text().splitlines())][:5]
    depth = fused.depth
    runs = [{q: [h.doc_id for h in hs] for q, hs in r.batch_search(queries, depth).items()} for r in (bm25, dense)]
    got = fused.batch_search(queries, k=4)
    for q in queries:
        score: dict[str, float] = {}
        for run in runs:
            for rank, d in enumerate(run[q.query_id], 1):
                score[d] = score.get(d, 0.0) + 1.0 / (60 + rank)
        expect = sorted(score, key=lambda d: (-score[d], d))[:4]
        assert [h.doc_id for h in got[q.query_id]] == expect
    passages = retrieve_passages(fused, queries, k=3)
    assert all(len(v) == 3 and v[0]["text"] for v in passages.values())
    with pytest.raises(PipelineError, match=r"rows\[1\]\(s\)\.student\.context_retriever"):
        Pipeline({"experiment": "ctx", "dataset": {"path": str(data)},
                  "rows": [{"name": "bm25"}, {"name": "s", "student": {"context_retriever": "sparse"}}]})
