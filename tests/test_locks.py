"""radcot.locks: a second writer of the same output fails at once, naming the holder; the lock dies with its holder."""
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
    with output_lock(out):  # the kernel dropped the dead holder's lock
        assert lock_path(out).is_file()


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
