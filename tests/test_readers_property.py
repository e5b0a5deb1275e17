"""Property test of the readers (issue 9): arbitrary bytes or lines written in each reader's format never
end in a traceback; the reader returns valid records or raises a RadcotError naming the file (and the line
where there is one)."""
from __future__ import annotations

import gzip
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radcot.data.readers import read_corpus, read_qrels, read_queries, read_run
from radcot.records import DataFormatError, Doc, Qrel, Query, RadcotError

pytestmark = pytest.mark.fast

SETTINGS = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# pieces that make lines look like each format, plus the troublemakers: BOM, bad UTF-8, NUL, CR, nan...
TOKENS = ["\t", " ", "\n", "\r", "\r\n", "{", "}", "[", "]", '"', ":", ",", '"_id"', '"id"', '"text"', '"title"',
          '"contents"', "null", "true", "1", "0", "2", "-1", "1.5", "nan", "inf", "Q0", "d1", "q1", "tag", "<top>",
          "</top>", "<num>", "Number:", "<title>", "<desc>", "\ufeff", "\x00", "é", "\\ud800", "\\u00e9", "1e999"]
RAW_BYTES = [b"\xef\xbb\xbf", b"\xe9", b"\xff\xfe", b"\xc3", b"\x80", b"\xed\xa0\x80"]

text_lines = st.lists(st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=12).map("".join),
                      max_size=8).map("\n".join)
content = st.one_of(
    st.binary(max_size=200),
    text_lines.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.tuples(text_lines, st.sampled_from(RAW_BYTES), text_lines).map(
        lambda t: t[0].encode("utf-8", "surrogatepass") + t[1] + t[2].encode("utf-8", "surrogatepass")),
)


def _check_error(e: Exception, path: Path) -> None:
    assert isinstance(e, RadcotError), f"{type(e).__name__}: {e}"
    assert str(path) in str(e), str(e)
    if isinstance(e, DataFormatError) and e.line is not None:
        assert f"line {e.line}" in str(e), str(e)


def _valid_id(value) -> bool:
    return isinstance(value, str) and value.split() == [value]


def _valid_text(value) -> bool:
    try:
        value.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        return False
    return True


def _read(reader, name: str, data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        try:
            return reader(path)
        except Exception as e:  # noqa: BLE001 - the property: only named RadcotErrors
            _check_error(e, path)
            return None


@pytest.mark.parametrize("name", ["corpus.jsonl", "collection.tsv", "corpus.jsonl.gz"])
@SETTINGS
@given(data=content)
def test_corpus_reader(name, data):
    docs = _read(lambda p: list(read_corpus(p)), name, data)
    for doc in docs or ():
        assert isinstance(doc, Doc) and _valid_id(doc.doc_id) and _valid_text(doc.text) and _valid_text(doc.title)


@pytest.mark.parametrize("name", ["queries.jsonl", "queries.tsv", "topics.txt"])
@SETTINGS
@given(data=content)
def test_queries_reader(name, data):
    queries = _read(read_queries, name, data)
    for q in queries or ():
        assert isinstance(q, Query) and _valid_id(q.query_id) and _valid_text(q.text) and q.text.strip()
    if queries is not None:
        assert queries and len({q.query_id for q in queries}) == len(queries)


@SETTINGS
@given(data=content | text_lines.map(lambda s: ("<top>\n<num> 1\n<title> x\n" + s).encode("utf-8", "surrogatepass")))
def test_sgml_topics_reader(data):
    for q in _read(read_queries, "topics.txt", data) or ():
        assert _valid_id(q.query_id) and q.text.strip()


@SETTINGS
@given(data=content)
def test_qrels_reader(data):
    for q in _read(read_qrels, "qrels.txt", data) or ():
        assert isinstance(q, Qrel) and _valid_id(q.query_id) and _valid_id(q.doc_id) and type(q.relevance) is int


@SETTINGS
@given(data=content)
def test_run_reader(data):
    run = _read(read_run, "run.trec", data)
    for qid, docs in (run or {}).items():
        assert _valid_id(qid) and docs
        assert all(_valid_id(d) and math.isfinite(s) for d, s in docs.items())


# arbitrary well-shaped run lines: fields drawn from anything; still a valid run or a named error
run_fields = st.lists(st.sampled_from(["q1", "d1", "Q0", "1", "2.5", "nan", "-inf", "1e400", "x y", "é", "\ufeff"])
                      | st.text(max_size=6), min_size=5, max_size=7).map(" ".join)


@SETTINGS
@given(lines=st.lists(run_fields, min_size=1, max_size=6))
def test_run_reader_on_run_shaped_lines(lines):
    run = _read(read_run, "run.trec", "\n".join(lines).encode("utf-8", "surrogatepass"))
    for docs in (run or {}).values():
        assert all(math.isfinite(s) for s in docs.values())
