"""Issue 9 class 6: every reader names file, line and what was expected; ids, scores, encodings and
unclosed topics are checked where they are read (real files in tmp_path)."""
from __future__ import annotations

import gzip
import json

import pytest

from radcot.data.readers import (read_corpus, read_qrels, read_queries, read_run, write_queries_tsv,
                                 write_run)
from radcot.records import DataFormatError, EncodingError, InvalidIdError, Qrel, Query

pytestmark = pytest.mark.fast

BOM = "\ufeff"


def _w(path, text: str | bytes):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# -------------------------------------------------------------------------------- encoding and BOM

@pytest.mark.parametrize("name,content,read", [
    ("c.jsonl", b'{"_id": "d1", "text": "ok"}\n{"_id": "d2", "text": "caf\xe9"}\n', lambda p: list(read_corpus(p))),
    ("c.tsv", b"d1\tok\nd2\tcaf\xe9\n", lambda p: list(read_corpus(p))),
    ("q.tsv", b"1\tok\n2\tcaf\xe9\n", read_queries),
    ("q.jsonl", b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n', read_queries),
    ("topics.txt", b"<top>\n<num> 1\n<title> caf\xe9\n</top>\n", read_queries),
    ("qrels.txt", b"1 0 d1 1\n1 0 d\xe9 1\n", read_qrels),
    ("run.trec", b"1 Q0 d1 1 2.0 t\n1 Q0 d\xe9 2 1.0 t\n", read_run),
])
def test_non_utf8_names_file_line_byte_and_column(tmp_path, name, content, read):
    p = _w(tmp_path / name, content)
    with pytest.raises(EncodingError) as e:
        read(p)
    msg = str(e.value)
    assert msg.startswith(f"{p} line ") and "is not UTF-8 (byte 0xe9 at column " in msg
    assert msg.endswith("re-save it as UTF-8")
    line = 3 if name == "topics.txt" else 2
    assert e.value.line == line, msg
    col = content.splitlines()[line - 1].index(b"\xe9") + 1
    assert f"column {col})" in msg


def test_bom_is_stripped_by_every_reader(tmp_path):
    docs = list(read_corpus(_w(tmp_path / "c.jsonl", BOM + '{"_id": "d1", "text": "x"}\n')))
    assert docs[0].doc_id == "d1"
    assert next(read_corpus(_w(tmp_path / "c.tsv", BOM + "d1\tx\n"))).doc_id == "d1"
    assert read_queries(_w(tmp_path / "q.tsv", BOM + "1\thello\n")) == [Query("1", "hello")]
    assert read_queries(_w(tmp_path / "q.jsonl", BOM + '{"_id": "1", "text": "hi"}\n')) == [Query("1", "hi")]
    assert read_queries(_w(tmp_path / "t.txt", BOM + "<top>\n<num> 7\n<title> hi\n</top>\n")) == [Query("7", "hi")]
    assert read_qrels(_w(tmp_path / "qr.tsv", BOM + "query-id\tcorpus-id\tscore\n1\td1\t1\n")) == [Qrel("1", "d1", 1)]
    assert read_run(_w(tmp_path / "r.trec", BOM + "1 Q0 d1 1 2.0 t\n")) == {"1": {"d1": 2.0}}
    gz = tmp_path / "c2.jsonl.gz"
    gz.write_bytes(gzip.compress((BOM + '{"_id": "d9", "text": "x"}\n').encode()))
    assert next(read_corpus(gz)).doc_id == "d9"


def test_damaged_gzip_is_a_data_error(tmp_path):
    p = tmp_path / "c.jsonl.gz"
    p.write_bytes(gzip.compress(b'{"_id": "d1", "text": "x"}\n' * 50)[:-12])
    with pytest.raises(DataFormatError, match="gzip"):
        list(read_corpus(p))
    _w(tmp_path / "fake.tsv.gz", "d1\tnot compressed\n")
    with pytest.raises(DataFormatError, match="fake.tsv.gz.*gzip"):
        list(read_corpus(tmp_path / "fake.tsv.gz"))


def test_lone_carriage_returns_end_lines(tmp_path):
    p = _w(tmp_path / "q.tsv", "1\tfirst\r2\tsecond\r")
    assert read_queries(p) == [Query("1", "first"), Query("2", "second")]


# --------------------------------------------------------------------------------------------- ids

@pytest.mark.parametrize("name,content,line", [
    ("c.jsonl", '{"_id": "d1", "text": "a"}\n{"_id": "d 2", "text": "b"}\n', 2),
    ("c.jsonl", '{"_id": "", "text": "b"}\n', 1),
    ("c.jsonl", '{"_id": ["d"], "text": "b"}\n', 1),
    ("c.tsv", "d1\ta\nd 2\tb\n", 2),
    ("q.tsv", "1\tok\n2 b\tsecond\n", 2),
    ("q.jsonl", '{"_id": "q\\t1", "text": "x"}\n', 1),
    ("qrels.tsv", "query-id\tcorpus-id\tscore\n1\tdoc 1\t1\n", 2),
])
def test_ids_with_whitespace_are_rejected_where_read(tmp_path, name, content, line):
    p = _w(tmp_path / name, content)
    read = read_qrels if name.startswith("qrels") else read_queries if name[0] == "q" else lambda p: list(read_corpus(p))
    with pytest.raises(DataFormatError) as e:
        read(p)
    assert e.value.line == line and str(p) in str(e.value) and "id" in e.value.expected


def test_beir_qrels_id_with_space_is_not_misread_as_trec(tmp_path):
    # "1 \t doc 1 \t 1" split on whitespace is 4 fields and used to read as (1, doc=1, rel=1)
    p = _w(tmp_path / "q.tsv", "1\tdoc 1\t1\n")
    with pytest.raises(DataFormatError, match="whitespace"):
        read_qrels(p)


def test_writers_refuse_ids_and_tags_trec_cannot_hold(tmp_path):
    with pytest.raises(InvalidIdError, match="run tag 'my run'"):
        write_run({"1": {"d1": 1.0}}, tmp_path / "r.trec", tag="my run")
    with pytest.raises(InvalidIdError, match="doc id 'd 1'"):
        write_run({"1": {"d 1": 1.0}}, tmp_path / "r.trec")
    with pytest.raises(InvalidIdError, match="not finite"):
        write_run({"1": {"d1": float("nan")}}, tmp_path / "r.trec")
    with pytest.raises(InvalidIdError, match="query id 'q 1'"):
        write_queries_tsv([Query("q 1", "x")], tmp_path / "q.tsv")
    assert not (tmp_path / "r.trec").exists() and not (tmp_path / "q.tsv").exists()
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


# ------------------------------------------------------------------------------------- runs, qrels

@pytest.mark.parametrize("score", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_run_scores_are_errors(tmp_path, score):
    p = _w(tmp_path / "r.trec", f"1 Q0 d1 1 2.0 t\n1 Q0 d2 2 {score} t\n")
    with pytest.raises(DataFormatError, match="line 2: expected a finite score"):
        read_run(p)


def test_run_rank_must_be_an_integer(tmp_path):
    p = _w(tmp_path / "r.trec", "1 Q0 d1 first 2.0 t\n")
    with pytest.raises(DataFormatError, match="line 1: expected an integer rank"):
        read_run(p)


def test_run_with_a_space_in_tag_or_id_is_rejected(tmp_path):
    p = _w(tmp_path / "r.trec", "1 Q0 d1 1 2.0 my run\n")
    with pytest.raises(DataFormatError, match="line 1: expected 6 fields"):
        read_run(p)


@pytest.mark.parametrize("rel,ok", [("2", 2), ("1.0", 1), ("-1", -1), ("1.5", None), ("inf", None),
                                    ("nan", None), ("high", None)])
def test_qrels_relevance_must_be_an_integer(tmp_path, rel, ok):
    p = _w(tmp_path / "qrels.txt", f"1 0 d0 0\n1 0 d1 {rel}\n")
    if ok is None:
        with pytest.raises(DataFormatError, match="line 2: expected an integer relevance"):
            read_qrels(p)
    else:
        assert read_qrels(p)[1].relevance == ok


def test_qrels_first_line_with_a_bad_value_is_not_taken_for_a_header(tmp_path):
    p = _w(tmp_path / "qrels.txt", "1 0 d1 high\n1 0 d2 1\n")
    with pytest.raises(DataFormatError, match="line 1"):
        read_qrels(p)


# ------------------------------------------------------------------------------ topics and layouts

def test_unclosed_last_top_is_an_error_not_a_lost_topic(tmp_path):
    p = _w(tmp_path / "topics.txt", "<top>\n<num> 1\n<title> first\n</top>\n\n<top>\n<num> 2\n<title> second\n")
    with pytest.raises(DataFormatError) as e:
        read_queries(p)
    assert e.value.line == 6 and "</top>" in e.value.expected and "end of the file" in e.value.found


def test_top_closed_by_the_next_top_is_an_error(tmp_path):
    p = _w(tmp_path / "topics.txt", "<top>\n<num> 1\n<title> first\n<top>\n<num> 2\n<title> x\n</top>\n")
    with pytest.raises(DataFormatError, match="line 1: expected </top>.*found another <top>"):
        read_queries(p)


def test_empty_title_is_an_error(tmp_path):
    p = _w(tmp_path / "topics.txt", "<top>\n<num> 1\n<title>\n<desc> d\n</top>\n")
    with pytest.raises(DataFormatError, match="line 1: expected a non-empty <title>"):
        read_queries(p)


def test_beir_directory_without_corpus_is_not_read_from_queries(tmp_path):
    (tmp_path / "qrels").mkdir()
    _w(tmp_path / "queries.jsonl", json.dumps({"_id": "1", "text": "a question"}) + "\n")
    _w(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\n1\td1\t1\n")
    with pytest.raises(DataFormatError, match="corpus.jsonl") as e:
        list(read_corpus(tmp_path))
    assert "queries.jsonl" in str(e.value)


def test_jsonl_collection_directory_still_reads_all_files(tmp_path):
    _w(tmp_path / "part1.jsonl", '{"id": "a", "contents": "x"}\n')
    _w(tmp_path / "part2.jsonl", '{"id": "b", "contents": "y"}\n')
    assert [d.doc_id for d in read_corpus(tmp_path)] == ["a", "b"]


@pytest.mark.parametrize("name,content", [("c.jsonl", ""), ("c.tsv", "\n\n  \n")])
def test_empty_collection_is_an_error(tmp_path, name, content):
    with pytest.raises(DataFormatError, match="no documents"):
        list(read_corpus(_w(tmp_path / name, content)))


@pytest.mark.parametrize("read,name,what", [(read_queries, "q.tsv", "no queries"), (read_qrels, "qr.txt", "no judge"),
                                            (read_run, "r.trec", "an empty run")])
def test_empty_inputs_are_errors(tmp_path, read, name, what):
    with pytest.raises(DataFormatError, match=what):
        read(_w(tmp_path / name, "\n"))


def test_directory_or_missing_file_given_as_run(tmp_path):
    with pytest.raises(DataFormatError, match="expected a file, found a directory"):
        read_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.trec does not exist"):
        read_run(tmp_path / "nope.trec")


@pytest.mark.parametrize("line,expected", [
    ('{"_id": "d1", "text": ["a"]}', '"text" to be a string'),
    ('{"_id": "d1", "text": "x", "title": 3}', '"title" to be a string'),
    ('{"_id": "d1", "text": "\\ud800"}', "UTF-8 can hold"),
    ('[' * 100_000, "one JSON object per line"),
    ('{"_id": ' + "9" * 5000 + ', "text": "x"}', "one JSON object per line"),
])
def test_json_values_radcot_cannot_represent(tmp_path, line, expected):
    with pytest.raises(DataFormatError, match="line 1") as e:
        list(read_corpus(_w(tmp_path / "c.jsonl", line + "\n")))
    assert expected in str(e.value)


def test_query_text_must_be_text(tmp_path):
    with pytest.raises(DataFormatError, match="line 1.*non-empty query text"):
        read_queries(_w(tmp_path / "q.jsonl", '{"_id": "1", "text": "   "}\n'))
    with pytest.raises(DataFormatError, match="line 2.*non-empty query text"):
        read_queries(_w(tmp_path / "q.tsv", "1\tok\n2\t\n"))
