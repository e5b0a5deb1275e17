"""The pipeline's training-query modes through the Pipeline API on small data, checking what they produce:
k-fold (folds disjoint and complete; each fold's student trained on the other folds only, with the `kb`
teacher) and synthetic (doc2query-style training queries an OpenAI-compatible server on 127.0.0.1 writes
from sampled passages, through the `openai` backend)."""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = [pytest.mark.java, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "student.n_context=2", "student.train.max_steps=2", "student.train.batch_size=4",
    "student.train.eval_every=0", "student.train.save_every=2", "student.train.eval_max_examples=2",
    "student.train.text_maxlength=32", "student.train.target_maxlength=16",
    "student.model=tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=500",
    "student.generate.max_new_tokens=8", "evaluation.k=50", "evaluation.teacher_row=null",
    "student.context_retriever=bm25", "student.train.select_by=rougeL",
    "rows=[{name: bm25}, {name: radcot, student: {context: true}}]",
]


def _stage_dir(exp: Path, name: str) -> Path:
    """A stage's directory from the manifest (shared stages live under RUNS_DIR/_shared, not in ``exp``)."""
    return Path(json.loads((exp / "manifest.json").read_text())["stages"][name]["dir"])


def _data_ids(exp: Path, fold: int) -> tuple[list[str], dict[str, str]]:
    """Query ids (train + dev splits) and texts of the distillation data of ``fold``."""
    from radcot.student.data import load_distillation_data

    dd, _ = load_distillation_data(_stage_dir(exp, f"data-radcot-f{fold}") / "data")
    rows = [r for split in dd for r in dd[split]]
    return [r["query_id"] for r in rows], {r["query_id"]: r["query"] for r in rows}


def _cot_ids(path: Path) -> list[str]:
    return [json.loads(line)["query_id"] for line in path.read_text().splitlines() if line.strip()]


def test_kfold_folds_are_disjoint_complete_and_train_on_the_other_folds(demo_world, tmp_path):
    from radcot.pipeline import Pipeline

    overrides = [f"params.data={demo_world}", "dataset.limit_queries=9", "training_queries.mode=kfold",
                 "training_queries.folds=3", *TINY]
    p = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides, runs_dir=tmp_path, show_progress=False)
    exp = p.run()
    eval_ids = {q.query_id for q in p.eval_queries()}
    assert len(eval_ids) == 9
    held_out = []
    for f in range(3):
        (gen,) = exp.glob(f"generate-radcot-f{f}-*/cot.jsonl")
        fold = _cot_ids(gen)                # the queries this fold's student wrote CoTs for
        train, _ = _data_ids(exp, f)         # the queries it was trained on
        assert len(fold) == 3 and len(set(train)) == len(train) == 6
        assert not set(fold) & set(train), f"fold {f} trained on its own evaluation queries"
        assert set(fold) | set(train) == eval_ids
        held_out.append(set(fold))
    assert set().union(*held_out) == eval_ids and sum(map(len, held_out)) == 9  # disjoint, complete
    # the teacher (kb) wrote CoTs for the evaluation queries once, shared by the folds' training data
    (teacher,) = exp.glob("teacher-eval-*/cot.jsonl")
    assert set(_cot_ids(teacher)) == eval_ids
    # the table scores every query once, from the fold that held it out
    from radcot.report import results_table

    assert results_table(exp).n_queries == 9


# ------------------------------------------------------------------------------------------------ synthetic


def question_for(passage: str) -> str:
    """What the test server writes for a passage: a question from its first three words."""
    return "what is " + " ".join(re.findall(r"\w+", passage.lower())[:3]) + "?"


