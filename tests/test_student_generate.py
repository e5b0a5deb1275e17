"""radcot generate as the student was evaluated: its recorded index, n_context and decoding by default; passages
per query at generation independent of training; train/test overlap warnings; reproducible resumed sampling.

A tiny FiD trained on Cranfield (real BM25 passages); its profile (``radcot_student.json``) is written here as
``radcot train`` writes it.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from _student_fixtures import *  # noqa: F401,F403  (session fixtures + one torch thread)

pytestmark = pytest.mark.java


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _config(path: Path) -> dict:
    return json.loads(path.with_name(path.stem + ".config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def two_passage_student(cranfield_distill, tiny_t5, tmp_path_factory) -> Path:
    """A tiny student trained with n_context=2 (its data holds 3 passages per query): ``RUN_DIR/best``."""
    from radcot.student.train import TrainConfig, train

    run = train(TrainConfig(data=str(cranfield_distill), model=str(tiny_t5), out=str(tmp_path_factory.mktemp("n2") / "r"),
                            n_context=2, max_steps=3, batch_size=4, lr=5e-3, text_maxlength=48, target_maxlength=24,
                            eval_every=0, eval_max_examples=2, eval_max_new_tokens=4, log_every=1),
                show_progress=False)
    return run / "best"


@pytest.fixture(scope="module")
def new_queries(tmp_path_factory) -> Path:
    """Three queries no student here was trained on."""
    path = tmp_path_factory.mktemp("newq") / "q.tsv"
    path.write_text("x1\tboundary layer transition on a flat plate\nx2\tshock waves in supersonic flow\n"
                    "x3\theat transfer at high mach numbers\n", encoding="utf-8")
    return path


def _inputs_tokens(student, example: dict, n: int) -> int:
    """Real tokens of an example's FiD inputs with ``n`` passage slots (what a record's prompt_tokens counts)."""
    _, am, _ = student.collator.encode_inputs([example], n_context=n)
    return int(am.sum())


def test_generation_reads_its_own_n_context_not_the_training_one(two_passage_student, new_queries, cranfield_retriever,
                                                                 tmp_path):
    """Trained with 2 passages, generating with 5 reads 5 (5 input rows), with 2 reads 2 as before."""
    from radcot.retrieval.base import as_queries, retrieve_passages
    from radcot.student.generate import generate_cots
    from radcot.student.model import FiDStudent

    student = FiDStudent.from_pretrained(two_passage_student).eval()
    assert student.fid_config.n_context == 2
    q = as_queries(new_queries)[0]
    passages = retrieve_passages(cranfield_retriever, [q], 5)[q.query_id]
    ex = {"query": q.text, "passages": passages}
    for n, kwargs in ((5, {"k": 5}), (2, {"n_context": 2})):
        out = generate_cots(two_passage_student, tmp_path / f"n{n}.jsonl", queries=new_queries,
                            retriever=cranfield_retriever, max_new_tokens=6, show_progress=False, **kwargs)
        rec = _records(out)[0]
        assert len(rec["doc_ids"]) == n and rec["params"]["k"] == n
        assert rec["prompt_tokens"] == _inputs_tokens(student, ex, n)  # n rows, not the training 2
        assert rec["text"] == " ".join(student.generate_text([ex], n_context=n, max_new_tokens=6)[0].split())
    assert _inputs_tokens(student, ex, 5) > _inputs_tokens(student, ex, 2)


@pytest.fixture(scope="module")
def profiled_student(trained_student, cranfield_retriever, tmp_path_factory) -> Path:
    """The trained student's best/ with a profile: its BM25 index, 4 passages, 6 new tokens, no repeated bigram."""
    from radcot.student.profile import Decoding, Inference, RetrieverRecord, StudentProfile

    ckpt = tmp_path_factory.mktemp("profiled") / "best"
    shutil.copytree(trained_student / "best", ckpt)
    StudentProfile(ckpt, ckpt, RetrieverRecord.of(cranfield_retriever),
                   Inference(4, Decoding(max_new_tokens=6, no_repeat_ngram_size=2))).save()
    return ckpt


