"""One writer per output: an exclusive advisory lock on every file or directory radcot writes.

Every command that writes a resumable output or a directory (teach, generate, train, build-data, index,
search, run, the pipeline's stages) holds :func:`output_lock` on it while it writes. A second writer fails at
once with :class:`OutputLockedError`, naming the holder's PID, its command line and the lock file, instead of
appending the same records a second time.

The lock is on the output's identity, not on the spelling of its path: the path is resolved first (symbolic
links, ``..``), so two writers that reach one file through a link and through its real name exclude each
other. (Two hard links to one file are two names for the kernel too and are not detected.)

The lock is ``fcntl.flock`` on a hidden file beside the real output, ``.<name>.lock``, which exists only while
a writer holds it: the holder deletes it before releasing it, so nothing is left next to the output after the
command exits. The kernel releases the lock however its holder ends (SIGKILL included); a lock file left by a
killed writer never blocks a rerun, which takes it over and deletes it in turn. A writer that finds the lock
file replaced or deleted after it locked it (its holder was just releasing it) starts over, so two writers
never both hold "the" lock.

Example:
    >>> from radcot.locks import output_lock
    >>> with output_lock("runs/x/cot.jsonl"):  # doctest: +SKIP
    ...     pass  # write runs/x/cot.jsonl
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

from radcot.records import RadcotError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class OutputLockedError(RadcotError, RuntimeError):
    """Another process is writing the same output."""


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file guarding ``output``: ``.<name>.lock`` beside the file ``output`` resolves to (links followed)."""
    p = Path(os.path.realpath(output))
    return p.parent / f".{p.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    pid, _, cmd = text.partition(" ")
    return f"PID {pid} ({cmd})" if pid else "another process"


#: environment variable listing the locks a parent holds for the processes it starts (``inherit=True``)
INHERITED_ENV = "RADCOT_HELD_LOCKS"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, what: str = "output", inherit: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on ``output`` (a file or directory) for the ``with`` block.

    Args:
        output: the file or directory about to be written (it need not exist; its parent is created).
        what: a word for messages ("teacher output", "index", ...).
        inherit: let processes started inside the block (e.g. the workers of a multi-process training
            launch) write ``output`` too: the lock is announced in ``$RADCOT_HELD_LOCKS``, and an
            ``inherit=True`` call that finds its lock there does not lock again.

    Raises:
        OutputLockedError: another process holds the lock; names its PID and the lock file.
    """
    path = lock_path(output)
    held = [p for p in os.environ.get(INHERITED_ENV, "").split(os.pathsep) if p]
    if inherit and str(path) in held:  # our parent holds it for us
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if inherit:
        os.environ[INHERITED_ENV] = os.pathsep.join(held + [str(path)])
        try:
            with _exclusive(path, output, what):
                yield path
        finally:
            os.environ[INHERITED_ENV] = os.pathsep.join(held)
        return
    with _exclusive(path, output, what):
        yield path


@contextlib.contextmanager
def _exclusive(path: Path, output: str | os.PathLike, what: str) -> Iterator[Path]:
    """The lock itself: ``fcntl.flock`` (POSIX) or ``filelock`` (elsewhere), never waiting."""
    if fcntl is None:  # pragma: no cover - Windows: filelock, without the holder's PID
        from filelock import FileLock, Timeout

        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputLockedError(f"{what} {output} is being written by another process (lock {path}); "
                                    f"wait for it to finish or stop it, then run again") from None
        try:
            yield path
        finally:
            lock.release()
        return
    fd = _acquire(path, output, what)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(sys.argv)[:200]}\n".encode("utf-8", "replace"))
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # while still holding it: a waiting writer then sees the file gone and starts over
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(path: Path, output: str | os.PathLike, what: str) -> int:
    """A descriptor holding ``flock`` on the file now at ``path`` (retrying when it was deleted meanwhile)."""
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(
                f"{what} {output} is being written by {_holder(path)} (lock {path}); wait for it to finish "
                f"or stop it, then run again (one writer per output)") from None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # we locked a file its last holder had just deleted: lock the current one
    raise OutputLockedError(f"could not lock {what} {output}: {path} keeps being replaced by other processes")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
