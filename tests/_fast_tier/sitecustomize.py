"""The fast tier's watcher inside child processes (see tests/conftest.py and docs/testing.md).

While a test marked ``fast`` runs, tests/conftest.py puts this folder first on the ``PYTHONPATH`` of every
process the test starts and names a log file in ``RADCOT_FAST_TIER_LOG``. Python imports ``sitecustomize``
at start-up, so each child Python (a ``radcot`` CLI, ``python -c ...``, and their own children) notes here
when it imports torch or starts the JVM; conftest then fails the test, naming the command. The child itself
runs unchanged (nothing is blocked, so a test cannot pass because an import failed).
"""
from __future__ import annotations

import os
import sys

_LOG = os.environ.get("RADCOT_FAST_TIER_LOG")
#: module prefixes whose import means "imports torch" or "starts the JVM" (jnius starts it on import)
_WATCHED = ("torch", "jnius", "pyserini.search", "pyserini.index")


class _Watcher:
    """A ``sys.meta_path`` finder that finds nothing and writes one log line per watched import."""

    def __init__(self, log: str):
        self.log = log
        self.seen: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        top = next((w for w in _WATCHED if name == w or name.startswith(w + ".")), None)
        if top is not None and top not in self.seen:
            self.seen.add(top)
            command = " ".join(getattr(sys, "orig_argv", sys.argv))[:300]
            try:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(f"child PID {os.getpid()} ({command}) imported {top}\n")
            except OSError:
                pass
        return None


if _LOG:
    sys.meta_path.insert(0, _Watcher(_LOG))
