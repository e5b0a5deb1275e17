"""The expansion cache on its own: a SQLite file shared by processes, keyed by student fingerprint and normalised
query; errors that name the file and the fix. Real files, real child processes (no model)."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.serving.cache import CacheError, MemoryCache, SQLiteCache, normalize_query, open_cache

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]

WRITER = r"""
import sys
from radcot.serving.cache import SQLiteCache
path, student, start, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cache = SQLiteCache(path, timeout_s=30)
for i in range(start, start + n):  # one transaction per entry: the most lock contention
    cache.put_many(student, {f"query {i}": f"cot {i} of {student}"})
print(len(cache.get_many(student, [f"query {i}" for i in range(start, start + n)])))
"""


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def test_two_processes_write_and_read_one_file_at_once(tmp_path):
    path = tmp_path / "cache" / "cots.sqlite"  # the directory is created
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), "s1", str(start), "150"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for start in (0, 150)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    assert [out.strip() for out, _ in outs] == ["150", "150"]
    cache = SQLiteCache(path)  # a third process's view: everything both wrote
    got = cache.get_many("s1", [f"query {i}" for i in range(300)])
    assert got == {f"query {i}": f"cot {i} of s1" for i in range(300)}
    assert cache.stats().entries == {"s1": 300}


def test_another_student_never_reads_an_entry():
    cache = MemoryCache(10)
    cache.put_many("old-student", {"q": "old cot"})
    assert cache.get_many("new-student", ["q"]) == {}
    assert cache.get_many("old-student", ["q"]) == {"q": "old cot"}


def test_sqlite_keeps_existing_entries_and_prunes(tmp_path):
    cache = SQLiteCache(tmp_path / "c.sqlite")
    assert cache.put_many("a", {"q1": "c1", "q2": "c2"}) == 2
    assert cache.put_many("a", {"q1": "other", "q3": "c3"}) == 1  # q1 is kept as it was
    assert cache.get_many("a", ["q1", "q3", "nope"]) == {"q1": "c1", "q3": "c3"}
    cache.put_many("b", {"q1": "b1"})
    assert cache.prune(keep_students=["b"]) == 3
    assert cache.stats().entries == {"b": 1}


def test_max_entries_drops_the_oldest(tmp_path):
    cache = SQLiteCache(tmp_path / "c.sqlite", max_entries=20)
    for i in range(60):
        cache.put_many("a", {f"q{i}": f"c{i}"})
    n = cache.stats().entries["a"]
    assert 20 <= n <= 22
    assert cache.get_many("a", ["q59"]) == {"q59": "c59"} and cache.get_many("a", ["q0"]) == {}


def test_bad_files_name_the_file_and_the_fix(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheError, match=r"junk\.sqlite.*delete the file"):
        SQLiteCache(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('format', '99')")
    with pytest.raises(CacheError, match="format 99; this radcot uses format 1"):
        SQLiteCache(other)


def test_another_programs_database_is_refused_untouched(tmp_path):
    """`radcot cache stats --cache notes.db` (a user's own SQLite file) created radcot's tables in it and switched
    it to WAL, exit 0; it is refused, byte for byte unchanged."""
    notes = tmp_path / "notes.db"
    with sqlite3.connect(notes) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('mine')")
    conn.close()
    before = notes.read_bytes()
    with pytest.raises(CacheError, match=r"notes\.db is a SQLite database that is not a radcot expansion cache "
                                         r"\(its tables: \['notes'\]\); it was left untouched"):
        SQLiteCache(notes)
    assert notes.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]
    SQLiteCache(tmp_path / "new.sqlite")
    SQLiteCache(tmp_path / "new.sqlite")  # its own file, reopened


def test_normalised_keys_and_open_cache(tmp_path):
    assert normalize_query(" what  is\tBM25\n") == "what is BM25"
    assert normalize_query("cafe\u0301") == "caf\u00e9"  # NFC
    assert normalize_query("BM25") != normalize_query("bm25")  # the tokenizer is case-sensitive
    assert open_cache(None, size=0) is None
    assert isinstance(open_cache(None, size=5), MemoryCache)
    assert isinstance(open_cache(tmp_path / "x.sqlite"), SQLiteCache)