def test_the_student_profile_decides_by_default(profiled_student, new_queries, cranfield_bm25_index, tmp_path):
    from radcot.student.data import OFFICIAL_TEMPLATE, PASSAGE_PREFIX_TEMPLATE
    from radcot.student.generate import generate_cots

    out = generate_cots(profiled_student, tmp_path / "p.jsonl", queries=new_queries, show_progress=False)
    recs, config = _records(out), _config(out)
    assert len(recs) == 3 and all(len(r["doc_ids"]) == 4 for r in recs)
    assert config["params"] == {"max_new_tokens": 6, "num_beams": 1, "do_sample": False, "num_return_sequences": 1,
                                "seed": 0, "k": 4, "no_repeat_ngram_size": 2}
    (index,) = config["passages"]["retriever"]["indexes"]
    assert index["path"] == str(Path(cranfield_bm25_index).resolve()) and index["kind"] == "bm25"
    # the fixture student was trained with radcot <= 0.2's template: it keeps reading it
    assert config["template"] == config["fid_config"]["template"] == PASSAGE_PREFIX_TEMPLATE
    again = generate_cots(profiled_student, tmp_path / "q.jsonl", queries=new_queries, max_new_tokens=3,
                          n_context=2, num_beams=2, template="official", show_progress=False)
    config = _config(again)
    assert config["params"]["max_new_tokens"] == 3 and config["params"]["k"] == 2 and config["params"]["num_beams"] == 2
    assert config["template"] == OFFICIAL_TEMPLATE
    assert _records(again)[0]["prompt_tokens"] < _records(out)[0]["prompt_tokens"]  # 2 passages, no "Passage:"


def _fake_index(root: Path, kind: str, collection: str) -> Path:
    """An index directory holding only its radcot_index.json (what the identity check reads first)."""
    root.mkdir(parents=True)
    (root / "radcot_index.json").write_text(json.dumps({"kind": kind, "collection_fingerprint": collection,
                                                        "complete": True}))
    return root


