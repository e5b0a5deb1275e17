"""Shared, session-cached artefacts for the student tests (imported by tests/test_student_*.py).

Real data: Cranfield queries and passages. Teacher CoTs are a stand-in written from real text: for
each query, the first sentence after the title of its most relevant judged passage (so the targets are
learnable from the retrieved passages). Artefacts are built once per session under pytest's base temp
dir and reused by every module (the directory is the cache, so fixtures imported in several modules
do not rebuild).
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

TINY = dict(vocab_size=1000, d_model=64, layers=2, heads=4, d_ff=128, seed=0, dropout=0.1)
K = 3


@pytest.fixture(autouse=True)
def _one_thread():
    """2 shared cores: one torch thread avoids oversubscription stalls (and makes timings steadier)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def assert_generate_equals_naive(student, ii, am, pm, max_new_tokens: int):
    """Batched encoder-once + KV-cache greedy == per-example cache-less greedy; returns the naive ids."""
    fast = student.generate(ii, am, pm, max_new_tokens=max_new_tokens)
    naive = student.naive_greedy(ii, am, pm, max_new_tokens=max_new_tokens)
    pad = student.tokenizer.pad_token_id
    for row, ref in zip(fast.tolist(), naive):
        while len(row) > len(ref) and row[-1] == pad:
            row.pop()
        assert row == ref
    return naive


def _shared(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.getbasetemp() / "student-shared" / name


def _read_cranfield(cranfield: Path):
    docs = {}
    with open(cranfield / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            docs[d["_id"]] = d
    queries = [json.loads(line) for line in open(cranfield / "queries.jsonl", encoding="utf-8")]
    qrels = collections.defaultdict(list)
    with open(cranfield / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, d, s = line.split()
            qrels[q].append((int(s), d))
    return docs, queries, qrels


def stand_in_cot(doc: dict) -> str:
    """First sentence after the title of a Cranfield abstract (which repeats its title), <= 40 words."""
    parts = [p.strip() for p in doc["text"].split(" . ") if p.strip()]
    sent = parts[1] if len(parts) > 1 else parts[0]
    return " ".join(sent.split()[:40])


@pytest.fixture(scope="session")
def cranfield_cots(cranfield, tmp_path_factory) -> Path:
    """Teacher-format JSONL for the 225 Cranfield queries; query 1 failed, query 2 empty (to be excluded)."""
    out = _shared(tmp_path_factory, "cranfield-cots.jsonl")
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    docs, queries, qrels = _read_cranfield(cranfield)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for q in queries:
            rel = sorted(qrels[q["_id"]], key=lambda x: (-x[0], x[1]))
            rec = {"query_id": q["_id"], "query": q["text"], "text": stand_in_cot(docs[rel[0][1]]),
                   "model": "stand-in:first-sentence-of-top-relevant", "error": None, "finish_reason": "stop"}
            if q["_id"] == "1":
                rec.update(text="", error="HTTP 500 after 3 attempts")
            elif q["_id"] == "2":
                rec.update(text="   ", empty=True)
            f.write(json.dumps(rec) + "\n")
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def cranfield_retriever(cranfield_bm25_index):
    """The real BM25 retriever over the session's Cranfield Lucene index."""
    from radcot.retrieval.bm25 import BM25Retriever

    return BM25Retriever(cranfield_bm25_index)


@pytest.fixture(scope="session")
def cranfield_distill(cranfield, cranfield_cots, cranfield_retriever, tmp_path_factory) -> Path:
    """Distillation data: Cranfield queries + BM25 top-3 passages + stand-in CoTs (train ~200 / dev ~22)."""
    from radcot.student.data import build_distillation_data

    out = _shared(tmp_path_factory, "cranfield-distill")
    if not (out / "dataset_dict.json").exists():
        build_distillation_data(cranfield, cranfield_cots, cranfield_retriever, k=K, out_dir=out,
                                dev_fraction=0.1, seed=0, show_progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_t5(cranfield, tmp_path_factory) -> Path:
    """A tiny random T5 (d_model 64, 2 layers) with a BPE tokenizer trained on Cranfield text."""
    from radcot.demo.tiny import build_tiny_t5

    out = _shared(tmp_path_factory, "tiny-t5")
    if not (out / "config.json").exists():
        docs, queries, _ = _read_cranfield(cranfield)
        texts = [q["text"] for q in queries] + [f"{d['title']} {d['text']}" for d in docs.values()]
        build_tiny_t5(texts, out, **TINY)
    return out


@pytest.fixture(scope="session")
def trained_student(cranfield_distill, tiny_t5, tmp_path_factory) -> Path:
    """A tiny FiD trained for 40 steps (lr 5e-3) on the Cranfield distillation data: ``RUN_DIR``."""
    from radcot.student.train import TrainConfig, train

    out = _shared(tmp_path_factory, "trained-run")
    if not (out / "best" / "config.json").exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        # the radcot <= 0.2 input template, which the thresholds of the tests on this 40-step student were set
        # with (with the official one it learns as much -- dev loss 5.86 vs 5.85 -- but lands on the other side
        # of test_training_loss_falls_and_best_is_kept's 0.85 and writes one CoT for all six queries of
        # test_fid_generate_with_encoder_outputs_equals_naive); tests/test_student_inputs.py covers the default
        train(TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(out), max_steps=40,
                          batch_size=8, lr=5e-3, text_maxlength=64, target_maxlength=48, eval_every=20,
                          eval_max_new_tokens=24, eval_max_examples=16, save_every=20, log_every=1,
                          template="passage-prefix"),
              show_progress=False)
    return out


@pytest.fixture(scope="session")
def untied_t5(tiny_t5, tmp_path_factory) -> Path:
    """A tiny T5 v1.1 / flan-t5-architecture model: gated-gelu, ``tie_word_embeddings=False`` and its own
    ``lm_head`` (what every real flan-t5 run trains), with the tiny tokenizer. Random weights."""
    import transformers

    from radcot.student.model import FiDStudent, untie_lm_head

    out = _shared(tmp_path_factory, "untied-t5")
    if not (out / "config.json").exists():
        tok = transformers.AutoTokenizer.from_pretrained(str(tiny_t5))
        d = TINY["d_model"]
        config = transformers.T5Config(
            vocab_size=len(tok), d_model=d, d_kv=d // TINY["heads"], d_ff=TINY["d_ff"], num_layers=TINY["layers"],
            num_decoder_layers=TINY["layers"], num_heads=TINY["heads"], feed_forward_proj="gated-gelu",
            tie_word_embeddings=False, dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            t5 = untie_lm_head(transformers.T5ForConditionalGeneration(config), std=d ** -0.5)
        t5.generation_config.decoder_start_token_id = 0
        FiDStudent(t5, tok).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_untied_student(cranfield_distill, untied_t5, tmp_path_factory) -> Path:
    """The untied (flan-t5-style) tiny student trained for 6 steps: ``RUN_DIR``."""
    from radcot.student.train import TrainConfig, train

    out = _shared(tmp_path_factory, "trained-untied-run")
    if not (out / "best" / "config.json").exists():
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        train(TrainConfig(data=str(cranfield_distill), model=str(untied_t5), out=str(out), max_steps=6,
                          batch_size=4, lr=2e-3, text_maxlength=48, target_maxlength=32, eval_every=0,
                          eval_max_new_tokens=8, eval_max_examples=4, save_every=6, log_every=1),
              show_progress=False)
    return out
