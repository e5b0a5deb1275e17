"""Small shared helpers: atomic writes, JSONL, hashing, logging-aware progress."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger("radcot")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Write ``path`` through a temp file in the same directory, renamed into place on success.

    Example:
        >>> with atomic_write("/tmp/x.txt") as f:
        ...     _ = f.write("hello")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    # the PID in the name lets a later write remove what a killed one left (remove_stale_temp_files)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~umask())  # as open() would create it (mkstemp's temp file is private: 0600)
    kwargs = {} if "b" in mode else {"encoding": encoding}
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def umask() -> int:
    """This process's umask. Read from ``/proc/self/status`` on Linux: ``os.umask`` can only read it by setting
    it, which would race with other threads creating files."""
    with contextlib.suppress(OSError, ValueError, StopIteration, IndexError):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (this one included; another user's process counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that :func:`atomic_write` calls on ``path`` left behind when their process was
    killed mid-write (``.<name>.<pid>-*.tmp`` whose PID no longer runs); returns them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)-[^/]*\.tmp")
    removed = []
    with os.scandir(path.parent) as entries:
        stale = [Path(e.path) for e in entries if (m := pattern.fullmatch(e.name)) and e.is_file(follow_symlinks=False)
                 and not pid_alive(int(m.group(1)))]
    for tmp in stale:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            logger.info("removed %s, left behind by an interrupted write (its process is gone)", tmp)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temp directory that replaces ``path`` (renamed) when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the PID in the name lets a later build remove what a killed one left (radcot.retrieval.process)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~umask())  # as mkdir() would create it (mkdtemp's is private: 0700)
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False, default=str)
        f.write("\n")


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the JSON objects of a JSONL file; a malformed line raises DataFormatError with its number."""
    from radcot.records import DataFormatError

    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(path, i, "one JSON object per line", f"{line[:80]!r} ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataFormatError(path, i, "a JSON object", type(obj).__name__)
            yield obj


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (or of a directory's files, sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files: Iterable[Path] = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def env_var(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` for the block; the previous value (or its absence) is restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def cache_dir() -> Path:
    """radcot's cache (topics converted from pyserini, exported ir_datasets data, file fingerprints).

    ``$RADCOT_CACHE``, else ``$XDG_CACHE_HOME/radcot``, else ``~/.cache/radcot``. Deleting it only costs time.
    """
    if os.environ.get("RADCOT_CACHE"):
        return Path(os.environ["RADCOT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "radcot"


def state_dir() -> Path:
    """radcot's state: the record of the outputs it wrote (:mod:`radcot.cli._args`), kept out of output folders.

    ``$RADCOT_STATE_DIR``, else ``$XDG_STATE_HOME/radcot``, else ``~/.local/state/radcot``.
    """
    if os.environ.get("RADCOT_STATE_DIR"):
        return Path(os.environ["RADCOT_STATE_DIR"])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "radcot"


def config_hash(obj: Any, n: int = 12) -> str:
    """Short stable hash of a JSON-serialisable config."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def progress_enabled(show_progress: bool | None) -> bool:
    """Decide whether to draw a progress bar: explicit flag, else from the radcot logger level."""
    if show_progress is not None:
        return show_progress
    return logger.getEffectiveLevel() <= logging.INFO


class LogProgress:
    """A tqdm stand-in for non-interactive stderr: a log line every ``interval_s`` seconds or 10% of ``total``.

    Supports what radcot's bars use: iteration, ``update(n)``, ``set_postfix(**kw)``, ``write(s)``, ``close()`` and
    ``with``.
    """

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 enabled: bool = True, interval_s: float = 10.0, initial: int = 0):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.enabled, self.interval_s = enabled, interval_s
        self.n = self._start = initial
        self._t0 = self._last_t = time.monotonic()
        self._last_decile = self._decile(initial)
        self._postfix = ""
        self._closed = False
        self._logged_n = initial

    def _decile(self, n: int) -> int:
        return int(10 * n / self.total) if self.total else 0

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        decile = self._decile(self.n)
        if now - self._last_t >= self.interval_s or decile > self._last_decile:
            self._log(now)
            self._last_t, self._last_decile = now, decile

    def set_postfix(self, refresh: bool = True, **kwargs) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def set_description(self, desc: str, refresh: bool = True) -> None:
        self.desc = desc

    @staticmethod
    def write(s: str, file=None, end: str = "\n") -> None:
        """Print a message (to stdout by default), as ``tqdm.write`` does; shown even when progress is off."""
        print(s, file=file or sys.stdout, end=end, flush=True)

    def _log(self, now: float) -> None:
        self._logged_n = self.n
        if not self.enabled:
            return
        elapsed = now - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)" if self.total else \
            f"{self.n} {self.unit}"
        eta = ""
        if self.total and rate > 0 and self.n < self.total:
            eta = f", ETA {(self.total - self.n) / rate:.0f}s"
        post = f" [{self._postfix}]" if self._postfix else ""
        logger.info("%s: %s in %.0fs, %.2f %s/s%s%s", self.desc or "progress", done, elapsed, rate, self.unit,
                    eta, post)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._logged_n:
            self._log(time.monotonic())

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it",
             show_progress: bool | None = None, interval_s: float = 10.0, **tqdm_kwargs):
    """The one progress helper: a tqdm bar on an interactive stderr, periodic log lines otherwise.

    Args:
        iterable: what to iterate (or ``None`` and call ``update(n)``).
        total: expected count (default ``len(iterable)``).
        desc, unit: as tqdm's.
        show_progress: ``True``/``False``, or ``None`` to decide from the radcot logger level.
        interval_s: when stderr is not a TTY, a log line every ``interval_s`` seconds or 10% of ``total``.

    Example:
        >>> for _ in progress(range(3), desc="demo", show_progress=False):
        ...     pass
    """
    enabled = progress_enabled(show_progress)
    if enabled and _stderr_is_tty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, interval_s=interval_s,
                       initial=int(tqdm_kwargs.get("initial", 0) or 0))


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def interactive_progress(show_progress: bool | None) -> bool:
    """For bars drawn by other libraries (sentence-transformers' ``show_progress_bar``): draw only when
    progress is wanted *and* stderr is a terminal, so their redraws never reach a log file."""
    return progress_enabled(show_progress) and _stderr_is_tty()
