"""The stage store: DONE.json vouches for every output; changed outputs rerun; one builder per stage."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from radcot.experiment.store import (ChangedOutputError, StageError, StageStore, outputs_digest, stage_key,
                                    verify_outputs, verify_run_file)

KEY = stage_key("search", 1, {"k": 10}, {})


def _builder(calls: list, text: str = "1\t0\td1\t1\t2.0\trun\n"):
    def build(d: Path):
        calls.append(d)
        (d / "run.trec").write_text(text)
        (d / "sub").mkdir(exist_ok=True)
        (d / "sub" / "w.bin").write_bytes(b"\0" * 100)
    return build


@pytest.mark.fast
def test_done_records_every_output_and_reuse_is_verified(tmp_path, caplog):
    store, calls = StageStore(tmp_path), []
    d, record, reused = store.run("search-bm25", KEY, _builder(calls))
    assert not reused and len(calls) == 1
    outs = json.loads((d / "DONE.json").read_text())["outputs"]
    assert set(outs) == {"run.trec", "sub/w.bin"} and outs["sub/w.bin"]["size"] == 100
    assert len(outs["run.trec"]["sha256"]) == 64 and record["radcot"]

    assert store.run("search-bm25", KEY, _builder(calls))[2] is True and len(calls) == 1
    # same bytes, new mtime: the checksum clears it (fast path only skips hashing when size+mtime match)
    os.utime(d / "run.trec", ns=(1, 1))
    assert verify_outputs(d) == [] and store.run("search-bm25", KEY, _builder(calls))[2] is True

    # truncated: rerun, logged, never "cached"
    (d / "run.trec").write_text("1\t0\td1")
    with caplog.at_level(logging.WARNING, logger="radcot.pipeline"):
        assert store.run("search-bm25", KEY, _builder(calls))[2] is False
    assert "outputs changed: run.trec (size" in caplog.text and len(calls) == 2
    # same size, other content
    (d / "run.trec").write_text("1\t0\td2\t1\t2.0\trun\n")
    assert verify_outputs(d) == ["run.trec (content changed, same size)"]
    assert store.run("search-bm25", KEY, _builder(calls))[2] is False and len(calls) == 3
    # deleted: rebuilt
    (d / "sub" / "w.bin").unlink()
    assert store.run("search-bm25", KEY, _builder(calls))[2] is False and (d / "sub" / "w.bin").is_file()
    # a torn DONE.json: not finished
    (d / "DONE.json").write_text('{"outputs": {')
    assert verify_outputs(d) == ["DONE.json (unreadable)"]
    assert store.run("search-bm25", KEY, _builder(calls))[2] is False and len(calls) == 5


@pytest.mark.fast
def test_the_stage_key_is_content_not_radcots_version(monkeypatch):
    """A radcot version bump keeps every key (it reran every cached stage, 50k-step training included); the stage's
    own format version, config and upstream content change it."""
    import radcot

    before = stage_key("train", 1, {"lr": 1e-4}, {"data": "d1"})
    monkeypatch.setattr(radcot, "__version__", "99.0.0")
    assert stage_key("train", 1, {"lr": 1e-4}, {"data": "d1"}) == before
    assert stage_key("train", 2, {"lr": 1e-4}, {"data": "d1"}) != before
    assert stage_key("train", 1, {"lr": 3e-4}, {"data": "d1"}) != before
    assert stage_key("train", 1, {"lr": 1e-4}, {"data": "d2"}) != before
    assert stage_key("generate", 1, {"lr": 1e-4}, {"data": "d1"}) != before


@pytest.mark.fast
def test_outputs_digest_is_what_the_outputs_are_not_where(tmp_path):
    """Two stages with the same files at other paths (and other mtimes) have one digest; other bytes another."""
    a, _, _ = StageStore(tmp_path / "one").run("data-x", "aaaa", _builder([]))
    b, _, _ = StageStore(tmp_path / "two").run("data-y", "bbbb", _builder([]))
    os.utime(b / "run.trec", ns=(5, 5))
    assert outputs_digest(a) == outputs_digest(b) and outputs_digest(a)
    c, _, _ = StageStore(tmp_path / "three").run("data-x", "aaaa", _builder([], "1\t0\td2\t1\t2.0\trun\n"))
    assert outputs_digest(c) != outputs_digest(a)
    assert outputs_digest(tmp_path / "nowhere") is None


@pytest.mark.fast
@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "", "x y"])
def test_a_stage_outside_its_root_is_refused(tmp_path, name):
    store = StageStore(tmp_path / "runs" / "exp")
    with pytest.raises(StageError, match="outside|not inside"):
        store.path(name, "0123")
    assert not (tmp_path / "runs").exists()


@pytest.mark.fast
def test_verify_run_file_refuses_a_changed_run(tmp_path):
    d, _, _ = StageStore(tmp_path).run("search-bm25", KEY, _builder([]))
    verify_run_file(d / "run.trec")
    (d / "run.trec").write_text("1\t0\td1\t1\t9.0\trun\n")
    with pytest.raises(ChangedOutputError, match=r"run file .*run.trec changed since its stage finished.*radcot run"):
        verify_run_file(d / "run.trec")
    other = tmp_path / "mine.trec"  # a file no stage vouches for is not checked
    other.write_text("x")
    verify_run_file(other)


_CONCURRENT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from radcot.experiment.store import StageStore

    def build(d):
        with open(Path(sys.argv[1]) / "builds.log", "a") as f:
            f.write(f"{d.name}\\n")
        time.sleep(2.0)
        (d / "model.bin").write_bytes(b"weights")

    d, record, reused = StageStore(Path(sys.argv[1]) / "_shared", wait=True).run("train", "0123abcd", build)
    print("reused" if reused else "built", flush=True)
""")