def test_a_given_index_of_another_kind_or_collection_is_refused(profiled_student, new_queries, tmp_path, capsys):
    from radcot.cli import main
    from radcot.student.generate import generate_cots
    from radcot.student.profile import ProfileError

    dense = _fake_index(tmp_path / "dense", "dense", "abc")
    with pytest.raises(ProfileError, match="it is a dense index, the student read a bm25 index"):
        generate_cots(profiled_student, tmp_path / "a.jsonl", queries=new_queries, retriever=dense)
    other = _fake_index(tmp_path / "other", "bm25", "not-cranfield")
    assert main(["generate", "--student", str(profiled_student), "--queries", str(new_queries), "--index", str(other),
                 "--out", str(tmp_path / "b.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "collection_fingerprint is 'not-cranfield'" in err and "--force-index" in err
    assert not (tmp_path / "a.jsonl").exists() and not (tmp_path / "b.jsonl").exists()


def test_cli_uses_the_recorded_index_and_needs_one_without_a_profile(profiled_student, trained_student, new_queries,
                                                                     tmp_path, capsys):
    from radcot.cli import main

    assert main(["generate", "--student", str(profiled_student), "--queries", str(new_queries), "--limit", "2",
                 "--out", str(tmp_path / "g.jsonl"), "--no-progress"]) == 0
    assert [len(r["doc_ids"]) for r in _records(tmp_path / "g.jsonl")] == [4, 4]
    capsys.readouterr()
    older = Path(shutil.copytree(trained_student / "best", tmp_path / "older"))  # a checkpoint of radcot <= 0.2
    (older / "radcot_student.json").unlink()
    assert main(["generate", "--student", str(older), "--queries", str(new_queries),
                 "--out", str(tmp_path / "h.jsonl"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "records no retriever" in err and "--index DIR" in err and len(err.splitlines()) == 1


def test_training_queries_warn_and_can_be_refused(trained_student, cranfield, cranfield_retriever, new_queries,
                                                  tmp_path, caplog, capsys):
    """The student's data (named by its checkpoint) holds queries 3..225 (1 and 2 were excluded): queries 1-4
    overlap on 3 and 4."""
    from radcot.cli import main
    from radcot.student.generate import generate_cots
    from radcot.student.overlap import TrainTestOverlapError, find_overlap

    with caplog.at_level(logging.WARNING, logger="radcot.student"):
        generate_cots(trained_student / "best", tmp_path / "a.jsonl", queries=cranfield, retriever=cranfield_retriever,
                      limit=4, max_new_tokens=4, show_progress=False)
    assert "2 of the 4 queries are queries the student was trained on" in caplog.text
    assert "overstate" in caplog.text and "3, 4" in caplog.text
    overlap = find_overlap(trained_student / "best", ["1", "2", "3", "4"])
    assert len(overlap.train) + len(overlap.dev) == 2 and overlap.data is not None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="radcot.student"):
        generate_cots(trained_student / "best", tmp_path / "b.jsonl", queries=new_queries,
                      retriever=cranfield_retriever, max_new_tokens=4, show_progress=False)
    assert "train/test overlap" not in caplog.text
    with pytest.raises(TrainTestOverlapError, match="2 of the 3 queries"):
        generate_cots(trained_student / "best", tmp_path / "c.jsonl", queries=[("3", "x"), ("4", "y"), ("x9", "z")],
                      retriever=cranfield_retriever, on_train_overlap="error")
    assert not (tmp_path / "c.jsonl").exists()
    capsys.readouterr()
    assert main(["generate", "--student", str(trained_student), "--queries", str(cranfield), "--index",
                 str(cranfield_retriever.index_dir), "--limit", "3", "--on-train-overlap", "error",
                 "--out", str(tmp_path / "d.jsonl")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of the 3 queries are queries the student was trained on" in err


def _sample(student, out: Path, data, **kw) -> list[tuple]:
    from radcot.student.generate import generate_cots

    generate_cots(student, out, data=data, split="dev", max_new_tokens=12, do_sample=True, temperature=1.5,
                  show_progress=False, **{"seed": 3, **kw})
    return [(r["query_id"], r.get("texts", r["text"])) for r in _records(out)]


def test_resumed_sampling_samples_what_an_uninterrupted_run_does(trained_student, cranfield_distill, tmp_path):
    best = trained_student / "best"
    full = _sample(best, tmp_path / "full.jsonl", cranfield_distill, limit=12, batch_size=4)
    assert len({t for _, t in full}) > 1
    _sample(best, tmp_path / "cut.jsonl", cranfield_distill, limit=5, batch_size=4)  # "killed" after 5 queries
    assert _sample(best, tmp_path / "cut.jsonl", cranfield_distill, limit=12, batch_size=4) == full
    assert _sample(best, tmp_path / "rebatched.jsonl", cranfield_distill, limit=12, batch_size=5) == full
    assert _sample(best, tmp_path / "seed.jsonl", cranfield_distill, limit=12, batch_size=4, seed=4) != full
    two = _sample(best, tmp_path / "two.jsonl", cranfield_distill, limit=12, batch_size=4, num_return_sequences=2)
    assert [(q, t[0]) for q, t in two] == full  # a query's first sample is the same however many are drawn
    assert any(t[0] != t[1] for _, t in two)


@pytest.mark.slow
def test_fused_student_reads_both_recorded_or_given_indexes(trained_student, cranfield, cranfield_bm25_index,
                                                           new_queries, tmp_path):
    """A fused (BM25 + dense RRF) student: the recorded indexes by default; --index/--dense-index given."""
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from itertools import islice

    from radcot.cli import main
    from radcot.data.readers import read_corpus
    from radcot.retrieval import load_retriever
    from radcot.retrieval.base import as_queries
    from radcot.retrieval.dense import DenseRetriever
    from radcot.retrieval.fusion import FusedRetriever
    from radcot.student.profile import Inference, RetrieverRecord, StudentProfile

    dense_dir = tmp_path / "dense"
    DenseRetriever.build(list(islice(read_corpus(cranfield), 100)), dense_dir, chunk_size=50, max_seq_length=96,
                         show_progress=False)
    fused = FusedRetriever([load_retriever(cranfield_bm25_index), load_retriever(dense_dir)])
    ckpt = tmp_path / "best"
    shutil.copytree(trained_student / "best", ckpt)
    StudentProfile(ckpt, ckpt, RetrieverRecord.of(fused), Inference(3)).save()
    for extra, name in (([], "recorded"), (["--index", str(cranfield_bm25_index), "--dense-index", str(dense_dir)],
                                           "given")):
        out = tmp_path / f"{name}.jsonl"
        assert main(["generate", "--student", str(ckpt), "--queries", str(new_queries), "--out", str(out),
                     "--max-new-tokens", "4", "--no-progress", *extra]) == 0
        config = _config(out)
        assert config["passages"]["retriever"]["kind"] == "fused"
        expect = fused.batch_search(as_queries(new_queries), k=3)
        assert [r["doc_ids"] for r in _records(out)] == [[h.doc_id for h in expect[q]] for q in ("x1", "x2", "x3")]
    with pytest.raises(SystemExit) as e:
        main(["generate", "--student", str(ckpt), "--queries", str(new_queries), "--dense-index", str(dense_dir),
              "--out", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2
