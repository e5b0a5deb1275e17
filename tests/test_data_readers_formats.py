"""Readers accept what the formats' own tools accept and name precisely what they refuse (#26).

JsonCollection directories are read recursively (as Anserini's collection walk), TSV header rows are not
records, TREC XML topics are read, compression is recognised by content, and a directory or a dangling
symbolic link is called what it is.
"""
from __future__ import annotations

import gzip
import json
import logging
import zipfile

import pytest

from radcot.data.readers import read_corpus, read_qrels, read_queries, read_run
from radcot.records import DataFormatError, Doc, Query

pytestmark = pytest.mark.fast

BOM = b"\xef\xbb\xbf"


def _w(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------ JsonCollection


def test_jsoncollection_documents_in_subdirectories_are_read(tmp_path):
    coll = tmp_path / "coll"
    _w(coll / "part0.jsonl", '{"id": "a", "contents": "alpha"}\n')
    _w(coll / "2024" / "01" / "part1.jsonl", '{"id": "b", "contents": "beta"}\n')
    _w(coll / "sub" / "part2.json.gz", gzip.compress(b'{"id": "c", "contents": "gamma"}\n'))
    _w(coll / "sub" / "README.md", "not a collection file\n")
    assert sorted(d.doc_id for d in read_corpus(coll)) == ["a", "b", "c"]


def test_jsoncollection_json_files_with_an_array_or_one_object(tmp_path):
    coll = tmp_path / "coll"
    _w(coll / "array.json", json.dumps([{"id": "a", "contents": "alpha"}, {"id": "b", "contents": "beta"}],
                                       indent=2))
    _w(coll / "one.json", json.dumps({"id": "c", "contents": "gamma"}, indent=2))
    assert sorted(read_corpus(coll)) == [Doc("a", "alpha"), Doc("b", "beta"), Doc("c", "gamma")]


def test_jsonl_with_a_broken_first_line_still_names_that_line(tmp_path):
    f = _w(tmp_path / "c.jsonl", '{"id": "a", "contents": "x"\n{"id": "b", "contents": "y"}\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 1: expected one JSON object per line"):
        list(read_corpus(f))


def test_dangling_link_inside_a_jsoncollection_is_named(tmp_path):
    coll = tmp_path / "coll"
    _w(coll / "a.jsonl", '{"id": "a", "contents": "x"}\n')
    (coll / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(FileNotFoundError, match=r"b\.jsonl is a symbolic link to .*gone\.jsonl, which does not exist"):
        list(read_corpus(coll))


# ------------------------------------------------------------------------------------------ TSV headers


@pytest.mark.parametrize("header", ["id\ttext", "pid\tpassage", "docid\ttitle\ttext", "doc_id\tcontents"])
def test_msmarco_collection_header_row_is_not_a_document(tmp_path, header, caplog):
    rows = "1\tfirst passage\n2\tsecond passage\n" if header.count("\t") == 1 else "1\tT1\tfirst\n2\tT2\tsecond\n"
    f = _w(tmp_path / "collection.tsv", f"{header}\n{rows}")
    with caplog.at_level(logging.WARNING, logger="radcot.data.readers"):
        docs = list(read_corpus(f))
    assert [d.doc_id for d in docs] == ["1", "2"]
    assert "line 1: skipped the column header" in caplog.text


@pytest.mark.parametrize("header", ["qid\tquery", "query_id\ttext", "id\tquestion"])
def test_queries_tsv_header_row_is_not_a_query(tmp_path, header):
    f = _w(tmp_path / "queries.tsv", f"{header}\n1\twhat is lift\n")
    assert read_queries(f) == [Query("1", "what is lift")]


def test_a_record_that_only_looks_like_a_header_later_in_the_file_is_kept(tmp_path):
    f = _w(tmp_path / "queries.tsv", "1\twhat is lift\nqid\tquery\n")
    assert [q.query_id for q in read_queries(f)] == ["1", "qid"]


# ------------------------------------------------------------------------------------------ byte-order marks


@pytest.mark.parametrize("name,text,read,first_id", [
    ("q.tsv", "q1\thello\n", read_queries, "q1"),
    ("queries.jsonl", '{"_id": "q1", "text": "hello"}\n', read_queries, "q1"),
    ("topics.sgml", "<top>\n<num> Number: 301\n<title> foo\n</top>\n", read_queries, "301"),
    ("topics.xml", '<topics><topic number="7"><query>bar</query></topic></topics>\n', read_queries, "7"),
    ("c.jsonl", '{"_id": "d1", "text": "x"}\n', lambda p: list(read_corpus(p)), "d1"),
    ("c.tsv", "d1\tx\n", lambda p: list(read_corpus(p)), "d1"),
    ("qrels.txt", "q1 0 d1 1\n", read_qrels, "q1"),
    ("qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n", read_qrels, "q1"),
    ("run.trec", "q1 Q0 d1 1 2.0 t\n", lambda p: [{"query_id": q} for q in read_run(p)], "q1"),
])
@pytest.mark.parametrize("compress", [False, True])
def test_utf8_bom_never_reaches_the_first_id(tmp_path, name, text, read, first_id, compress):
    data = BOM + text.encode("utf-8")
    f = _w(tmp_path / (name + (".gz" if compress else "")), gzip.compress(data) if compress else data)
    first = read(f)[0]
    got = first["query_id"] if isinstance(first, dict) else first[0]
    assert got == first_id


# ------------------------------------------------------------------------------------------ compression


def test_gzip_file_without_gz_suffix_is_read(tmp_path):
    f = _w(tmp_path / "collection.tsv", gzip.compress(b"d1\thello\nd2\tworld\n"))
    assert [d.doc_id for d in read_corpus(f)] == ["d1", "d2"]
    q = _w(tmp_path / "queries.tsv", gzip.compress(b"1\thello\n"))
    assert read_queries(q) == [Query("1", "hello")]


def test_zip_archive_is_named_with_the_fix(tmp_path):
    f = tmp_path / "corpus.jsonl"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("corpus.jsonl", '{"_id": "d1", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl: expected a text file .*found a zip file\. "
                                              r"Decompress it first \(unzip\)"):
        list(read_corpus(f))


# ------------------------------------------------------------------------------------------ not a file


def test_directory_named_like_the_corpus_is_called_a_directory(tmp_path):
    (tmp_path / "beir" / "corpus.jsonl").mkdir(parents=True)
    _w(tmp_path / "beir" / "queries.jsonl", '{"_id": "q", "text": "x"}\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl: expected a corpus file, found a directory"):
        list(read_corpus(tmp_path / "beir"))


def test_directory_given_as_run_or_qrels_is_called_a_directory(tmp_path):
    (tmp_path / "run.trec").mkdir()
    with pytest.raises(DataFormatError, match=r"run\.trec: expected a file, found a directory"):
        read_run(tmp_path / "run.trec")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").mkdir()
    with pytest.raises(DataFormatError, match=r"test\.tsv: expected a qrels file, found a directory"):
        read_qrels(tmp_path)


@pytest.mark.parametrize("read,what", [(lambda p: list(read_corpus(p)), "collection"), (read_queries, "queries"),
                                       (read_qrels, "qrels")])
def test_dangling_symlink_is_named_with_its_target(tmp_path, read, what):
    link = tmp_path / "input.tsv"
    link.symlink_to(tmp_path / "moved-away.tsv")
    with pytest.raises(FileNotFoundError, match=rf"{what}.*input\.tsv is a symbolic link to .*moved-away\.tsv, "
                                                r"which does not exist"):
        read(link)


# ------------------------------------------------------------------------------------------ TREC XML topics


WEB_TOPICS = """<?xml version="1.0" encoding="UTF-8"?>
<webtrack2009>
<topic number="1" type="faceted">
  <query>obama family tree</query>
  <description>Find information on President Barack Obama's family history.</description>
  <subtopic number="1" type="nav">Find the TIME magazine photo essay.</subtopic>
</topic>
<topic number="2" type="faceted">
  <query>french
     lick resort and casino</query>
  <description>Find information on the French Lick Resort.</description>
</topic>
</webtrack2009>
"""


def test_trec_xml_topics_are_read(tmp_path):
    f = _w(tmp_path / "wt09.topics.xml", WEB_TOPICS)
    assert read_queries(f) == [Query("1", "obama family tree"), Query("2", "french lick resort and casino")]


def test_trec_xml_topic_without_query_names_its_line(tmp_path):
    f = _w(tmp_path / "t.xml", '<topics>\n<topic number="1"><query>a</query></topic>\n'
                               '<topic number="2"><description>no query</description></topic>\n</topics>\n')
    with pytest.raises(DataFormatError, match=r"t\.xml, line 3: expected <topic number=\"\.\.\.\"> holding a <query>"):
        read_queries(f)


def test_malformed_trec_xml_names_the_line(tmp_path):
    f = _w(tmp_path / "t.xml", '<topics>\n<topic number="1"><query>a</query>\n</topics>\n')
    with pytest.raises(DataFormatError, match=r"t\.xml, line 3: expected well-formed XML topics"):
        read_queries(f)


def test_topics_root_without_topic_blocks_is_not_called_empty(tmp_path):
    f = _w(tmp_path / "t.txt", "<topics>\n<something>1</something>\n</topics>\n")
    with pytest.raises(DataFormatError, match=r"expected TREC topics: <top> blocks .* or XML <topic"):
        read_queries(f)
