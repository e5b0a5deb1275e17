"""The retriever contract (:class:`Retriever`) and the helpers every retrieval backend shares.

Both :class:`~radcot.retrieval.bm25.BM25Retriever` and :class:`~radcot.retrieval.dense.DenseRetriever`
implement :class:`Retriever`; code that only searches and reads documents (distillation data, student
generation, expansion, the pipeline) should accept any object that does. Nothing here imports the JVM,
torch or FAISS.

Example:
    >>> from radcot.retrieval.base import Retriever, as_queries
    >>> as_queries({"q1": "tidal forces"})
    [Query(query_id='q1', text='tidal forces')]
    >>> isinstance(object(), Retriever)
    False
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
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from radcot.data.fingerprint import INDEX_META_FILE
from radcot.records import Doc, Query, RadcotError, ScoredDoc

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike
Run = dict[str, dict[str, float]]

#: written into every index directory radcot builds (kind, build settings, collection, files); ``load_retriever`` reads it
META_FILE = INDEX_META_FILE


@runtime_checkable
class Retriever(Protocol):
    """What every radcot retriever does (BM25 over Lucene, dense over FAISS).

    Attributes:
        kind: ``"bm25"`` or ``"dense"`` (what :func:`radcot.retrieval.index_kind` reports for its index).
        index_dir: the index directory it reads.
        config: its parameters as a JSON-serialisable dict (saved next to runs and datasets).
        num_docs: number of documents in the index.

    Example:
        >>> from radcot.retrieval import load_retriever
        >>> r = load_retriever("runs/demo-bm25")            # doctest: +SKIP
        >>> isinstance(r, Retriever)                        # doctest: +SKIP
        True
    """

    kind: str
    index_dir: Path

    @property
    def config(self) -> dict: ...

    @property
    def num_docs(self) -> int: ...

    def search(self, query: str | Query, k: int = 10, query_id: str = "q") -> list[ScoredDoc]:
        """One query: up to ``k`` hits, best first."""

    def batch_search(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000,
                     threads: int | None = 2) -> dict[str, list[ScoredDoc]]:
        """Many queries: ``{qid: [ScoredDoc, ...]}`` with every query id present (``[]`` when nothing matched)."""

    def run(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int | None = 2) -> Run:
        """A TREC run ``{qid: {doc_id: score}}`` at depth ``k``."""

    def write_run(self, queries: Sequence[Query] | Mapping[str, str], path: PathLike, k: int = 1000) -> Run:
        """:meth:`run`, written as a TREC run file; returns the run."""

    def doc(self, doc_id: str) -> Doc | None:
        """The stored document ``doc_id``, or ``None`` when the index does not hold it."""

    def close(self) -> None:
        """Release what the retriever holds (readers, index, encoder); it reopens lazily when used again."""


# ---------------------------------------------------------------------------------------------- inputs


def as_queries(queries: Iterable[Query] | Mapping[str, str] | PathLike) -> list[Query]:
    """Queries as a list of :class:`Query`, from records, ``(qid, text)`` pairs, ``{qid: text}`` or a file.

    Raises:
        TypeError: an item is none of these.

    Example:
        >>> as_queries([("1", "lift"), Query("2", "drag")])
        [Query(query_id='1', text='lift'), Query(query_id='2', text='drag')]
    """
    if isinstance(queries, (str, os.PathLike)):
        from radcot.data.readers import read_queries

        return list(read_queries(queries))
    if isinstance(queries, Mapping):
        return [Query(str(q), str(t)) for q, t in queries.items()]
    out = []
    for q in queries:
        if isinstance(q, Query):
            out.append(q)
        elif isinstance(q, (tuple, list)) and len(q) == 2:
            out.append(Query(str(q[0]), str(q[1])))
        else:
            raise TypeError(f"expected Query(query_id, text) records, (qid, text) pairs or a {{qid: text}} mapping, "
                            f"got {type(q).__name__}: {q!r:.80}")
    return out


def iter_docs(collection: PathLike | Iterable[Doc]) -> Iterable[Doc]:
    """The documents of a collection path (anything ``read_corpus`` reads) or of an iterable of :class:`Doc`/tuples.

    Example:
        >>> list(iter_docs([("d1", "text", "Title")]))
        [Doc(doc_id='d1', text='text', title='Title')]
    """
    if isinstance(collection, (str, os.PathLike)):
        from radcot.data.readers import read_corpus

        return read_corpus(collection)
    return (d if isinstance(d, Doc) else Doc(*d) for d in collection)


def collection_fingerprint(collection: PathLike | Iterable[Doc]) -> str | None:
    """A content fingerprint of a collection's files (:func:`radcot.data.fingerprint.collection_fingerprint`).

    ``None`` for an in-memory iterable (it cannot be fingerprinted without reading it).

    Raises:
        FileNotFoundError: the path does not exist.
    """
    from radcot.data.fingerprint import collection_fingerprint as fingerprint

    return fingerprint(collection)


# ---------------------------------------------------------------------------------------------- retrieve + fetch


def retrieve_passages(retriever: Retriever, queries: Sequence[Query], k: int, batch_size: int = 256,
                      error: type[Exception] = RadcotError,
                      on_batch: Callable[[int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """The top-``k`` passages of each query, with their stored text: the retrieve-then-fetch join.

    Args:
        retriever: any :class:`Retriever`.
        queries: the queries (ids must be unique).
        k: passages per query.
        batch_size: queries per ``batch_search`` call.
        error: the exception raised when the index returns a doc id it holds no text for.
        on_batch: called with the number of queries done after each batch (for a progress bar).

    Returns:
        ``{qid: [{"doc_id", "title", "text", "score"}, ...]}`` in the queries' order, best passage first.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for i in range(0, len(queries), batch_size):
        chunk = list(queries[i:i + batch_size])
        hits = retriever.batch_search(chunk, k)
        for q in chunk:
            out[q.query_id] = [_passage(retriever, q, sd, error) for sd in list(hits.get(q.query_id, []))[:k]]
        if on_batch is not None:
            on_batch(len(chunk))
    return out


def _passage(retriever: Retriever, q: Query, sd: ScoredDoc, error: type[Exception]) -> dict[str, Any]:
    doc = retriever.doc(sd.doc_id)
    if doc is None:
        raise error(f"the index {getattr(retriever, 'index_dir', '')} returned doc id {sd.doc_id!r} for query "
                    f"{q.query_id!r} but holds no stored text for it; rebuild it with `radcot index` (stores documents)")
    return {"doc_id": doc.doc_id, "title": doc.title or "", "text": doc.text, "score": float(sd.score)}


# ---------------------------------------------------------------------------------------------- interrupted builds

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
        if m is None or not entry.is_dir() or _pid_alive(int(m.group(1))):
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


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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
