"""No hidden sidecar outlives a command (#23): radcot's record of what it wrote lives in its state directory,
keyed by the real path and the file's identity; locks vanish with their holder. Both guarantees stay: one
writer per output, and only radcot's own unchanged outputs are replaced (with --overwrite)."""
from __future__ import annotations

import pytest

from radcot.cli._args import OutputExistsError, check_output, mark_output, marker_path


@pytest.fixture(autouse=True)
def _state(tmp_path, monkeypatch):
    monkeypatch.setenv("RADCOT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("RADCOT_CACHE", str(tmp_path / "cache"))


def _entries(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.fast
def test_the_record_of_an_output_is_not_beside_it(tmp_path):
    out = tmp_path / "runs" / "bm25.trec"
    out.parent.mkdir()
    out.write_text("1 Q0 d 1 1.0 t\n")
    mark_output(out, "search")
    assert _entries(out.parent) == ["bm25.trec"]
    assert marker_path(out).is_file() and (tmp_path / "state") in marker_path(out).parents
    with pytest.raises(OutputExistsError, match="already exists .* pass --overwrite"):
        check_output(out, False, "run file")
    check_output(out, True, "run file")  # radcot's own: may be replaced


@pytest.mark.fast
def test_an_output_changed_since_radcot_wrote_it_is_not_replaced(tmp_path):
    out = tmp_path / "bm25.trec"
    out.write_text("1 Q0 d 1 1.0 t\n")
    mark_output(out, "search")
    with open(out, "a") as f:
        f.write("my own line\n")
    with pytest.raises(OutputExistsError, match="radcot did not write .*changed or replaced since"):
        check_output(out, True, "run file")


@pytest.mark.fast
def test_an_output_reached_through_a_symlink_is_recognised(tmp_path):
    out = tmp_path / "real" / "bm25.trec"
    out.parent.mkdir()
    out.write_text("x\n")
    mark_output(out, "search")
    link = tmp_path / "alias"
    link.symlink_to(out.parent)
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(link / "bm25.trec", False, "run file")
    check_output(link / "bm25.trec", True, "run file")


@pytest.mark.fast
def test_a_marker_left_by_an_older_radcot_is_honoured_then_removed(tmp_path):
    out = tmp_path / "bm25.trec"
    out.write_text("x\n")
    (tmp_path / ".bm25.trec.radcot").write_text("{}\n")
    check_output(out, True, "run file")
    mark_output(out, "search")
    assert _entries(tmp_path) == ["bm25.trec", "state"]


@pytest.mark.fast
def test_a_file_nobody_recorded_is_never_replaced(tmp_path):
    out = tmp_path / "mine.trec"
    out.write_text("x\n")
    with pytest.raises(OutputExistsError, match="radcot did not write; radcot never replaces"):
        check_output(out, True, "run file")


@pytest.mark.fast
def test_outputs_get_the_permissions_the_umask_gives(tmp_path):
    """Files and directories written atomically (runs, CoT configs, indexes, students) were private to their
    owner (mkstemp's 0600, mkdtemp's 0700) whatever the umask: a colleague on a shared server could not read them."""
    import os
    import stat

    from radcot.utils import atomic_dir, atomic_write

    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "run.trec") as f:
            f.write("1 Q0 d 1 1.0 t\n")
        with atomic_dir(tmp_path / "index") as d:
            (d / "segments_1").write_text("x")
        os.umask(0o077)
        with atomic_write(tmp_path / "private.trec") as f:
            f.write("1 Q0 d 1 1.0 t\n")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"run.trec": 0o644, "index": 0o755, "private.trec": 0o600}
    from radcot.utils import umask

    assert umask() == old  # read without changing it


WRITER = """
import sys, time
from radcot.utils import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write("half a run" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.fast
def test_a_write_killed_midway_leaves_nothing_after_the_next_write(tmp_path):
    """A process SIGKILLed inside atomic_write (radcot search killed while writing its run) left its hidden
    .run.trec.XXXX.tmp beside the run for good; the next write of that file removes it (its PID is gone)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from radcot.utils import atomic_write

    out = tmp_path / "run.trec"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "writing"  # inside the write
    child.kill()
    child.wait()
    assert [p for p in _entries(tmp_path) if p.endswith(".tmp")]  # what the killed writer left
    live = tmp_path / f".run.trec.{os.getpid()}-live.tmp"  # a live writer's temp file is never touched
    live.write_text("x")
    with atomic_write(out) as f:
        f.write("1 Q0 d 1 1.0 t\n")
    assert _entries(tmp_path) == [live.name, "run.trec"] and out.read_text() == "1 Q0 d 1 1.0 t\n"


@pytest.mark.java
def test_index_search_evaluate_leave_only_their_outputs(cranfield, tmp_path, capsys):
    from radcot.cli import main

    work = tmp_path / "work"
    work.mkdir()
    head = work / "corpus.jsonl"
    with open(cranfield / "corpus.jsonl", encoding="utf-8") as src:
        head.write_text("".join(next(src) for _ in range(50)))
    queries = work / "q.tsv"
    queries.write_text("1\tboundary layer\n2\twing flutter\n")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["index", "--collection", str(head), "--index", str(out / "idx"), "--no-progress"]) == 0
    assert _entries(out) == ["idx"]
    assert main(["index", "--collection", str(head), "--index", str(out / "idx"), "--no-progress"]) == 0  # reused
    assert _entries(out) == ["idx"]
    run = out / "bm25.trec"
    assert main(["search", "--index", str(out / "idx"), "--queries", str(queries), "--run", str(run),
                 "--no-progress"]) == 0
    assert _entries(out) == ["bm25.trec", "idx"]
    assert main(["search", "--index", str(out / "idx"), "--queries", str(queries), "--run", str(run)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["search", "--index", str(out / "idx"), "--queries", str(queries), "--run", str(run),
                 "--overwrite", "--no-progress"]) == 0
    qrels = work / "qrels.txt"
    qrels.write_text("1 0 1 1\n")
    assert main(["evaluate", "--qrels", str(qrels), "--run", str(run), "--metrics", "nDCG@10"]) == 0
    assert _entries(out) == ["bm25.trec", "idx"] and _entries(work) == ["corpus.jsonl", "q.tsv", "qrels.txt"]
