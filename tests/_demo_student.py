"""Session fixtures for the serving tests: the demo world's BM25 index and a small trained RADCoT student.

The student follows ``pipelines/demo.yaml`` (kb teacher on the training queries, BM25 passages, a tiny T5
from scratch, ``question: {query} context: {passage}``) at reduced size and steps, so that it trains in
well under a minute on 2 cores. It is weak, but its greedy CoTs depend on the query (checked by the tests
that rely on it), which is what the identity tests of the serving path need.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

REPO = Path(__file__).resolve().parents[1]
K = 3


def _shared(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.getbasetemp() / "serve-shared" / name


@pytest.fixture(scope="session")
def demo_index(demo_world, tmp_path_factory) -> Path:
    """A Lucene index of the demo corpus (title+text, stored contents), built once per session."""
    from radcot.retrieval.bm25 import BM25Retriever

    out = _shared(tmp_path_factory, "demo-bm25")
    if not (out / "segments_1").exists() and not any(out.glob("segments_*")):
        shutil.rmtree(out, ignore_errors=True)
        BM25Retriever.build(demo_world, out)
    return out


@pytest.fixture(scope="session")
def demo_student(demo_world, demo_index, tmp_path_factory) -> Path:
    """A tiny FiD student (k=3 BM25 passages) trained 300 steps on the demo world: ``RUN_DIR``."""
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.student.data import build_distillation_data
    from radcot.student.train import TrainConfig, train
    from radcot.teacher.kb import KBTeacher
    from radcot.teacher.runner import teach

    base = _shared(tmp_path_factory, "demo-student")
    run = base / "run"
    if (run / "best" / "config.json").exists():
        return run
    base.mkdir(parents=True, exist_ok=True)
    queries = demo_world / "queries.train.tsv"
    cots = base / "kb-cots.jsonl"
    teach(KBTeacher(demo_world), queries, cots, concurrency=1, show_progress=False)
    distill = base / "distill"
    build_distillation_data(queries, cots, BM25Retriever(demo_index), k=K, out_dir=distill, dev_fraction=0.02,
                            seed=0, show_progress=False)
    shutil.rmtree(run, ignore_errors=True)
    train(TrainConfig(data=str(distill), model="tiny-t5:d_model=64,layers=2,heads=4,d_ff=256,vocab_size=2000,dropout=0",
                      out=str(run), n_context=K, max_steps=300, batch_size=8, lr=3e-3, text_maxlength=48,
                      target_maxlength=48, eval_every=300, eval_max_new_tokens=16, eval_max_examples=8,
                      save_every=300, log_every=50, template="question: {query} context: {passage}", seed=13),
          show_progress=False)
    return run
