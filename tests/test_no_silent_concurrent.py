"""Issue 9 class 1: one writer per output, and readers that refuse a query answered twice.

Two real `radcot teach` processes on one --out (the second fails at once naming the first's PID; the
output holds each query once), real lock holders against `radcot build-data`/`index`/`search`, and the
CoT readers on files with a duplicated query id.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_teacher_openai import KEY, KEY_ENV, MODEL, FaultServer

from radcot.cot import CoTRecord, CoTWriter, read_cots
from radcot.locks import lock_path
from radcot.records import DataFormatError
from radcot.teacher import read_teacher_output

HOLD = """
import sys, time
from radcot.locks import output_lock
with output_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _radcot(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "radcot", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})}, **kw)


def _teach_args(server: FaultServer, queries: Path, out: Path) -> list[str]:
    return ["teach", "--backend", "openai", "--base-url", server.base_url, "--model", MODEL, "--api-key-env", KEY_ENV,
            "--prompt", "Q: {query}", "--queries", str(queries), "--out", str(out), "--concurrency", "2",
            "--no-progress"]


def test_two_teach_processes_one_output(tmp_path):
    server = FaultServer()
    try:
        queries = tmp_path / "q.tsv"
        queries.write_text("".join(f"{i}\tquery number {i}\n" for i in range(40)), encoding="utf-8")
        out = tmp_path / "cots.jsonl"
        env = {KEY_ENV: KEY}
        # the server pauses (its requests wait in the listen queue) until the second run has been refused: the
        # first run is still inside its work then however slowly either process starts (issue #26)
        server.httpd.shutdown()
        first = _radcot(*_teach_args(server, queries, out), env=env)
        deadline = time.monotonic() + 60
        while not (lock_path(out).exists() and lock_path(out).read_text().startswith(f"{first.pid} ")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        t0 = time.monotonic()
        second = _radcot(*_teach_args(server, queries, out), env=env)
        try:
            _, err2 = second.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            second.kill()
            pytest.fail("the second run was not refused: it waits for the paused server as the first does")
        assert first.poll() is None, "the first run should still be running when the second is refused"
        assert second.returncode == 1 and time.monotonic() - t0 < 30
        assert f"PID {first.pid}" in err2 and str(lock_path(out)) in err2 and "Traceback" not in err2
        threading.Thread(target=server.httpd.serve_forever, daemon=True).start()  # the server answers again
        _, err1 = first.communicate(timeout=120)
        assert first.returncode == 0, err1
        ids = [json.loads(line)["query_id"] for line in out.read_text(encoding="utf-8").splitlines()]
        assert sorted(ids, key=int) == [str(i) for i in range(40)]  # each query exactly once
        assert sum(server.answered.values()) == 40
        again = _radcot(*_teach_args(server, queries, out), env=env)
        out3, err3 = again.communicate(timeout=60)
        assert again.returncode == 0 and "0 done, 40 already done" in out3, err3
    finally:
        server.close()


@pytest.mark.parametrize("argv", [
    ["build-data", "--queries", "Q", "--teacher-out", "C", "--index", "I", "--out", "{out}"],
    ["index", "--collection", "C", "--index", "{out}"],
    ["search", "--index", "{index}", "--queries", "{queries}", "--run", "{out}"],  # inputs are read before the lock
    ["expand", "--cots", "C", "--queries", "Q", "--out", "{out}"],
    ["train", "--data", "D", "--model", "tiny-t5", "--out", "{out}"],
])
@pytest.mark.fast
def test_commands_refuse_an_output_another_process_writes(tmp_path, argv):
    out = tmp_path / "output"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / "q.tsv").write_text("1\tan existing query\n")  # search reads its inputs first
        (tmp_path / "I").mkdir()
        (tmp_path / "I" / "segments_1").write_bytes(b"")  # what makes a directory a Lucene index to index_kind
        fill = {"{out}": str(out), "{queries}": str(tmp_path / "q.tsv"), "{index}": str(tmp_path / "I")}
        proc = _radcot(*[fill.get(a, a) for a in argv])
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert f"PID {holder.pid}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.fast
def test_readers_refuse_a_query_finished_twice(tmp_path):
    out = tmp_path / "cots.jsonl"
    with CoTWriter(out) as w:
        w.write([CoTRecord("1", "q1", "first"), CoTRecord("2", "q2", "two"), CoTRecord("1", "q1", "again")])
    with pytest.raises(DataFormatError, match=r"line 3.*query id '1' again \(first on line 1\)"):
        read_teacher_output(out)
    with pytest.raises(DataFormatError, match="line 3"):
        read_cots(out)
    queries = tmp_path / "q.tsv"
    queries.write_text("1\tq1\n2\tq2\n", encoding="utf-8")
    proc = _radcot("expand", "--cots", str(out), "--queries", str(queries), "--out", str(tmp_path / "e.tsv"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "line 3" in err and "Traceback" not in err
    assert not (tmp_path / "e.tsv").exists()


@pytest.mark.fast
def test_a_failure_then_a_success_is_one_record(tmp_path):
    """A merged file may carry a query's failure and its later success: the success wins, no error."""
    out = tmp_path / "cots.jsonl"
    with CoTWriter(out) as w:
        w.write([CoTRecord("1", "q1", None, error="HTTP 503"), CoTRecord("1", "q1", "ok"),
                 CoTRecord("2", "q2", None, error="HTTP 503")])
    recs = read_cots(out)
    assert recs["1"]["text"] == "ok" and recs["2"]["error"] == "HTTP 503"


@pytest.mark.fast
def test_cot_record_round_trip():
    rec = CoTRecord("7", "q", "text", params={"k": 1}, extra={"doc_ids": ["a"]})
    d = rec.to_dict()
    assert d["doc_ids"] == ["a"] and d["empty"] is False and "extra" not in d
    assert CoTRecord.from_dict(d) == rec
    assert CoTRecord("8", "q", "  ").empty is True and CoTRecord("9", error="x").empty is None


@pytest.mark.fast
def test_generate_refuses_a_busy_output_before_loading_the_student(tmp_path):
    out = tmp_path / "student-cots.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _radcot("generate", "--student", str(tmp_path / "not-loaded"), "--queries", "Q", "--out", str(out))
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and f"PID {holder.pid}" in err and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
