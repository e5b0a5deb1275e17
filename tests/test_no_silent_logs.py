"""Issue 9 class 8: progress never floods a log. When stderr is not a terminal, bars become a log line every
~10 s or 10% (no carriage-return redraws); on a terminal they stay tqdm bars."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from radcot.utils import LogProgress, progress


def test_teach_into_a_log_file_writes_periodic_lines_not_redraws(tmp_path):
    queries, cots = tmp_path / "q.tsv", tmp_path / "c.tsv"
    queries.write_text("".join(f"{i}\tquery {i}\n" for i in range(500)), encoding="utf-8")
    cots.write_text("".join(f"{i}\tcot {i}\n" for i in range(500)), encoding="utf-8")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:  # stderr is a file: not a TTY
        proc = subprocess.run([sys.executable, "-m", "radcot", "teach", "--backend", "replay", "--replay-file",
                               str(cots), "--queries", str(queries), "--out", str(tmp_path / "o.jsonl")],
                              stdout=subprocess.PIPE, stderr=f, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b[" not in text
    lines = [ln for ln in text.splitlines() if "teacher replay:" in ln and " q (" in ln]
    assert 2 <= len(lines) <= 12, text  # every 10%, not every query
    assert re.search(r"teacher replay: 500/500 q \(100%\)", lines[-1])
    assert len(text) < 4000


@pytest.mark.fast
def test_log_progress_every_tenth_and_on_close(caplog):
    with caplog.at_level(logging.INFO, logger="radcot"):
        bar = LogProgress(total=100, desc="work", unit="doc", interval_s=3600)
        for _ in range(100):
            bar.update(1)
            bar.set_postfix(failed=0)
        bar.close()
        bar.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 10 and msgs[0].startswith("work: 10/100 doc (10%)") and "[failed=0]" in msgs[0]
    assert msgs[-1].startswith("work: 100/100 doc (100%)")


@pytest.mark.fast
def test_log_progress_by_time_without_total(caplog, monkeypatch):
    clock = iter(range(0, 1000, 4))
    monkeypatch.setattr("radcot.utils.time.monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="radcot"):
        for _ in LogProgress((i for i in range(5)), desc="scan", interval_s=10):
            pass
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs and all(m.startswith("scan: ") for m in msgs) and msgs[-1].startswith("scan: 5 it")
    assert len(msgs) < 5  # not one per item


@pytest.mark.fast
def test_progress_chooses_by_tty_and_flag(monkeypatch, caplog):
    monkeypatch.setattr("radcot.utils._stderr_is_tty", lambda: False)
    assert isinstance(progress(range(3), show_progress=True), LogProgress)
    with caplog.at_level(logging.INFO, logger="radcot"):
        assert list(progress(range(3), desc="off", show_progress=False)) == [0, 1, 2]
    assert not [r for r in caplog.records if r.getMessage().startswith("off")]
    monkeypatch.setattr("radcot.utils._stderr_is_tty", lambda: True)
    from tqdm.auto import tqdm

    bar = progress(total=3, show_progress=True)
    assert isinstance(bar, tqdm)
    bar.close()


@pytest.mark.java
def test_index_and_search_into_a_log_file_write_periodic_lines_not_redraws(demo_world, tmp_path):
    """`radcot index` (writing the JsonCollection) and `radcot search` (the BM25 bar) go through radcot's progress
    helper: with stderr a file, a few log lines with counts, no carriage returns."""
    log = tmp_path / "log.txt"
    commands = [["index", "--collection", str(demo_world), "--index", str(tmp_path / "idx")],
                ["search", "--index", str(tmp_path / "idx"), "--queries", str(demo_world / "queries.jsonl"),
                 "--run", str(tmp_path / "run.trec"), "--k", "10", "--threads", "2"]]
    with open(log, "w") as f:
        for cmd in commands:
            proc = subprocess.run([sys.executable, "-m", "radcot", *cmd], stdout=subprocess.PIPE, stderr=f, text=True,
                                  timeout=600, env=dict(os.environ, RADCOT_JAVA_HEAP="1g"))
            assert proc.returncode == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "\r" not in text and "\x1b[" not in text
    assert re.search(r"writing JsonCollection: 5438 doc in", text), text
    searched = [ln for ln in text.splitlines() if re.search(r"BM25: \d+/2195 q \(", ln)]
    assert 2 <= len(searched) <= 12 and "2195/2195 q (100%)" in searched[-1], text


@pytest.mark.fast
def test_library_internals_stay_out_of_the_default_output():
    """Every dense load printed faiss's CPU-feature probing at INFO (six lines, two saying ModuleNotFoundError)
    and every dev evaluation rouge-score's "Using default tokenizer."; they show with -v only."""
    from radcot.cli import _quiet_per_request_loggers

    names = ("faiss.loader", "absl", "httpx")
    before = {n: logging.getLogger(n).level for n in (*names, "")}
    try:
        logging.getLogger().setLevel(logging.INFO)  # as radcot's CLI sets it by default
        _quiet_per_request_loggers(logging.INFO)
        assert not any(logging.getLogger(n).isEnabledFor(logging.INFO) for n in names)
        for n in names:
            logging.getLogger(n).setLevel(logging.NOTSET)
        _quiet_per_request_loggers(logging.DEBUG)  # -v: everything
        assert all(logging.getLogger(n).level == logging.NOTSET for n in names)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
