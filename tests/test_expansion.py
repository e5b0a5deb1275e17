"""Expansion formulas against hand-computed strings, CoT sources, and ExpandedSearcher on a real Lucene index."""
from __future__ import annotations

import json
import logging

import pytest

from radcot.expansion import (ExpandedSearcher, QueryExpander, expand_queries, expand_text, radcot_repeats,
                              read_expansions, write_expansions)
from radcot.records import DataFormatError, Query, RadcotError

# ------------------------------------------------------------------------------------------- formulas


@pytest.mark.fast
def test_radcot_formula_hand_computed():
    # len("ab") = 2, len(cot) = 12 -> n = max(5, 6) = 6
    assert expand_text("ab", "cdefghijklmn", "radcot") == "ab ab ab ab ab ab  cdefghijklmn"
    # a short CoT never repeats the query fewer than 5 times: 10 // 4 = 2 -> 5
    assert expand_text("abcd", "0123456789", "radcot") == "abcd abcd abcd abcd abcd  0123456789"


@pytest.mark.parametrize("q, cot_len, n", [
    ("abcd", 23, 5),   # 23 // 4 = 5
    ("abcd", 24, 6),   # 24 // 4 = 6 (the boundary)
    ("abcd", 27, 6),   # floor division
    ("abcd", 0, 5),    # empty CoT
    ("a" * 50, 10, 5),  # long query, short CoT
    ("a", 1000, 1000),  # one-character query
    ("", 30, 5),       # empty query: no division by zero
])
@pytest.mark.fast
def test_radcot_repeat_count(q, cot_len, n):
    assert radcot_repeats(q, "x" * cot_len) == n
    assert expand_text(q, "x" * cot_len, "radcot") == (q + " ") * n + " " + "x" * cot_len


@pytest.mark.fast
def test_empty_cot_and_empty_query_literal():
    assert expand_text("q", "", "radcot") == "q q q q q  "
    assert expand_text("q", None, "query2doc") == "q q q q q  "
    assert expand_text("", "cot", "radcot") == "      cot"  # 5 * " " + " " + cot


@pytest.mark.fast
def test_non_ascii_counts_code_points():
    q = "né à Ærø"  # 8 code points (more bytes in UTF-8)
    cot = "日本語の説明文です。とても長い説明です。ここまで"  # 24 code points -> 24 // 8 = 3 -> n = 5
    assert len(q) == 8 and len(cot) == 24
    assert expand_text(q, cot, "radcot") == f"{q} {q} {q} {q} {q}  {cot}"
    cot2 = cot * 3  # 72 // 8 = 9
    assert expand_text(q, cot2, "radcot") == f"{q} " * 9 + " " + cot2


@pytest.mark.fast
def test_ten_thousand_characters():
    cot = "abcdefghij" * 1000
    out = expand_text("query", cot, "radcot")  # n = 10000 // 5 = 2000
    assert out == "query " * 2000 + " " + cot
    assert len(out) == 6 * 2000 + 1 + 10000
    assert expand_text("query", cot, "query2doc") == "query " * 5 + " " + cot


@pytest.mark.fast
def test_other_formulas():
    assert expand_text("what is bm25", "A ranking function.", "query2doc") == \
        "what is bm25 what is bm25 what is bm25 what is bm25 what is bm25  A ranking function."
    assert expand_text("what is bm25", "A ranking function.", "dense") == "what is bm25 [SEP] A ranking function."
    assert expand_text("what is bm25", "A ranking function.", "none") == "what is bm25"
    with pytest.raises(RadcotError, match="unknown expansion formula 'hyde'"):
        expand_text("q", "c", "hyde")


@pytest.mark.fast
def test_expand_queries_falls_back_and_counts(caplog):
    queries = [Query("1", "a b"), Query("2", "c"), Query("3", "d"), Query("4", "e")]
    cots = {"1": "x\ny", "3": "   ", "4": None}
    with caplog.at_level(logging.WARNING, logger="radcot.expansion"):
        out = expand_queries(queries, cots, "query2doc")
    assert out == {"1": "a b a b a b a b a b  x y", "2": "c", "3": "d", "4": "e"}
    assert "3 of 4 queries have no usable CoT" in caplog.text


