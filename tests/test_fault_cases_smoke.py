"""Smoke test of eval/fault_cases.py (issue 9's harness): three of its cases through the harness code."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location("fault_cases", REPO / "eval" / "fault_cases.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fault_cases"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_three_cases_through_the_harness(tmp_path):
    fc = _harness()
    cases = {c.name: c for c in fc.all_cases()}
    assert len(cases) >= 150  # the issue asks for at least 150, across every command
    assert {c.command for c in cases.values()} >= {"index", "search", "evaluate", "teach", "teacher-serve", "build-data",
                                                   "train", "generate", "expand", "run", "table", "make-world"}
    picked = [cases["unknown command"], cases["evaluate run with nan score"],
              cases["make-world again --overwrite (own output)"]]
    ctx = fc.placeholders(tmp_path / "fixtures")
    ctx["QRELS"] = str(REPO / "data" / "demo" / "qrels" / "test.tsv")  # the only fixture these cases read
    results = fc.run_cases(picked, ctx, tmp_path / "cases", jobs=2, log=lambda s: None)
    unknown, nan, twice = results
    assert (unknown.exit, unknown.traceback, unknown.verdict) == (2, False, "ok")
    assert "unknown command 'indx'" in unknown.message
    assert nan.exit == 1 and "finite score" in nan.message and "line 1" in nan.message and nan.verdict == "ok"
    assert twice.exit == 0 and twice.data_ok is True and twice.data_note.startswith("first run exit 0")
    table = fc.markdown(results)
    assert table.count("\n| ") >= 3 and "**3 cases**" in table
    assert json.loads(json.dumps([vars(r) for r in results]))[1]["name"] == "evaluate run with nan score"
    assert list((tmp_path / "cases").iterdir()) == []  # case directories are cleaned up


def test_http_verdicts_client_lines_and_issue_classes():
    """The round-3 machinery: a request's ``http STATUS`` exit (4xx is the answer to a mistake, 200 to a valid
    call), the client's line as the message, ``-k issue26`` / ``-k CLASS`` selection, per-class totals."""
    fc = _harness()
    mistake, valid = fc.Case("m", ["serve"]), fc.Case("v", ["serve"], expect="ok")
    assert fc._verdict(mistake, "http 422", False, None) == "ok"
    assert fc._verdict(mistake, "http 200", False, None) == "wrong exit"  # a wrong type coerced and served
    assert fc._verdict(valid, "http 503", False, None) == "wrong exit"
    assert fc._verdict(valid, "http 200", False, "queued work left") == "wrong data"
    assert fc._verdict(mistake, 1, False, fc.Poor("output does not mention ['k']")) == "poor"  # safe but unclear
    assert fc._verdict(mistake, 0, False, fc.Poor("slow")) == "wrong exit"  # worse than an unclear message
    assert isinstance(fc.both(fc.says("x"), fc.faster_than(1))(None, {}, _result(fc, 2.0)), fc.Poor)
    assert not isinstance(fc.both(fc.says("x"), fc.absent("."))(REPO, {}, _result(fc, 0.1)), fc.Poor)
    out = fc.CLIENT + 'HTTP 422: {"error": {"field": "k"}}\nradcot serve: listening on http://127.0.0.1:1'
    assert fc.message_line(out, "12:00:00 INFO radcot.serving: student loaded") == 'HTTP 422: {"error": {"field": "k"}}'
    assert fc.message_line("", "12:00 WARNING x: ConnectError, retrying\nradcot expand: error: cannot connect") == \
        "radcot expand: error: cannot connect"
    cases = fc.all_cases()
    new = fc.select(cases, ["issue26"])
    assert 60 <= len(new) < len(cases) and all(c.issue for c in new)
    assert {c.issue for c in fc.select(cases, ["readers"])} == {"readers"}
    assert {"serve", "cache", fc.API} <= {c.command for c in new}
    assert len({c.name for c in cases}) == len(cases)  # names are unique (they key the report)
    r = fc.Result("x", "serve", "radcot serve", "fail", "http 422", "m", False, None, "", "ok", 1.0, issue="serve")
    assert "| serve | 1 | 1 |" in fc.totals([r]) and "Cases added for issue 26 (1), by class" in fc.totals([r])


def _result(fc, seconds: float):
    return fc.Result("x", "search", "radcot search", "fail", 1, "m", False, None, "", "", seconds)
