"""Readers on real collections and on malformed input (file, line, expected, found)."""
from __future__ import annotations

import gzip
import json

import pytest

from radcot.data.readers import (check_qrels, read_corpus, read_qrels, read_queries, read_run, write_queries_tsv,
                                 write_run)
from radcot.data.registry import load_dataset
from radcot.records import DataFormatError, Qrel, Query

pytestmark = pytest.mark.fast


def test_vaswani_beir_layout(vaswani):
    docs = read_corpus(vaswani)
    first = next(docs)
    assert first.doc_id and first.text
    n = 1 + sum(1 for _ in docs)
    assert n == 11429
    queries = read_queries(vaswani)
    assert len(queries) == 93
    qrels = read_qrels(vaswani)
    assert len(qrels) == 2083
    assert check_qrels(qrels, queries) == []


def test_corpus_is_streamed(cranfield):
    it = read_corpus(cranfield)
    assert not isinstance(it, list)
    assert next(it).doc_id


def test_msmarco_topics_and_qrels(msmarco_dir):
    qs = read_queries(msmarco_dir / "topics.dl19-passage.txt")
    assert len(qs) == 43  # the shared topics file holds the 43 judged topics
    qrels = read_qrels(msmarco_dir / "qrels.dl19-passage.txt")
    assert len(qrels) == 9260
    assert len({q.query_id for q in qrels}) == 43


def test_named_dataset_from_local_dir(msmarco_dir):
    ds = load_dataset("msmarco-passage/trec-dl-2019", data_dir=msmarco_dir)
    assert len(ds.judged_queries()) == 43


def test_named_dataset_offline_error_says_what_to_do(tmp_path):
    from radcot.records import OfflineResourceError

    with pytest.raises(OfflineResourceError, match="topics.dl20.txt"):
        load_dataset("msmarco-passage/trec-dl-2020", data_dir=tmp_path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text('{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": \n')
    with pytest.raises(DataFormatError) as e:
        list(read_corpus(p))
    assert "corpus.jsonl" in str(e.value) and "line 2" in str(e.value)


def test_missing_text_field(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": "d1", "body": "x"}\n')
    with pytest.raises(DataFormatError, match='text field'):
        list(read_corpus(p))


def test_duplicate_doc_ids_are_reported(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n')
    with pytest.raises(DataFormatError, match="d1"):
        list(read_corpus(p))


def test_duplicate_query_ids_are_reported(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("1\tfirst\n1\tsecond\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_queries(p)


def test_tsv_queries_wrong_field_count(tmp_path):
    p = tmp_path / "q.tsv"
    p.write_text("1\tok\n2\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_queries(p)


def test_sgml_topics(tmp_path):
    p = tmp_path / "topics.txt"
    p.write_text("<top>\n<num> Number: 301\n<title> international organized crime\n<desc> Description:\nx\n</top>\n")
    assert read_queries(p) == [Query("301", "international organized crime")]


def test_qrels_bad_relevance(tmp_path):
    p = tmp_path / "qrels.txt"
    p.write_text("1 0 d1 1\n1 0 d2 high\n")
    with pytest.raises(DataFormatError, match="line 2"):
        read_qrels(p)


def test_qrels_for_unknown_queries_are_reported(caplog):
    missing = check_qrels([Qrel("1", "d", 1), Qrel("9", "d", 1)], [Query("1", "x")])
    assert missing == ["9"]
    assert "9" in caplog.text


def test_gz_and_msmarco_tsv_collection(tmp_path):
    p = tmp_path / "collection.tsv.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("0\tthe first passage\n1\tthe second passage\n")
    assert [d.doc_id for d in read_corpus(p)] == ["0", "1"]


def test_run_round_trip_and_bad_score(tmp_path):
    run = {"q1": {"d1": 2.5, "d2": 1.0}, "q2": {"d3": 0.1}}
    write_run(run, tmp_path / "r.trec")
    assert read_run(tmp_path / "r.trec") == run
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 notanumber tag\n")
    with pytest.raises(DataFormatError, match="line 1"):
        read_run(tmp_path / "bad.trec")


def test_queries_tsv_round_trip(tmp_path):
    qs = [Query("1", "héllo wörld"), Query("2", "tab\tinside")]
    write_queries_tsv(qs, tmp_path / "q.tsv")
    back = read_queries(tmp_path / "q.tsv")
    assert back[0] == qs[0] and back[1].query_id == "2"


def test_beir_train_split_gives_training_queries(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": f"q{i}"}) + "\n" for i in "123"))
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n")
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n2\td1\t1\n3\td1\t1\n")
    ds = load_dataset(tmp_path)
    assert [q.query_id for q in ds.judged_queries()] == ["1"]
    assert [q.query_id for q in ds.train_queries()] == ["2", "3"]
