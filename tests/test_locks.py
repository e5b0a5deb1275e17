"""radcot.locks: a second writer of the same output fails at once, naming the holder; the lock dies with its holder,
is taken on the output's identity (links resolved), and leaves no file behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from radcot.locks import OutputLockedError, lock_path, output_lock

pytestmark = pytest.mark.fast

HOLD = """
import sys, time
from radcot.locks import output_lock
with output_lock(sys.argv[1], "teacher output"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(out):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_with_pid_and_lock_path(tmp_path):
    out = tmp_path / "cot.jsonl"
    proc = _holder(out)
    try:
        with pytest.raises(OutputLockedError) as e:
            with output_lock(out, "teacher output"):
                pass
        msg = str(e.value)
        assert f"PID {proc.pid}" in msg and str(lock_path(out)) in msg and "teacher output" in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_released_when_holder_is_killed(tmp_path):
    out = tmp_path / "run-dir"
    proc = _holder(out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_path(out).is_file()  # kill -9 leaves the file, but not the lock
    with output_lock(out):  # the kernel dropped the dead holder's lock
        assert lock_path(out).is_file()
    assert not lock_path(out).exists()  # the rerun cleaned up after the killed writer


@pytest.mark.parametrize("ending", ["normal", "error"])
def test_no_lock_file_is_left_beside_the_output(tmp_path, ending):
    out = tmp_path / "runs" / "bm25.trec"
    with pytest.raises(RuntimeError) if ending == "error" else _nothing():
        with output_lock(out, "run file"):
            out.write_text("x\n")
            if ending == "error":
                raise RuntimeError("boom")
    assert sorted(p.name for p in out.parent.iterdir()) == ["bm25.trec"]


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_second_writer_through_a_symlink_is_refused(tmp_path):
    real = tmp_path / "data" / "cot.jsonl"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "link-to-cot.jsonl"
    link.symlink_to(real)
    dir_link = tmp_path / "data-link"
    dir_link.symlink_to(real.parent)
    proc = _holder(real)
    try:
        for alias in (link, dir_link / "cot.jsonl", tmp_path / "data" / ".." / "data" / "cot.jsonl"):
            with pytest.raises(OutputLockedError, match=f"PID {proc.pid}"):
                with output_lock(alias, "teacher output"):
                    pass
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_file_deleted_by_its_releasing_holder_is_not_the_lock(tmp_path):
    from radcot.locks import _same_file

    path = lock_path(tmp_path / "out")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)  # a writer opened it just before the holder released it ...
    try:
        assert _same_file(fd, path)
        os.unlink(path)  # ... and the holder deleted it: locking this descriptor would lock nothing
        assert not _same_file(fd, path)
        with output_lock(tmp_path / "out"):  # the next writer locks the file now at the path
            assert path.is_file()
    finally:
        os.close(fd)


def test_sequential_writers_in_one_process(tmp_path):
    out = tmp_path / "a" / "b.tsv"  # parent created
    with output_lock(out):
        pass
    with output_lock(out):
        pass
    assert lock_path(out).parent == out.parent


CHILD = """
import sys
from radcot.locks import output_lock
with output_lock(sys.argv[1], "training run", inherit=True):
    print("child wrote", flush=True)
"""


def test_inherited_lock_lets_launched_workers_write_but_no_one_else(tmp_path):
    out = tmp_path / "run"
    with output_lock(out, "training run", inherit=True):
        # a worker started inside the block (as a multi-process launch does) shares the lock
        child = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, timeout=60)
        assert child.returncode == 0 and "child wrote" in child.stdout, child.stderr
        # a process that did not inherit it is refused
        env = {k: v for k, v in os.environ.items() if k != "RADCOT_HELD_LOCKS"}
        other = subprocess.run([sys.executable, "-c", CHILD, str(out)], capture_output=True, text=True, timeout=60,
                               env=env)
        assert other.returncode != 0 and f"PID {os.getpid()}" in other.stderr
    assert "RADCOT_HELD_LOCKS" not in os.environ or str(lock_path(out)) not in os.environ["RADCOT_HELD_LOCKS"]
