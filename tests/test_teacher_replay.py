"""Replay of the official RADCoT davinci-003 CoTs, prompt templates, and the ``radcot teach`` CLI (replay)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from radcot.records import DataFormatError, Query, RadcotError
from radcot.teacher import get_backend, is_usable, read_teacher_output, teach
from radcot.teacher.prompts import PROMPTS, get_prompt
from radcot.teacher.runner import config_path, failed_path

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def davinci(msmarco_dir) -> Path:
    path = msmarco_dir / "teacher-cot-davinci003"
    if not (path / "dl19.tsv").is_file():
        pytest.skip(f"official davinci-003 CoTs not found at {path}")
    return path


def _tsv_rows(path: Path) -> dict[str, tuple[str, str]]:
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        qid, query, cot, _cos = line.split("\t")
        rows[qid] = (query, cot)
    return rows


def test_read_official_tsv(davinci):
    recs = read_teacher_output(davinci / "dl19.tsv")
    assert len(recs) == 43
    r = recs["156493"]
    assert r["query"] == "do goldfish grow" and r["text"].startswith("Rationale: Goldfish are a type of fish")
    assert all(is_usable(x) for x in recs.values())
    assert len(read_teacher_output(davinci / "dl20.tsv")) == 200


def test_replay_dl19_topics_matches_release_and_flags_missing(davinci, msmarco_dir, tmp_path):
    rows = _tsv_rows(davinci / "dl19.tsv")
    out = tmp_path / "dl19.cots.jsonl"
    from radcot.data.readers import read_queries

    topics = read_queries(msmarco_dir / "topics.dl19-passage.txt")  # the 43 judged DL19 topics
    assert len(topics) == 43
    with get_backend("replay", path=davinci / "dl19.tsv") as be:
        s = teach(be, topics + [Query("999999999", "a topic without a released CoT")], out, show_progress=False)
    assert (s.total, s.done, s.failed) == (44, 43, 1)
    recs = read_teacher_output(out)
    assert len(recs) == 44
    for qid, (query, cot) in rows.items():
        assert recs[qid]["text"] == cot.strip() and recs[qid]["query"] == query
        assert recs[qid]["model"] == "replay:dl19.tsv" and recs[qid]["prompt_name"] == "radcot"
    assert "is not in the replay file" in recs["999999999"]["error"]
    assert sum(is_usable(r) for r in recs.values()) == 43

    # a radcot JSONL replays too (into an identical set of usable texts)
    out2 = tmp_path / "again.jsonl"
    with get_backend("replay", path=out) as be:
        s2 = teach(be, davinci / "dl19.tsv", out2, show_progress=False)  # the TSV's first 2 columns = queries
    assert (s2.done, s2.failed) == (43, 0)
    again = read_teacher_output(out2)
    assert {q: r["text"] for q, r in again.items()} == {q: c for q, (_, c) in rows.items()}
    assert json.loads(config_path(out2).read_text())["model"] == "replay:dl19.tsv"


def test_qid_text_tsv_and_format_errors(tmp_path):
    f = tmp_path / "q2d.tsv"
    f.write_text("1\tpassage one\n2\tpassage two\n")
    recs = read_teacher_output(f)
    assert recs["2"]["text"] == "passage two" and recs["2"]["query"] is None
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\ta\n2\ta\tb\tc\td\n")
    with pytest.raises(DataFormatError, match=r"bad.tsv, line 2: expected 2 fields.*found 5 fields"):
        read_teacher_output(bad)
    dup = tmp_path / "dup.tsv"
    dup.write_text("1\ta\n1\tb\n")
    with pytest.raises(DataFormatError, match="line 2.*'1' again"):
        read_teacher_output(dup)
    with pytest.raises(FileNotFoundError, match="radcot teach"):
        read_teacher_output(tmp_path / "nope.jsonl")


def test_empty_outputs_are_flagged_not_usable(tmp_path):
    src = tmp_path / "src.tsv"
    src.write_text("1\tsome text\n2\t   \n")
    out = tmp_path / "o.jsonl"
    s = teach(get_backend("replay", path=src), [Query("1", "a"), Query("2", "b")], out, show_progress=False)
    assert (s.done, s.empty) == (2, 1)
    recs = read_teacher_output(out)
    assert recs["2"]["empty"] is True and recs["2"]["text"] == "" and not is_usable(recs["2"])


def test_radcot_prompt_is_the_papers_exact_string():
    assert PROMPTS["radcot"] == 'Answer the following question "{query}".\nGive the rationale before answering.\n'
    assert get_prompt("radcot").render("do goldfish grow") == (
        'Answer the following question "do goldfish grow".\nGive the rationale before answering.\n'
    )
    # braces in a query are kept literally (no str.format)
    assert '"f(x) = {x}"' in get_prompt("radcot").render("f(x) = {x}")


def test_query2doc_examples_prompt_file_and_errors(tmp_path):
    ex = tmp_path / "ex.jsonl"
    ex.write_text(json.dumps({"query": "what is bm25", "passage": "BM25 is a ranking function."}) + "\n"
                  + json.dumps({"query": "q2", "passage": "p2"}) + "\n")
    p = get_prompt("query2doc", examples_file=ex, max_examples=1)
    text = p.render("who wrote okapi")
    assert text == ("Write a passage that answers the given query:\n\nQuery: what is bm25\n"
                    "Passage: BM25 is a ranking function.\n\nQuery: who wrote okapi\nPassage:")
    tf = tmp_path / "mine.txt"
    tf.write_text("Explain: {query}\n")
    assert get_prompt(file=tf).render("x") == "Explain: x\n" and get_prompt(file=tf).name == "file:mine.txt"
    assert get_prompt("Tell me about {query}").name == "custom"
    with pytest.raises(RadcotError, match="unknown prompt 'nope'"):
        get_prompt("nope")
    with pytest.raises(RadcotError, match="no \\{examples\\} placeholder"):
        get_prompt("radcot", examples_file=ex)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a"}\n')
    with pytest.raises(DataFormatError, match="bad.jsonl, line 1"):
        get_prompt("query2doc", examples_file=bad)


def test_cli_teach_replay(davinci, tmp_path, capsys):
    from radcot.cli.teach import main

    out = tmp_path / "cli.jsonl"
    rc = main(["--backend", "replay", "--replay-file", str(davinci / "dl19.tsv"), "--queries",
               str(davinci / "dl19.tsv"), "--out", str(out), "--limit", "10", "--no-progress"])
    assert rc == 0
    assert "10 done" in capsys.readouterr().out
    rc = main(["--backend", "replay", "--replay-file", str(davinci / "dl19.tsv"), "--queries",
               str(davinci / "dl19.tsv"), "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "33 done, 10 already done" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 43 and not failed_path(out).exists()
    with pytest.raises(RadcotError, match="--replay-file"):
        main(["--backend", "replay", "--queries", str(davinci / "dl19.tsv"), "--out", str(out)])
