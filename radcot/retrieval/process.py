"""Process plumbing of index builds: temporary directories that a killed build leaves, signals, long Java calls.

An index build writes into hidden temporary directories beside the index (named with its PID) and renames the
result into place; these helpers remove what an interrupted build left (its own at once, a SIGKILLed one's at
the next build), turn SIGTERM into ``KeyboardInterrupt`` so that clean-ups run, and run long blocking Java calls
in a worker thread so that Ctrl-C reaches Python. Nothing here imports the JVM, torch or FAISS.

Example:
    >>> from radcot.retrieval.process import build_temp_prefix
    >>> build_temp_prefix("runs/idx", "jsoncoll").startswith(".idx.jsoncoll-")
    True
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from radcot.utils import pid_alive

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


#: temporary directories radcot's index builds make beside ``index_dir``; group 1 is the builder's PID
_TEMP_PATTERNS = (r"\.{name}\.jsoncoll-(\d+)-.+", r"\.{name}\.(\d+)-.+\.tmp")


def build_temp_prefix(index_dir: PathLike, what: str) -> str:
    """The name prefix of a build's temporary directory beside ``index_dir``: hidden, with this process's PID.

    The PID lets a later build tell a dead build's leftovers (removed by :func:`remove_stale_build_dirs`)
    from a live one's.
    """
    return f".{Path(index_dir).name}.{what}-{os.getpid()}-"


def remove_stale_build_dirs(index_dir: PathLike) -> list[Path]:
    """Remove temporary directories of builds of ``index_dir`` whose process is gone (e.g. killed by SIGKILL).

    Only directories of radcot's own naming (``.<index>.jsoncoll-<pid>-*``, ``.<index>.<pid>-*.tmp``) whose
    PID no longer runs are removed; returns them.
    """
    index_dir = Path(index_dir)
    parent = index_dir.parent
    if not parent.is_dir():
        return []
    patterns = [re.compile(p.format(name=re.escape(index_dir.name))) for p in _TEMP_PATTERNS]
    removed = []
    for entry in parent.iterdir():
        m = next((m for p in patterns if (m := p.fullmatch(entry.name))), None)
        if m is None or not entry.is_dir() or pid_alive(int(m.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("removed %s, left behind by an interrupted build (process %s is gone)", entry, m.group(1))
        removed.append(entry)
    return removed


def remove_own_build_dirs(index_dir: PathLike) -> None:
    """Remove this process's temporary build directories of ``index_dir`` (after an interrupted build).

    Retries while a writer thread that is being abandoned (the JVM's indexer) may still add files.
    """
    index_dir = Path(index_dir)
    if not index_dir.parent.is_dir():
        return
    patterns = [re.compile(p.format(name=re.escape(index_dir.name))) for p in _TEMP_PATTERNS]
    for entry in index_dir.parent.iterdir():
        m = next((m for p in patterns if (m := p.fullmatch(entry.name))), None)
        if m is not None and int(m.group(1)) == os.getpid():
            rmtree_retry(entry)


def rmtree_retry(path: PathLike, attempts: int = 20) -> None:
    """``shutil.rmtree`` that retries while another thread (e.g. a JVM writer being stopped) adds files."""
    path = Path(path)
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)
    logger.warning("could not remove %s; delete it by hand", path)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`KeyboardInterrupt` (so ``finally`` clean-ups run); restored after.

    Only in the main thread and only when SIGTERM has its default action (a caller's own handler is kept).
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum} (SIGTERM)")

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_interruptibly(fn: Callable[[], Any], name: str = "radcot-java") -> Any:
    """Run a long blocking call (a Java method) in a worker thread so that Ctrl-C/SIGTERM reach Python at once.

    The main thread waits in short steps; a :class:`KeyboardInterrupt` there propagates (the caller's clean-up
    then runs) while the worker, a daemon thread, is abandoned. The worker's own exception is re-raised.
    """
    result: dict[str, Any] = {}

    def work():
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            result["error"] = e
        finally:
            if "jnius" in sys.modules:  # a thread that called Java must detach from the JVM (pyjnius requires it)
                with contextlib.suppress(Exception):
                    sys.modules["jnius"].detach()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in result:
        raise result["error"]
    return result.get("value")
