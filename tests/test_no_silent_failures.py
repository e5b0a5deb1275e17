"""Issue 9 class 5: failures never look like success. A backend that fails for (most) queries, empty inputs,
an unset --api-key-env and `train --resume` with nothing to resume all exit non-zero with the cause.
Real processes against a real closed port and a real local OpenAI-compatible server."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from test_teacher_openai import KEY, KEY_ENV, MODEL, FaultServer

from radcot.cli import main
from radcot.cot import failed_path


def _radcot(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "radcot", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.fast
def test_teach_against_a_server_that_is_down_stops_and_says_why(tmp_path):
    queries, out = tmp_path / "q.tsv", tmp_path / "cots.jsonl"
    queries.write_text("".join(f"{i}\tquery {i}\n" for i in range(40)), encoding="utf-8")
    proc = _radcot("teach", "--backend", "openai", "--base-url", f"http://127.0.0.1:{_closed_port()}/v1",
                   "--model", "m", "--max-attempts", "1", "--concurrency", "2", "--queries", str(queries),
                   "--out", str(out), "--no-progress")
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()[-1]
    assert "cannot connect to the teacher endpoint" in err and "Connection refused" in err
    assert "radcot teacher-serve --port" in err and "rerun the same command" in err
    assert "Traceback" not in proc.stderr
    failed = [json.loads(line) for line in failed_path(out).read_text().splitlines()]
    assert 1 <= len(failed) <= 4  # stopped at the 3rd refused connection, not after 10 answers or all 40
    assert not out.exists() or out.read_text() == ""


def test_teach_with_some_failures_exits_1_naming_the_last_error(tmp_path):
    server = FaultServer()
    try:
        queries, out = tmp_path / "q.tsv", tmp_path / "cots.jsonl"
        queries.write_text("".join(f"{i}\tquery {i}{' [dead]' if i == 3 else ''}\n" for i in range(12)))
        args = ("teach", "--backend", "openai", "--base-url", server.base_url, "--model", MODEL, "--api-key-env",
                KEY_ENV, "--max-attempts", "1", "--prompt", "Q: {query}", "--queries", str(queries), "--out",
                str(out), "--no-progress")
        proc = _radcot(*args, env={KEY_ENV: KEY})
        assert proc.returncode == 1
        assert "1 of 12 queries failed (last error:" in proc.stderr and "HTTP 503" in proc.stderr
        server.dead = False
        proc = _radcot(*args, env={KEY_ENV: KEY})  # the retry finishes the query: success
        assert proc.returncode == 0 and "1 done, 11 already done" in proc.stdout
    finally:
        server.close()


@pytest.mark.parametrize("argv", [
    ["teach", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--queries", "{empty}",
     "--out", "{tmp}/c.jsonl"],
    ["expand", "--cots", "{cots}", "--queries", "{empty}", "--out", "{tmp}/e.tsv"],
    ["search", "--index", "{tmp}", "--queries", "{empty}", "--run", "{tmp}/r.trec"],
])
@pytest.mark.fast
def test_empty_queries_are_an_error(tmp_path, argv, capsys):
    empty, cots = tmp_path / "empty.tsv", tmp_path / "c.tsv"
    empty.write_text("", encoding="utf-8")
    cots.write_text("1\tx\n", encoding="utf-8")
    subst = {"{empty}": str(empty), "{cots}": str(cots)}
    assert main([subst.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]) == 1
    err = capsys.readouterr().err
    assert "no queries" in err and "Traceback" not in err
    assert not any(p.name in ("c.jsonl", "e.tsv", "r.trec") and p.stat().st_size for p in tmp_path.iterdir())


@pytest.mark.fast
def test_expand_with_no_usable_cot_writes_nothing(tmp_path, capsys):
    queries, cots, out = tmp_path / "q.tsv", tmp_path / "c.tsv", tmp_path / "e.tsv"
    queries.write_text("1\tab\n2\tcd\n3\tef\n", encoding="utf-8")
    cots.write_text("77\tcot for another query\n", encoding="utf-8")
    assert main(["expand", "--cots", str(cots), "--queries", str(queries), "--out", str(out)]) == 1
    assert "3 of 3 queries got no usable CoT" in capsys.readouterr().err and not out.exists()
    cots.write_text("1\tcot one\n", encoding="utf-8")  # 2 of 3 missing > 0.5, unless the user allows it
    assert main(["expand", "--cots", str(cots), "--queries", str(queries), "--out", str(out)]) == 1
    assert main(["expand", "--cots", str(cots), "--queries", str(queries), "--out", str(out),
                 "--max-unexpanded-fraction", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unexpanded"] == 2


@pytest.mark.fast
def test_unset_api_key_env_is_a_usage_error(tmp_path):
    proc = _radcot("teach", "--backend", "openai", "--api-key-env", "RADCOT_TEST_UNSET_VARIABLE", "--queries",
                   str(tmp_path / "q.tsv"), "--out", str(tmp_path / "c.jsonl"),
                   env={"RADCOT_TEST_UNSET_VARIABLE": ""})
    assert proc.returncode == 2
    assert "RADCOT_TEST_UNSET_VARIABLE is not set" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.fast
def test_train_resume_with_nothing_to_resume(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "d"), "--model", "tiny-t5", "--out", str(tmp_path / "run"),
                 "--resume"]) == 1
    err = capsys.readouterr().err
    assert "nothing to resume" in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, text, expected", [
    ("c.yaml", "a: [1\n", "c.yaml:2: not valid YAML"),
    ("c.json", "{\"lr\": 1e-3,\n", "c.json:2: not valid JSON"),
    ("c.yaml", "- lr\n- 3\n", "expected a mapping of TrainConfig fields"),
])
def test_train_config_file_errors_name_file_and_line(tmp_path, capsys, name, text, expected):
    (tmp_path / name).write_text(text, encoding="utf-8")
    assert main(["train", "--config", str(tmp_path / name), "--data", str(tmp_path / "d"), "--model", "tiny-t5",
                 "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.fast
def test_teacher_backend_missing_argument_is_one_line(tmp_path, capsys):
    (tmp_path / "q.tsv").write_text("1\twhere was it\n", encoding="utf-8")
    assert main(["expand", "--teacher", "kb", "--queries", str(tmp_path / "q.tsv"),
                 "--out", str(tmp_path / "e.tsv")]) == 1
    err = capsys.readouterr().err
    assert "teacher backend 'kb': missing a required argument: 'world'" in err and "Traceback" not in err
    assert not (tmp_path / "e.tsv").exists()
