"""CoT files as users hand them over, resuming over what a run left behind, and the teacher API's argument checks.

Readers must neither drop nor invent records: a UTF-8 BOM must not hide the first query, a complete last
record without its newline is kept, a torn last line is cut and its query really asked again. A run that
finished no query pins no settings. The backend below is a real :class:`TeacherBackend` that records which
queries it was asked (the runner is what is under test).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from radcot.cot import CoTWriter, read_cots
from radcot.records import Query
from radcot.teacher import GenerationParams, TeacherConfigMismatch, read_teacher_output, teach
from radcot.teacher.base import Generation, TeacherBackend, TeacherError
from radcot.teacher.runner import TeacherFailed, config_path, failed_path

pytestmark = pytest.mark.fast

QUERIES = [Query("1", "alpha"), Query("2", "beta"), Query("3", "gamma")]


class Recording(TeacherBackend):
    """Answers ``cot of <query>`` (or fails every query) and records every query id it was asked."""

    name = "recording"

    def __init__(self, fail: bool = False, interrupt: bool = False):
        self.fail, self.interrupt = fail, interrupt
        self.model = "recording-model"
        self.asked: list[str] = []

    def generate(self, items, params):
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C before the first answer
        self.asked += [it.query.query_id for it in items]
        if self.fail:
            return [TeacherError("the server is down") for _ in items]
        return [Generation(f"cot of {it.query.text}") for it in items]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------ readers


def test_bom_does_not_hide_the_first_query_of_a_tsv(tmp_path):
    two = tmp_path / "cots.tsv"
    two.write_bytes("\ufeff1\tcot one\n2\tcot two\n".encode("utf-8"))
    assert {q: r["text"] for q, r in read_teacher_output(two).items()} == {"1": "cot one", "2": "cot two"}
    davinci = tmp_path / "dl19.tsv"  # the official release's layout, with a header, as Excel saves it
    davinci.write_bytes("\ufeffqid\tquery\tcot\tcosine\r\n156493\tdo goldfish grow\tYes.\t0.9\r\n".encode("utf-8"))
    recs = read_teacher_output(davinci)
    assert list(recs) == ["156493"] and recs["156493"]["query"] == "do goldfish grow"


def test_bom_does_not_hide_the_first_record_of_a_jsonl(tmp_path):
    out = tmp_path / "cots.jsonl"
    out.write_bytes(b"\xef\xbb\xbf" + b'{"query_id": "1", "text": "a", "error": null}\n'
                    b'{"query_id": "2", "text": "b", "error": null}\n')
    assert {q: r["text"] for q, r in read_cots(out).items()} == {"1": "a", "2": "b"}


def test_a_complete_last_record_without_newline_is_kept(tmp_path):
    out = tmp_path / "cots.jsonl"
    out.write_text('{"query_id": "1", "text": "a", "error": null}\n{"query_id": "2", "text": "b", "error": null}')
    assert sorted(read_cots(out)) == ["1", "2"]


def test_a_torn_last_line_is_ignored_by_readers_with_a_true_warning(tmp_path, caplog):
    out = tmp_path / "cots.jsonl"
    out.write_text('{"query_id": "1", "text": "a", "error": null}\n{"query_id": "2", "te')
    with caplog.at_level(logging.WARNING, logger="radcot"):
        assert list(read_cots(out)) == ["1"]
    assert "line 2 is incomplete" in caplog.text and "rerun the command that wrote the file" in caplog.text
    assert out.read_text().endswith('"te')  # a reader never rewrites the file


def test_a_tsv_that_is_not_utf8_names_its_line(tmp_path):
    from radcot.records import DataFormatError

    bad = tmp_path / "cots.tsv"
    bad.write_bytes(b"1\tfine\n2\tcaf\xe9\n")
    with pytest.raises(DataFormatError, match=r"cots.tsv, line 2: expected UTF-8 text"):
        read_teacher_output(bad)


# ------------------------------------------------------------------------------------------ resuming


def test_resume_keeps_an_unterminated_last_record_and_appends_on_a_new_line(tmp_path):
    out = tmp_path / "cots.jsonl"
    teach(Recording(), QUERIES, out, limit=1, show_progress=False)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))  # e.g. hand-edited: the last record lost its newline
    be = Recording()
    s = teach(be, QUERIES, out, show_progress=False)
    assert be.asked == ["2", "3"]  # query 1 is finished: it is not asked again
    assert (s.skipped, s.done) == (1, 2)
    assert [r["query_id"] for r in lines(out)] == ["1", "2", "3"]  # every line parses: one record per line


def test_a_torn_last_line_is_cut_and_its_query_asked_again(tmp_path):
    out = tmp_path / "cots.jsonl"
    teach(Recording(), QUERIES, out, limit=2, show_progress=False)
    data = out.read_bytes()
    out.write_bytes(data[: data.rindex(b'{"query_id": "2"') + 20])  # killed in the middle of writing query 2
    be = Recording()
    s = teach(be, QUERIES, out, show_progress=False)
    assert be.asked == ["2", "3"] and (s.skipped, s.done) == (1, 2)
    assert [r["query_id"] for r in lines(out)] == ["1", "2", "3"]
    assert lines(out)[1]["text"] == "cot of beta"


def test_a_writer_appending_to_an_unterminated_file_starts_a_new_line(tmp_path):
    out = tmp_path / "cots.jsonl"
    out.write_text('{"query_id": "1", "text": "a", "error": null}')
    with CoTWriter(out) as w:
        w.write({"query_id": "2", "text": "b", "error": None})
    assert [r["query_id"] for r in lines(out)] == ["1", "2"]


def test_a_run_where_every_query_failed_pins_no_settings(tmp_path, caplog):
    out = tmp_path / "cots.jsonl"
    with pytest.raises(TeacherFailed):
        teach(Recording(fail=True), QUERIES, out, show_progress=False)
    assert failed_path(out).exists() and config_path(out).exists()
    be = Recording()
    with caplog.at_level(logging.WARNING, logger="radcot"):
        s = teach(be, QUERIES, out, params=GenerationParams(max_tokens=20), show_progress=False)
    assert s.done == 3 and be.asked == ["1", "2", "3"]
    assert "finished no query, so its files are replaced" in caplog.text and "max_tokens" in caplog.text
    assert json.loads(config_path(out).read_text())["params"]["max_tokens"] == 20
    assert not failed_path(out).exists()


def test_a_run_interrupted_before_its_first_answer_pins_no_settings(tmp_path):
    out = tmp_path / "cots.jsonl"
    with pytest.raises(KeyboardInterrupt):
        teach(Recording(interrupt=True), QUERIES, out, show_progress=False)
    assert config_path(out).exists()
    s = teach(Recording(), QUERIES, out, prompt="query2doc", show_progress=False)
    assert s.done == 3 and json.loads(config_path(out).read_text())["prompt_name"] == "query2doc"


def test_a_run_with_records_keeps_its_settings(tmp_path):
    out = tmp_path / "cots.jsonl"
    teach(Recording(), QUERIES, out, limit=1, show_progress=False)
    with pytest.raises(TeacherConfigMismatch, match="'max_tokens': 20"):
        teach(Recording(), QUERIES, out, params=GenerationParams(max_tokens=20), show_progress=False)
    assert [r["query_id"] for r in lines(out)] == ["1"]


# ------------------------------------------------------------------------------------------ argument types


@pytest.mark.parametrize("kwargs, words", [
    ({"queries": ["alpha", "beta"]}, r"queries\[0\] is 'alpha' \(str\); expected a radcot.records.Query"),
    ({"queries": [Query("1", None)]}, r"queries\[0\] \(query_id '1'\) has text None"),
    ({"queries": 42}, r"queries must be Query records or a queries file path"),
    ({"out_path": None}, r"out_path must be a file path"),
    ({"concurrency": "8"}, r"concurrency must be an integer, got '8' \(str\)"),
    ({"limit": 2.5}, r"limit must be an integer or None"),
    ({"max_failed_fraction": "0.5"}, r"max_failed_fraction must be a number"),
    ({"force": "yes"}, r"force must be True or False"),
    ({"params": {"max_tokens": 5}}, r"params must be a GenerationParams"),
    ({"prompt": None}, r"prompt must be a template name"),
    ({"newline": 0}, r"newline must be a string or None"),
])
def test_teach_checks_its_arguments_before_writing(tmp_path, kwargs, words):
    args = {"queries": QUERIES, "out_path": tmp_path / "o.jsonl", **kwargs}
    be = Recording()
    with pytest.raises(TypeError, match=words):
        teach(be, args.pop("queries"), args.pop("out_path"), show_progress=False, **args)
    assert be.asked == [] and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("make, words", [
    (lambda: GenerationParams(max_tokens="150"), r"max_tokens must be an integer, got '150'"),
    (lambda: GenerationParams(temperature="0.7"), r"temperature must be a number, got '0.7'"),
    (lambda: GenerationParams(seed="1"), r"seed must be an integer or None"),
    (lambda: GenerationParams(stop=[1]), r"stop\[0\] must be a string"),
    (lambda: __import__("radcot.teacher", fromlist=["x"]).get_backend(None), r"backend name must be a string"),
    (lambda: _openai(timeout="5"), r"OpenAIBackend: timeout must be a number, got '5'"),
    (lambda: _openai(concurrency="8"), r"OpenAIBackend: concurrency must be an integer"),
    (lambda: _openai(max_connect_failures=0.5), r"max_connect_failures must be an integer"),
    (lambda: _replay(None), r"ReplayBackend: path must be a file path or a list"),
    (lambda: _replay([None]), r"ReplayBackend: path\[0\] must be a file path"),
    (lambda: _hf(batch_size="8"), r"HFBackend: batch_size must be an integer, got '8'"),
    (lambda: _hf(model=5), r"HFBackend: model must be a name, a directory or a .gguf path"),
    (lambda: _hf(chat="no"), r"HFBackend: chat must be True or False or None"),
    (lambda: read_cots(None), r"read_cots: path must be a file path"),
    (lambda: CoTWriter(None), r"CoTWriter: path must be a file path"),
    (lambda: _prompt(None), r"get_prompt: prompt must be a name"),
    (lambda: _prompt("radcot").render(None), r"Prompt.render: query must be the query text"),
    (lambda: _prompt_backend(None), r"PromptBackend: backend must be a TeacherBackend"),
    (lambda: _runner().normalize_text(5), r"normalize_text: text must be a string or None"),
    (lambda: _runner().is_usable("cot text"), r"is_usable: record must be a CoT record"),
    (lambda: _openai_module().parse_retry_after(3), r"parse_retry_after: value must be a string or None"),
    (lambda: _hf_module().text_seed("0", "q"), r"text_seed: seed must be an integer"),
])
def test_public_teacher_api_rejects_wrong_types(make, words):
    with pytest.raises(TypeError, match=words):
        make()


def test_queries_from_ir_datasets_style_records_and_pairs_are_accepted(tmp_path):
    from collections import namedtuple

    GenericQuery = namedtuple("GenericQuery", "query_id text")  # what ir_datasets yields
    be = Recording()
    s = teach(be, [GenericQuery(1, "alpha"), ("2", "beta")], tmp_path / "o.jsonl", show_progress=False)
    assert s.done == 2 and be.asked == ["1", "2"]


def _runner():
    import radcot.teacher.runner as runner

    return runner


def _openai_module():
    import radcot.teacher.openai as openai

    return openai


def _hf_module():
    import radcot.teacher.hf as hf

    return hf


def _openai(**kw):
    from radcot.teacher.openai import OpenAIBackend

    return OpenAIBackend(**{"base_url": "http://127.0.0.1:9/v1", "model": "m", **kw})


def _replay(path):
    from radcot.teacher.replay import ReplayBackend

    return ReplayBackend(path)


def _hf(**kw):
    from radcot.teacher.hf import HFBackend

    return HFBackend(**kw)


def _prompt(p):
    from radcot.teacher.prompts import get_prompt

    return get_prompt(p)


def _prompt_backend(b):
    from radcot.teacher.serve import PromptBackend

    return PromptBackend(b)


def test_teacher_serve_settings_check_their_types():
    pytest.importorskip("fastapi")
    from radcot.serving.teacher_app import TeacherServeSettings

    with pytest.raises(TypeError, match=r"TeacherServeSettings: batch_size must be an integer, got '8'"):
        TeacherServeSettings(batch_size="8")
    with pytest.raises(ValueError, match=r"batch_wait_ms must be >= 0"):
        TeacherServeSettings(batch_wait_ms=-1)
    assert TeacherServeSettings(batch_wait_ms=5).batch_wait_ms == 5

