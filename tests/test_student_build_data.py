"""build-data edge cases and the typed Python boundary of the student's data and collator (no JVM, no training).

Real files (Cranfield queries, teacher-format JSONL written here), the real ``datasets`` save/load, the real CLI.
Passages come from a small in-memory retriever (any object with ``batch_search`` and ``doc`` is a retriever
radcot accepts; it is not what these tests check).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

pytest.importorskip("datasets")

pytestmark = pytest.mark.fast


class ListRetriever:
    """The retriever shape (``batch_search``, ``doc``) over a few documents: the first ``k`` for every query."""

    def __init__(self, docs):
        from radcot.records import Doc

        self.docs = {d["_id"]: Doc(d["_id"], d["text"], d.get("title", "")) for d in docs}

    def batch_search(self, queries, k, **_):
        from radcot.records import ScoredDoc

        ids = list(self.docs)[:k]
        return {q.query_id: [ScoredDoc(q.query_id, d, 1.0 / (i + 1)) for i, d in enumerate(ids)] for q in queries}

    def doc(self, doc_id):
        return self.docs.get(doc_id)


@pytest.fixture(scope="module")
def small(cranfield, tmp_path_factory):
    """20 Cranfield queries, a teacher output for them, and 10 Cranfield documents."""
    d = tmp_path_factory.mktemp("small")
    queries = (cranfield / "queries.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    (d / "q.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    with open(d / "cots.jsonl", "w", encoding="utf-8") as f:
        for q in map(json.loads, queries):
            f.write(json.dumps({"query_id": q["_id"], "query": q["text"], "text": f"because {q['text']}",
                                "error": None}) + "\n")
    docs = [json.loads(x) for x in (cranfield / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:10]]
    return d, docs


def test_dev_fraction_0_writes_loadable_data_with_an_empty_dev_split(small, tmp_path, capsys):
    from radcot.cli import main
    from radcot.student.data import load_distillation_data, query_ids_digest
    from radcot.student.generate import examples_from_data

    d, _ = small
    assert main(["build-data", "--queries", str(d / "q.jsonl"), "--teacher-out", str(d / "cots.jsonl"),
                 "--no-context", "--dev-fraction", "0", "--out", str(tmp_path / "data"), "--no-progress"]) == 0
    assert "20 train / 0 dev examples" in capsys.readouterr().out
    dd, meta = load_distillation_data(tmp_path / "data")
    assert len(dd["train"]) == 20 and len(dd["dev"]) == 0 and meta["n_dev"] == 0
    assert meta["query_ids_sha256"] == {"train": query_ids_digest(dd["train"]["query_id"]),
                                        "dev": query_ids_digest([])}
    assert examples_from_data(tmp_path / "data", "dev") == [] and len(examples_from_data(tmp_path / "data", "all")) == 20


def test_an_empty_split_saved_without_a_shard_loads(small, tmp_path):
    """radcot <= 0.2 saved an empty dev split with no shard at all, which ``datasets`` cannot load (IndexError)."""
    import datasets

    from radcot.student.data import _features, load_distillation_data

    rows = {"query_id": ["1"], "query": ["q"], "target": ["t"], "passages": [[]]}
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=_features()),
                               "dev": datasets.Dataset.from_dict({k: [] for k in rows}, features=_features())})
    dd.save_to_disk(str(tmp_path / "old"))
    with pytest.raises(IndexError):
        datasets.load_from_disk(str(tmp_path / "old"))
    got, _ = load_distillation_data(tmp_path / "old")
    assert len(got["train"]) == 1 and len(got["dev"]) == 0 and got["dev"].column_names == got["train"].column_names


def test_dev_queries_matching_nothing_are_refused_naming_the_file(small, tmp_path, capsys):
    from radcot.cli import main

    d, _ = small
    other = tmp_path / "dev.tsv"
    other.write_text("x1\twhat is lift\nx2\twhat is drag\n", encoding="utf-8")
    assert main(["build-data", "--queries", str(d / "q.jsonl"), "--teacher-out", str(d / "cots.jsonl"),
                 "--no-context", "--dev-queries", str(other), "--out", str(tmp_path / "data"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and "none of the 2 dev queries" in err
    assert "Traceback" not in err and not (tmp_path / "data").exists()


def test_dev_queries_partly_matching_keep_the_matches(small, tmp_path, caplog):
    from radcot.student.data import build_distillation_data, load_distillation_data

    d, _ = small
    dev = tmp_path / "dev.tsv"
    dev.write_text("1\tx\n3\tx\nnope\tx\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="radcot.student"):
        build_distillation_data(d / "q.jsonl", d / "cots.jsonl", no_context=True, dev_queries=dev,
                                out_dir=tmp_path / "data", show_progress=False)
    dd, meta = load_distillation_data(tmp_path / "data")
    assert sorted(dd["dev"]["query_id"]) == ["1", "3"] and meta["n_dev"] == 2
    assert "1 of the 3 dev query ids are not among the usable queries" in caplog.text


def test_student_retriever_is_null_for_a_retriever_radcot_cannot_reopen(small, tmp_path, caplog):
    from radcot.student.data import build_distillation_data, load_distillation_data

    d, docs = small
    with caplog.at_level(logging.WARNING, logger="radcot.student"):
        build_distillation_data(d / "q.jsonl", d / "cots.jsonl", ListRetriever(docs), k=3, out_dir=tmp_path / "data",
                                show_progress=False)
    dd, meta = load_distillation_data(tmp_path / "data")
    assert meta["student_retriever"] is None and len(dd["train"][0]["passages"]) == 3
    assert "cannot record a ListRetriever" in caplog.text and "give radcot generate" in caplog.text
    build_distillation_data(d / "q.jsonl", d / "cots.jsonl", no_context=True, out_dir=tmp_path / "nc",
                            show_progress=False)
    assert load_distillation_data(tmp_path / "nc")[1]["student_retriever"] is None


@pytest.mark.parametrize("kwargs,message", [
    ({"queries": None}, "queries is required: pass Query records"),
    ({"queries": 7}, "queries must be Query records"),
    ({"k": "10"}, "k must be an integer, got '10' (str); pass a number, not a string"),
    ({"k": True}, "k must be an integer, got True"),
    ({"k": 0}, "k must be >= 1, got 0"),
    ({"dev_fraction": "0.1"}, "dev_fraction must be a number, got '0.1'"),
    ({"dev_fraction": 1.0}, "dev_fraction must be < 1, got 1"),
    ({"no_context": "yes"}, "no_context must be True or False, got 'yes'"),
    ({"teacher_out": None}, "teacher_out must be a path to a teacher output"),
    ({"retriever": 42}, "retriever must be an index directory or a retriever with batch_search() and doc()"),
    ({"dev_queries": 3}, "dev_queries must be a queries file, Query records or query ids"),
    ({"seed": "0"}, "seed must be an integer, got '0'"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
])
def test_build_distillation_data_names_the_bad_argument(small, tmp_path, kwargs, message):
    from radcot.student.data import build_distillation_data

    d, docs = small
    args = {"queries": d / "q.jsonl", "teacher_out": d / "cots.jsonl", "retriever": ListRetriever(docs), "k": 2,
            "out_dir": tmp_path / "data", "show_progress": False, **kwargs}
    with pytest.raises((TypeError, ValueError)) as e:
        build_distillation_data(**args)
    assert message in str(e.value)
    assert not (tmp_path / "data").exists()


def test_load_distillation_data_names_the_bad_argument(tmp_path):
    from radcot.records import RadcotError
    from radcot.student.data import load_distillation_data

    with pytest.raises(TypeError, match="path must be a path to a distillation dataset directory .* got None"):
        load_distillation_data(None)
    with pytest.raises(RadcotError, match="is not a distillation dataset"):
        load_distillation_data(tmp_path)


@pytest.fixture(scope="module")
def tokenizer(small, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from radcot.demo.tiny import train_t5_tokenizer

    _, docs = small
    return train_t5_tokenizer([d["text"] for d in docs] * 5, vocab_size=300)


def test_collator_names_the_bad_argument(tokenizer):
    from radcot.student.data import FiDCollator

    with pytest.raises(TypeError, match="n_context must be an integer, got '5'"):
        FiDCollator(tokenizer, n_context="5")
    with pytest.raises(ValueError, match="text_maxlength must be >= 8, got 4"):
        FiDCollator(tokenizer, n_context=2, text_maxlength=4)
    with pytest.raises(TypeError, match="tokenizer is required"):
        FiDCollator(None, n_context=2)
    col = FiDCollator(tokenizer, n_context=2)
    ex = {"query": "why do wings stall", "passages": [{"title": "", "text": "flow separates"}]}
    with pytest.raises(TypeError, match="got one example .a mapping.: wrap it in a list"):
        col(ex)
    with pytest.raises(TypeError, match="examples must be a list of"):
        col.encode_inputs("why do wings stall")
    with pytest.raises(TypeError, match=r"examples\[0\] must be a mapping with a string 'query'"):
        col([{"query": None}])
    with pytest.raises(TypeError, match=r"examples\[0\]\['passages'\] must be a list"):
        col([{"query": "q", "passages": "flow separates"}])
    with pytest.raises(ValueError, match="examples is empty"):
        col([])
    with pytest.raises(TypeError, match="n_context must be an integer"):
        col.encode_inputs([ex], n_context="3")


def test_collator_reads_the_n_context_of_the_batch(tokenizer):
    """A collator made for training N=2 reads 5 passages when asked (masked slots beyond the example's passages)."""
    from radcot.student.data import FiDCollator

    col = FiDCollator(tokenizer, n_context=2, text_maxlength=64)
    ex = {"query": "lift", "passages": [{"title": "", "text": f"passage {i}"} for i in range(4)]}
    ii, am, pm = col.encode_inputs([ex, {"query": "drag", "passages": []}], n_context=5)
    assert ii.shape[:2] == (2, 5) and pm.tolist() == [[1, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    assert col.encode_inputs([ex])[0].shape[:2] == (1, 2)  # the collator's own N by default
    assert col([dict(ex, target="because")], n_context=3)["input_ids"].shape[:2] == (1, 3)