@pytest.mark.fast
def test_expansions_file_roundtrip(tmp_path):
    exp = {"1": "q q q q q  cot\twith tab", "b": "ünï  cöde ", "3": "plain"}
    path = tmp_path / "exp.tsv"
    write_expansions(exp, path)
    back = read_expansions(path)
    assert back == {"1": "q q q q q  cot with tab", "b": "ünï  cöde ", "3": "plain"}
    (tmp_path / "bad.tsv").write_text("1\tok\nno-tab-here\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2"):
        read_expansions(tmp_path / "bad.tsv")


@pytest.mark.fast
def test_one_formula_registry_and_one_expansion_function():
    """Issue 24: the formula list lived in six places and expansion-with-fallback in four (one skipped the
    cleaning, so its radcot repeat count differed). One registry, one function."""
    from radcot.expansion import FORMULAS, Expansion, expand_query

    assert list(FORMULAS) == ["radcot", "query2doc", "dense", "none"]
    cot = "line one\nline two\t"  # cleaned: 17 characters, so n = max(5, 17 // 1) = 17
    assert expand_query("q", cot, "radcot") == Expansion("q", "line one line two", "q " * 17 + " line one line two")
    for blank in (None, "", "  \n", 42):
        assert expand_query("q", blank, "radcot") == Expansion("q", "", "q", "no_cot")
    assert expand_query("q", "c", "none") == Expansion("q", "c", "q")  # the baseline, not a fallback
    with pytest.raises(RadcotError, match="unknown expansion formula 'hyde'; choose one of radcot, query2doc"):
        expand_query("q", "c", "hyde")


