"""An interrupted `radcot index` leaves no temporary copy of the collection or half-written index behind
(issue 9 class 4): real `python -m radcot index` processes sent SIGINT and SIGTERM mid-build, and SIGKILL
followed by a rebuild that removes what the killed build left."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.java, pytest.mark.slow]

COPIES = 4  # of Vaswani (11,429 docs each): indexing takes long enough to be interrupted on any machine


@pytest.fixture(scope="module")
def big_collection(vaswani, tmp_path_factory) -> Path:
    """A JsonCollection of several renamed copies of Vaswani."""
    from radcot.data.readers import read_corpus

    out = tmp_path_factory.mktemp("coll") / "docs.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for c in range(COPIES):
            for d in read_corpus(vaswani):
                f.write(json.dumps({"id": f"{c}-{d.doc_id}", "contents": d.text}) + "\n")
    return out


def _start_index(collection: Path, index: Path) -> subprocess.Popen:
    env = {**os.environ, "RADCOT_JAVA_HEAP": "1g"}
    return subprocess.Popen([sys.executable, "-m", "radcot", "index", "--collection", str(collection),
                             "--index", str(index), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _leftovers(index: Path) -> list[str]:
    """Temporary files/dirs beside ``index``; not its ``.<name>.lock`` (a SIGKILLed writer cannot delete its lock
    file; the next writer takes it over and deletes it: radcot.locks)."""
    from radcot.locks import lock_path

    return sorted(p.name for p in index.parent.iterdir()
                  if p.name.startswith(f".{index.name}.") and p != lock_path(index))


def _wait_for(index: Path, marker: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until a temp dir whose name contains ``marker`` exists beside ``index``."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(marker in n for n in _leftovers(index)):
            return
        if proc.poll() is not None:
            pytest.fail(f"radcot index ended (rc {proc.returncode}) before {marker!r} appeared: {proc.stderr.read()[-500:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no {marker!r} temp dir after {timeout} s")


@pytest.mark.parametrize("sig,phase", [(signal.SIGINT, "jsoncoll"), (signal.SIGINT, ".tmp"),
                                       (signal.SIGTERM, "jsoncoll"), (signal.SIGTERM, ".tmp")])
def test_interrupted_index_removes_its_temp_dirs(big_collection, tmp_path, sig, phase):
    """Signal while the collection is copied (jsoncoll) or while Lucene writes the index (.tmp)."""
    index = tmp_path / "idx"
    proc = _start_index(big_collection, index)
    _wait_for(index, phase, proc)
    if phase == ".tmp":
        time.sleep(0.5)  # Lucene is writing segments
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "the build finished before the signal: make the collection bigger"
    assert "interrupted" in err, err[-800:]
    assert _leftovers(index) == [] and not index.exists()


def test_killed_build_leftovers_removed_by_the_next_build(big_collection, cranfield, tmp_path):
    """SIGKILL cannot be cleaned up; the next build of the same index removes the dead build's temp dirs."""
    from radcot.retrieval.process import remove_stale_build_dirs
    from radcot.retrieval.bm25 import BM25Retriever

    index = tmp_path / "idx"
    proc = _start_index(big_collection, index)
    _wait_for(index, ".tmp", proc)
    proc.kill()
    proc.wait(timeout=60)
    left = _leftovers(index)
    assert any("jsoncoll" in n for n in left) and any(n.endswith(".tmp") for n in left), left
    # a foreign hidden dir of a similar name, and a live process's temp dir, are never touched
    foreign = tmp_path / ".idx.backup"
    foreign.mkdir()
    live = tmp_path / f".idx.jsoncoll-{os.getppid()}-abc"
    live.mkdir()
    r = BM25Retriever.build(cranfield, index, show_progress=False)
    assert sorted(_leftovers(index)) == sorted([".idx.backup", live.name])
    assert r.num_docs == 1398
    live.rmdir()
    assert remove_stale_build_dirs(index) == []


def test_failed_build_removes_its_temp_dirs(tmp_path):
    """Any exception during a build (here: an empty collection) leaves nothing beside the index."""
    from radcot.records import DataFormatError
    from radcot.retrieval.bm25 import BM25Retriever

    with pytest.raises(DataFormatError, match="at least one document"):
        BM25Retriever.build([], tmp_path / "idx", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_handler_is_restored(tmp_path):
    from radcot.retrieval.process import sigterm_as_interrupt

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