class Doc2QueryServer:
    """A deterministic OpenAI-compatible chat server: a question for a passage, a rationale for a question."""

    def __init__(self):
        self.prompts: list[str] = []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, obj):
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._json({"object": "list", "data": [{"id": "d2q", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                srv.prompts.append(prompt)
                m = re.search(r"Passage: (.*)\nQuestion:", prompt, re.S)
                text = (question_for(m.group(1)) + " It is asked by the passage.") if m else \
                    "The rationale: " + " ".join(re.findall(r"\w+", prompt)[4:14]) + ". So the answer is given."
                self._json({"id": "x", "object": "chat.completion", "model": "d2q",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_synthetic_training_queries_come_from_sampled_passages(demo_world, tmp_path, monkeypatch):
    from radcot.data.readers import read_corpus
    from radcot.pipeline import Pipeline

    monkeypatch.setenv("D2Q_KEY", "test-key")
    server = Doc2QueryServer()
    try:
        overrides = [f"params.data={demo_world}", "dataset.limit_queries=4", "training_queries.mode=synthetic",
                     "training_queries.passages=8", "teacher.backend=openai", "teacher.concurrency=2",
                     f"teacher.args={{base_url: '{server.base_url}', model: d2q, api_key_env: D2Q_KEY}}", *TINY]
        p = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides, runs_dir=tmp_path, show_progress=False)
        exp = p.run()
    finally:
        server.close()
    docs = {d.doc_id: d for d in read_corpus(demo_world)}
    syn = _stage_dir(exp, "teacher-synthetic-queries") / "cot.jsonl"
    syn_ids = _cot_ids(syn)
    assert len(syn_ids) == len(set(syn_ids)) == 8
    sampled = [i.removeprefix("syn-") for i in syn_ids]
    assert all(i.startswith("syn-") for i in syn_ids) and set(sampled) <= set(docs)
    # every training query is the server's question for its own sampled passage, cut at the question mark
    train, texts = _data_ids(exp, 0)
    assert sorted(train) == sorted(syn_ids)
    for qid, text in texts.items():
        assert text == question_for(docs[qid.removeprefix("syn-")].contents[:1500]), (qid, text)
    # the passages were sent to the server (8 question prompts), then the questions for CoTs (8 more)
    asked = [x for x in server.prompts if "Passage: " in x]
    assert len(asked) == 8
    assert sum(any(t.rstrip("?") in x for t in texts.values()) for x in server.prompts if "Passage: " not in x) >= 8
    # the student trained on them wrote CoTs for the 4 evaluation queries (not the synthetic ones)
    (gen,) = exp.glob("generate-radcot-f0-*/cot.jsonl")
    assert set(_cot_ids(gen)) == {q.query_id for q in p.eval_queries()}


# ------------------------------------------------------------------------------------------------ launch


def test_training_stage_launches_torchrun_when_several_processes_are_asked(demo_world, tmp_path, caplog):
    """``student.train.nproc_per_node: 2`` trains under torchrun with two (gloo, CPU) ranks, as `radcot train
    --nproc-per-node 2` does: each rank logs the examples it saw, and the two halves are disjoint."""
    import logging

    from radcot.pipeline import Pipeline

    overrides = [f"params.data={demo_world}", "dataset.limit_queries=4", "training_queries.limit=24", *TINY,
                 "student.train.nproc_per_node=2", "student.train.log_examples=true"]
    p = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides, runs_dir=tmp_path, show_progress=False)
    with caplog.at_level(logging.INFO, logger="radcot"):
        exp = p.run()
    assert any("launching 2 processes" in r.getMessage() for r in caplog.records)
    (run,) = (tmp_path / "_shared").glob("train-*/run")
    seen = {}
    for rank in (0, 1):
        lines = (run / f"examples.rank{rank}.tsv").read_text().splitlines()
        seen[rank] = {line.split("\t")[1] for line in lines}
        assert seen[rank], f"rank {rank} logged no examples"
    assert not seen[0] & seen[1]  # DistributedSampler: each rank its own half
    assert (run / "best" / "config.json").is_file()
    (gen,) = exp.glob("generate-radcot-f0-*/cot.jsonl")
    assert len(_cot_ids(gen)) == 4
