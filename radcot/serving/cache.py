"""Expansion caches: a student's CoT per normalised query, in memory or in a SQLite file shared by processes.

A CoT depends on the query, the student's weights and the settings it is served with (passages per query,
their index, decoding, CPU precision). Entries are keyed by ``(student, query)``: ``student`` is the served
student's fingerprint (:attr:`radcot.serving.expander.ServedSettings.fingerprint`, which hashes all of those),
``query`` the normalised query (:func:`normalize_query`). A retrained or reconfigured student has another
fingerprint, so it never reads an old student's entries (``radcot cache prune`` removes them).

Why SQLite (the standard library's ``sqlite3``) for the shared store: several ``radcot serve`` workers, the
PyTerrier transformer and ``radcot cache warm`` on one machine read and write one file at once, and SQLite in
WAL mode gives that with no server and no extra dependency: readers never block, a writer holds the lock
for one short transaction (``busy_timeout`` waits for it), each write is atomic and survives a killed
process, and the file can be inspected with the ``sqlite3`` shell. A primary-key lookup costs tens of
microseconds, far below the HTTP round trip. LMDB reads faster still but needs the ``lmdb`` package, a map
size fixed in advance, and its single writer blocks without a timeout. SQLite's WAL needs the file on a
local disk (not NFS), which is where several processes of one machine share it.

Example:
    >>> import tempfile, os
    >>> cache = SQLiteCache(os.path.join(tempfile.mkdtemp(), "cots.sqlite"))
    >>> cache.put_many("student-a", {"what is bm25": "Rationale: ... Answer: a ranking function."})
    1
    >>> cache.get_many("student-a", ["what is bm25", "what is rm3"])
    {'what is bm25': 'Rationale: ... Answer: a ranking function.'}
    >>> cache.get_many("student-b", ["what is bm25"])  # another student: never an old entry
    {}
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Iterable, Iterator, Mapping, Protocol, Sequence

from radcot.records import RadcotError

#: the schema version of the SQLite file (a newer radcot refuses an older file with the fix)
CACHE_FORMAT = 1
#: rows per ``IN (...)`` lookup (SQLite's default limit of host parameters is 32766)
_CHUNK = 500


class CacheError(RadcotError):
    """A cache file that cannot be used (not a radcot cache, another format, unwritable)."""


def normalize_query(text: str) -> str:
    """The cache key of a query: Unicode NFC, whitespace runs as one space, ends stripped (case is kept: the
    student's tokenizer is case-sensitive). The student also reads this form, so equal keys mean equal CoTs.

    Example:
        >>> normalize_query("  what is\\tBM25 \\n")
        'what is BM25'
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


class CoTStore(Protocol):
    """What the expander needs of a cache: batched lookups and inserts for one student fingerprint."""

    def get_many(self, student: str, queries: Sequence[str]) -> dict[str, str]: ...

    def put_many(self, student: str, cots: Mapping[str, str]) -> int: ...


# ------------------------------------------------------------------------------------------------ memory


class LRUCache:
    """Least-recently-used cache of at most ``size`` entries; ``size=0`` turns it off (nothing is kept).

    Example:
        >>> c = LRUCache(2); c.put("a", 1); c.put("b", 2); c.get("a"); c.put("c", 3)
        1
        >>> c.get("b") is None, len(c)
        (True, 2)
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"cache size must be >= 0 (0 = off), got {size}")
        self.size = size
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable):
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: Hashable, value) -> None:
        if self.size == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class MemoryCache:
    """A :class:`CoTStore` in this process's memory (LRU, ``size`` entries over all students; 0 = off)."""

    def __init__(self, size: int = 10_000):
        self._lru = LRUCache(size)
        self.size = size

    def get_many(self, student: str, queries: Sequence[str]) -> dict[str, str]:
        out = {}
        for q in queries:
            hit = self._lru.get((student, q))
            if hit is not None:
                out[q] = hit
        return out

    def put_many(self, student: str, cots: Mapping[str, str]) -> int:
        for q, c in cots.items():
            self._lru.put((student, q), c)
        return len(cots) if self.size else 0

    def __len__(self) -> int:
        return len(self._lru)

    def __repr__(self) -> str:
        return f"MemoryCache(size={self.size})"


# ------------------------------------------------------------------------------------------------ sqlite


@dataclass(frozen=True)
class CacheStats:
    """Entries per student fingerprint and the file's size."""

    path: str
    entries: dict[str, int]
    bytes: int

    def to_dict(self) -> dict:
        return {"path": self.path, "entries": dict(self.entries), "total": sum(self.entries.values()),
                "bytes": self.bytes}


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cots (student TEXT NOT NULL, query TEXT NOT NULL, cot TEXT NOT NULL, "
    "created REAL NOT NULL, PRIMARY KEY (student, query)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS cots_created ON cots (created)",
)


class SQLiteCache:
    """A :class:`CoTStore` in a SQLite file (WAL mode), shared by the processes of one machine.

    Args:
        path: the file (created with its directory; an existing file must be a radcot cache).
        max_entries: keep at most about this many entries (the oldest go first, checked as entries are
            added; ``None``: no limit -- prune with ``radcot cache prune``).
        timeout_s: how long a write waits for another process's write transaction.

    Raises:
        CacheError: the file is not a SQLite database, not a radcot cache, of another format, or unwritable.

    Thread-safe: each thread gets its own connection.
    """

    def __init__(self, path: str | os.PathLike, max_entries: int | None = None, timeout_s: float = 10.0):
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries must be >= 1 or None, got {max_entries}")
        self.path = Path(path)
        self.max_entries, self.timeout_s = max_entries, timeout_s
        self._local = threading.local()
        self._added = 0  # entries this process added since the last size check
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create the cache directory {self.path.parent} ({e.strerror or e}); pick "
                             f"another --cache path") from None
        self._setup()

    # -------------------------------------------------------------------------------------- plumbing

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, never corrupt
            except sqlite3.Error as e:
                raise self._error(e) from None
            self._local.conn = conn
        return conn

    def _error(self, e: Exception) -> CacheError:
        return CacheError(f"cache file {self.path}: {e}. It must be a radcot expansion cache on a local disk "
                          f"that this user can write: pass another --cache path, or delete the file to start a "
                          f"new cache")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: one writer at a time across processes), committed when the
        block ends, rolled back when it raises; SQLite errors become one :class:`CacheError`."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise self._error(e) from None

    def _setup(self) -> None:
        """Create the schema (once, under a write lock) or check an existing file's format; another program's
        database is refused before anything is written to it."""
        conn = self._conn()
        try:
            self._refuse_foreign(conn)
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as e:
            raise self._error(e) from None
        with self._write() as conn:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(CACHE_FORMAT),))
            fmt = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()[0]
        if fmt != str(CACHE_FORMAT):
            raise CacheError(f"cache file {self.path} has format {fmt}; this radcot uses format {CACHE_FORMAT}: "
                             f"delete the file (it is only a cache) or pass another --cache path")

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Raise :class:`CacheError` when the file holds tables other than a radcot cache's (the schema is created
        in one transaction, so a cache being created by another process shows all of its tables or none)."""
        tables = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        if tables and ("meta" not in tables or set(tables) - {"cots", "meta"}):  # meta alone: its format is checked
            raise CacheError(f"cache file {self.path} is a SQLite database that is not a radcot expansion cache "
                             f"(its tables: {tables[:5]}); it was left untouched: pass another --cache path")

    # ------------------------------------------------------------------------------------------ API

    def get_many(self, student: str, queries: Sequence[str]) -> dict[str, str]:
        """``{query: cot}`` of the given normalised queries that ``student`` has an entry for."""
        out: dict[str, str] = {}
        queries = list(dict.fromkeys(queries))
        try:
            for i in range(0, len(queries), _CHUNK):
                chunk = queries[i:i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                out.update(self._conn().execute(
                    f"SELECT query, cot FROM cots WHERE student = ? AND query IN ({marks})", (student, *chunk)))
        except sqlite3.Error as e:
            raise self._error(e) from None
        return out

    def put_many(self, student: str, cots: Mapping[str, str]) -> int:
        """Insert ``{query: cot}`` for ``student`` in one transaction (existing entries are kept); the number
        of entries added."""
        if not cots:
            return 0
        now = time.time()
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO cots VALUES (?, ?, ?, ?)",
                             [(student, q, c, now) for q, c in cots.items()])
            added = conn.total_changes - before
        self._bound(added)
        return added

    def _bound(self, added: int) -> None:
        """Drop the oldest entries once more than ``max_entries`` (+10%) are stored (counted now and then)."""
        if self.max_entries is None:
            return
        with self._lock:
            self._added += added
            if self._added < max(1, self.max_entries // 10):
                return
            self._added = 0
        self.prune(max_entries=self.max_entries)

    def stats(self) -> CacheStats:
        """Entries per student fingerprint."""
        try:
            rows = self._conn().execute("SELECT student, COUNT(*) FROM cots GROUP BY student").fetchall()
        except sqlite3.Error as e:
            raise self._error(e) from None
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return CacheStats(str(self.path), dict(rows), size)

    def prune(self, keep_students: Iterable[str] | None = None, max_entries: int | None = None) -> int:
        """Delete the entries of students not in ``keep_students`` (when given), then the oldest beyond
        ``max_entries`` (when given); returns the number deleted."""
        with self._write() as conn:
            before = conn.total_changes
            if keep_students is not None:
                keep = list(keep_students)
                conn.execute(f"DELETE FROM cots WHERE student NOT IN ({','.join('?' * len(keep))})", keep)
            if max_entries is not None:
                conn.execute("DELETE FROM cots WHERE (student, query) IN (SELECT student, query FROM cots "
                             "ORDER BY created DESC LIMIT -1 OFFSET ?)", (max_entries,))
            deleted = conn.total_changes - before
        return deleted

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r}, max_entries={self.max_entries})"


def open_cache(path: str | os.PathLike | None, size: int = 10_000, max_entries: int | None = None) -> CoTStore | None:
    """The cache ``radcot serve`` / ``radcot cache`` use: a SQLite file at ``path``, else an in-memory LRU of
    ``size`` entries (``None`` when ``size`` is 0)."""
    if path is not None:
        return SQLiteCache(path, max_entries=max_entries)
    return MemoryCache(size) if size else None


__all__ = ["CACHE_FORMAT", "CacheError", "CacheStats", "CoTStore", "LRUCache", "MemoryCache", "SQLiteCache",
           "normalize_query", "open_cache"]