def test_two_processes_build_a_shared_stage_once(tmp_path):
    """Two real processes ask for the same shared stage: one builds, the other waits and reuses it."""
    script = tmp_path / "worker.py"
    script.write_text(_CONCURRENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["built", "reused"]
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1


@pytest.mark.fast
def test_an_experiments_own_stage_fails_at_once_when_another_process_builds_it(tmp_path):
    from radcot.locks import OutputLockedError, output_lock

    store = StageStore(tmp_path)
    with output_lock(store.path("search-bm25", KEY)):
        with pytest.raises(OutputLockedError, match="stage search-bm25"):
            store.run("search-bm25", KEY, _builder([]))


@pytest.mark.fast
def test_radcot_table_refuses_a_changed_run_file(tmp_path):
    """`radcot table` on an experiment whose cached run.trec was edited: exit 1, one line, no traceback."""
    qrels = tmp_path / "qrels.txt"
    qrels.write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 1\n")
    exp = tmp_path / "runs" / "exp"

    def build(d: Path):
        (d / "run.trec").write_text("q1 Q0 d1 1 3.0 bm25\nq1 Q0 d2 2 2.0 bm25\nq2 Q0 d3 1 1.0 bm25\n")

    d, _, _ = StageStore(exp).run("search-bm25", KEY, build)
    (exp / "manifest.json").write_text(json.dumps({
        "experiment": "exp", "inputs": {"qrels": str(qrels), "dataset": "tiny"},
        "evaluation": {"metrics": ["nDCG@10"], "baseline": "bm25"},
        "rows": [{"name": "bm25", "label": "BM25", "run": str(d / "run.trec")}]}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                        os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "radcot", "table", str(exp), "--report", "none"]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "| BM25 | 1.0000 |" in ok.stdout, ok.stderr
    (d / "run.trec").write_text("q1 Q0 d2 1 3.0 bm25\nq1 Q0 d1 2 2.0 bm25\nq2 Q0 d3 1 1.0 bm25\n")  # reordered
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "changed since its stage finished (run.trec (content changed, same size))" in bad.stderr