@pytest.mark.fast
def test_blank_expansion_in_a_tsv_is_refused_with_its_line(tmp_path):
    """Issue 24: an expansions TSV with a blank expansion searched an empty query."""
    path = tmp_path / "exp.tsv"
    path.write_text("1\tq q q q q  cot\n2\t\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"exp\.tsv.*line 2.*blank expansion for query id '2'"):
        read_expansions(path)
    path.write_text("1\tok\n2\t   \n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="line 2"):
        read_expansions(path)
    with pytest.raises(RadcotError, match="blank"):
        write_expansions({"1": "ok", "2": " "}, tmp_path / "out.tsv")
    assert not (tmp_path / "out.tsv").exists()


# --------------------------------------------------------------------------------------------- sources


def _teacher_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for qid, query, text, error in records:
            f.write(json.dumps({"query_id": qid, "query": query, "text": text, "error": error}) + "\n")


@pytest.mark.fast
def test_expander_from_jsonl_tsv_and_dict(tmp_path):
    jl = tmp_path / "cots.jsonl"
    _teacher_jsonl(jl, [("1", "what is x", "Rationale: x is y. Answer: y.", None),
                        ("2", "what is z", None, "HTTP 500")])
    ex = QueryExpander(jl, formula="query2doc")
    queries = [Query("1", "what is x"), Query("2", "what is z"), Query("3", "new")]
    out = ex.expand_all(queries)
    assert out["1"] == "what is x " * 5 + " Rationale: x is y. Answer: y."
    assert out["2"] == "what is z" and out["3"] == "new"
    assert ex.last_missing == ["2", "3"]
    # a plain string query is looked up by its text in the recorded outputs
    assert ex.expand("what is x") == out["1"]

    tsv = tmp_path / "cots.tsv"
    tsv.write_text("1\tRationale: x is y. Answer: y.\n", encoding="utf-8")
    assert QueryExpander(tsv, formula="query2doc").expand(Query("1", "what is x")) == out["1"]
    assert QueryExpander({"1": "Rationale: x is y. Answer: y."}, "query2doc").expand(Query("1", "what is x")) == out["1"]
    with pytest.raises(RadcotError, match="source must be"):
        QueryExpander(42)


@pytest.mark.fast
def test_expander_from_teacher_backend(tmp_path):
    from radcot.demo.world import make_world
    from radcot.demo.kb import KBTeacher

    world = tmp_path / "w"
    make_world(world, seed=4, scale=0.1, n_test=5)
    queries = [Query(*line.split("\t")) for line in (world / "queries.test.tsv").read_text().splitlines()]
    teacher = KBTeacher(world)
    ex = QueryExpander(teacher, formula="radcot")
    out = ex.expand_all(queries)
    for q in queries:
        cot = teacher.answer(q.text)
        assert out[q.query_id] == expand_text(q.text, cot, "radcot")
    assert ex.last_missing == []


@pytest.mark.fast
def test_two_plain_strings_in_a_row_get_their_own_cot(tmp_path):
    """Issue 13: plain strings all had query id "0" and the second got the first one's cached CoT."""
    from radcot.demo.world import make_world
    from radcot.demo.kb import KBTeacher

    world = tmp_path / "w"
    make_world(world, seed=4, scale=0.1, n_test=5)
    texts = [line.split("\t")[1] for line in (world / "queries.test.tsv").read_text().splitlines()[:3]]
    teacher = KBTeacher(world)
    assert len({teacher.answer(t) for t in texts}) == 3  # the check below can tell the CoTs apart
    ex = QueryExpander(teacher, formula="radcot")
    for t in texts:
        assert ex.expand(t) == expand_text(t, teacher.answer(t), "radcot")
    # a dict keyed by ids has no CoT for an unknown string: it falls back to the string, not to id "0"
    assert QueryExpander({"0": "the CoT of query 0"}, formula="query2doc").expand("other") == "other"


class _HalfBroken:
    """A teacher backend (the TeacherBackend contract) that fails on every query whose text contains "bad"."""

    def __new__(cls):
        from radcot.teacher.base import Generation, TeacherBackend, TeacherError

        class HalfBroken(TeacherBackend):
            name = "half-broken"

            def generate(self, items, params):
                return [TeacherError("HTTP 500") if "bad" in it.query.text else Generation(f"CoT of {it.query.text}")
                        for it in items]

        return HalfBroken()


@pytest.mark.fast
def test_teacher_failures_over_the_fraction_raise_below_it_warn(caplog):
    from radcot.expansion import TeacherUnavailable

    qs = [Query("1", "good one"), Query("2", "good two"), Query("3", "good three"), Query("4", "bad four")]
    ex = QueryExpander(_HalfBroken(), formula="query2doc")
    with caplog.at_level(logging.WARNING, logger="radcot.expansion"):
        out = ex.expand_all(qs)  # 1 of 4 failed: under the default 0.5
    assert out["1"] == "good one " * 5 + " CoT of good one" and out["4"] == "bad four"
    assert "failed on 1 of 4" in caplog.text
    with pytest.raises(TeacherUnavailable, match=r"failed on 2 of 2 queries .*last error: HTTP 500"):
        QueryExpander(_HalfBroken(), formula="query2doc").expand_all([Query("5", "bad"), Query("6", "bad too")])
    strict = QueryExpander(_HalfBroken(), formula="query2doc", max_failed_fraction=0.0)
    with pytest.raises(TeacherUnavailable, match="1 of 4"):
        strict.expand_all(qs)


@pytest.mark.fast
def test_a_teacher_that_fails_from_the_start_stops_after_a_sample():
    """`radcot expand --teacher openai` against a server answering HTTP 500 asked every query (6 attempts with
    backoff each: minutes for 30 queries) before giving up; like radcot teach it stops once most of the first
    answers (radcot.teacher.runner.FAILURE_SAMPLE) failed."""
    from radcot.expansion import TeacherUnavailable
    from radcot.teacher.runner import FAILURE_SAMPLE

    backend = _HalfBroken()
    asked = []
    generate = backend.generate
    backend.generate = lambda items, params: asked.extend(items) or generate(items, params)
    with pytest.raises(TeacherUnavailable, match=f"failed on {FAILURE_SAMPLE} of {FAILURE_SAMPLE} queries"):
        QueryExpander(backend, formula="query2doc").expand_all([Query(str(i), f"bad {i}") for i in range(40)])
    assert len(asked) == FAILURE_SAMPLE


@pytest.mark.fast
def test_openai_teacher_against_a_server_that_is_down():
    """Issue 9 class 5: a teacher server that is down must not give silently unexpanded queries."""
    import socket

    from radcot.expansion import TeacherUnavailable
    from radcot.teacher.openai import OpenAIBackend

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_attempts=1, timeout=5)
    ex = QueryExpander(backend, formula="radcot")
    with pytest.raises(TeacherUnavailable) as err:
        ex.expand_all([Query("1", "what is x"), Query("2", "what is y")])
    msg = str(err.value)
    assert "failed on 2 of 2" in msg and f"127.0.0.1:{port}/v1" in msg and "run again" in msg
    assert ex._cots == {}  # nothing cached: a second call asks the teacher again


@pytest.mark.fast
def test_several_samples_from_files(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_text("1\tfirst\n2\tonly\n", encoding="utf-8")
    b.write_text("1\tsecond\n", encoding="utf-8")
    ex = QueryExpander([a, b], formula="dense", samples=2)
    s1, s2 = ex.expand_samples([Query("1", "q"), Query("2", "r"), Query("3", "s")])
    assert (s1["1"], s2["1"]) == ("q [SEP] first", "q [SEP] second")
    assert (s1["2"], s2["2"]) == ("r [SEP] only", "r [SEP] only")  # fewer samples: the last one is reused
    assert (s1["3"], s2["3"]) == ("s", "s")


# --------------------------------------------------------------------------------- on a real Lucene index


@pytest.fixture(scope="module")
def cranfield_bm25(cranfield_bm25_index):
    from radcot.retrieval.bm25 import BM25Retriever

    return BM25Retriever(cranfield_bm25_index)


@pytest.fixture(scope="module")
def cranfield_queries(cranfield):
    from radcot.data.readers import read_queries

    return read_queries(cranfield)[:60]


@pytest.mark.java
def test_none_formula_is_plain_bm25(cranfield_bm25, cranfield_queries):
    searcher = ExpandedSearcher(cranfield_bm25, QueryExpander({}, formula="none"))
    got = searcher.batch_search(cranfield_queries, k=20)
    want = cranfield_bm25.batch_search(cranfield_queries, k=20)
    assert {q: [d.doc_id for d in v] for q, v in got.items()} == {q: [d.doc_id for d in v] for q, v in want.items()}


@pytest.mark.java
def test_oracle_cot_improves_ndcg(cranfield, cranfield_bm25, cranfield_queries):
    """A CoT that contains the text of a judged passage must lift nDCG@10 (and the expander must use it)."""
    from radcot.data.readers import read_corpus, read_qrels
    from radcot.evaluation import evaluate

    docs = {d.doc_id: d.text for d in read_corpus(cranfield)}
    ids = {q.query_id for q in cranfield_queries}
    qrels = [qr for qr in read_qrels(cranfield) if qr.query_id in ids]  # score these 60 queries only
    best = {}
    for qr in sorted(qrels, key=lambda r: -r.relevance):
        best.setdefault(qr.query_id, qr.doc_id)
    cots = {q.query_id: docs[best[q.query_id]] for q in cranfield_queries if q.query_id in best}
    plain = ExpandedSearcher(cranfield_bm25, QueryExpander(cots, "none")).run(cranfield_queries, k=100)
    expanded = ExpandedSearcher(cranfield_bm25, QueryExpander(cots, "radcot")).run(cranfield_queries, k=100)
    p, e = evaluate(qrels, plain, ["nDCG@10"])["nDCG@10"], evaluate(qrels, expanded, ["nDCG@10"])["nDCG@10"]
    print(f"\ncranfield (60 queries) nDCG@10: BM25 {p:.4f}, BM25 + oracle-passage 'CoT' {e:.4f}")
    assert e > p + 0.1


@pytest.mark.java
def test_hostile_queries_do_not_crash(cranfield_bm25):
    """Empty, non-ASCII, 10k-character and >1024-distinct-term expansions (Lucene's clause limit)."""
    many_terms = " ".join(f"term{i}x" for i in range(3000))  # 3000 distinct terms > maxClauseCount 1024
    cots = {"e": "", "u": "Überschall-Strömung über Tragflügel 超音速 🚀", "long": "boundary layer " * 700,
            "many": many_terms}
    queries = [Query("e", ""), Query("u", "überschall strömung"), Query("long", "boundary layer flow"),
               Query("many", "heat transfer")]
    searcher = ExpandedSearcher(cranfield_bm25, QueryExpander(cots, "radcot"))
    res = searcher.batch_search(queries, k=10)
    assert set(res) == {"e", "u", "long", "many"}
    assert len(res["long"]) == 10 and len(res["many"]) == 10
    assert searcher.search(Query("many", "heat transfer"), k=5)
    assert isinstance(searcher.search("", k=5), list)


@pytest.mark.java
def test_multi_sample_fusion_is_rrf_of_the_sample_runs(cranfield_bm25, cranfield_queries, tmp_path):
    """m CoTs -> m expanded runs -> fused by RRF; checked against an RRF computed here by hand."""
    qs = cranfield_queries[:10]
    s1 = {q.query_id: "pressure distribution on wings" for q in qs}
    s2 = {q.query_id: "heat transfer in laminar boundary layers" for q in qs}
    ex = QueryExpander({qid: [s1[qid], s2[qid]] for qid in s1}, formula="query2doc", samples=2)
    fused = ExpandedSearcher(cranfield_bm25, ex, rrf_constant=60, depth=50).run(qs, k=20)
    runs = [ExpandedSearcher(cranfield_bm25, QueryExpander(s, "query2doc")).batch_search(qs, k=50) for s in (s1, s2)]
    for q in qs:
        want: dict[str, float] = {}
        for run in runs:
            for rank, d in enumerate(run[q.query_id], 1):
                want[d.doc_id] = want.get(d.doc_id, 0.0) + 1.0 / (60 + rank)
        top = sorted(want.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        got = sorted(fused[q.query_id].items(), key=lambda kv: (-kv[1], kv[0]))
        assert [d for d, _ in got] == [d for d, _ in top]
        assert [s for _, s in got] == pytest.approx([s for _, s in top])


@pytest.mark.fast
def test_expand_cli(tmp_path):
    from radcot.cli import main
    from radcot.data.readers import write_queries_tsv

    qfile, cots, out = tmp_path / "q.tsv", tmp_path / "c.tsv", tmp_path / "exp.tsv"
    write_queries_tsv([Query("1", "ab"), Query("2", "cd")], qfile)
    cots.write_text("1\tcdefghijklmn\n", encoding="utf-8")
    assert main(["expand", "--cots", str(cots), "--queries", str(qfile), "--out", str(out)]) == 0
    assert read_expansions(out) == {"1": "ab ab ab ab ab ab  cdefghijklmn", "2": "cd"}
    assert main(["expand", "--cots", str(cots), "--queries", str(qfile), "--out", str(out), "--formula", "dense",
                 "--overwrite"]) == 0
    assert read_expansions(out)["1"] == "ab [SEP] cdefghijklmn"
    # a directory that is not a trained student: one clear error line, exit status 1
    assert main(["expand", "--cots", str(tmp_path), "--queries", str(qfile), "--out", str(out), "--overwrite"]) == 1


@pytest.mark.fast
def test_limit_terms_keeps_the_query_and_cuts_the_tail():
    from radcot.expansion import limit_terms

    assert limit_terms("a b a c d", max_terms=2) == "a b a"
    text = expand_text("heat flux", " ".join(f"w{i}" for i in range(2000)), "radcot")
    short = limit_terms(text, 1000)
    assert short.startswith("heat flux heat flux") and len(set(short.split())) == 1000
    assert limit_terms("超音速 flow", 2) == "超音"  # CJK characters count one by one, as Lucene splits them
    assert limit_terms("short query", 1000) == "short query"
