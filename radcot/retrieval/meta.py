"""Index metadata (``radcot_index.json``) and the integrity check every radcot index passes on reuse and open.

A build records the size of every file it wrote (``"files": {name: bytes}``); reusing or opening the index
compares them with the directory (a ``stat`` per file, microseconds). A truncated, missing or replaced file
is reported in one line naming the file and the fix (rebuild with ``--overwrite``), before Lucene or FAISS
reads it; :mod:`radcot.retrieval.bm25` also checks each Lucene file's footer, which covers indexes radcot did
not build.

Example:
    >>> from radcot.retrieval.meta import check_index_files
    >>> check_index_files("runs/vaswani-bm25")  # doctest: +SKIP
"""
from __future__ import annotations

import os
from pathlib import Path

from radcot.data.fingerprint import INDEX_META_FILE, read_index_meta
from radcot.retrieval.errors import RetrievalIndexError

#: files an index directory may hold that are not part of the index (Lucene's lock, radcot's metadata)
_NOT_INDEX_FILES = {INDEX_META_FILE, "write.lock"}


class IndexDamagedError(RetrievalIndexError):
    """An index file is missing, truncated or not readable; the message names it and says how to rebuild."""


def index_files(index_dir: str | os.PathLike) -> dict[str, int]:
    """``{file name: size in bytes}`` of an index directory's files (what a build records)."""
    return {p.name: p.stat().st_size for p in sorted(Path(index_dir).iterdir())
            if p.is_file() and p.name not in _NOT_INDEX_FILES}


def rebuild_hint(index_dir: str | os.PathLike, meta: dict | None = None, dense: bool = False) -> str:
    """The command that rebuilds ``index_dir`` from the collection its metadata names."""
    collection = (meta or {}).get("collection") or "PATH"
    return f"`radcot index --collection {collection} --index {index_dir}{' --dense' if dense else ''} --overwrite`"


def damaged(index_dir: str | os.PathLike, meta: dict | None = None) -> str | None:
    """Why the index in ``index_dir`` cannot be used as built (a file missing or of another size), or ``None``.

    Indexes whose metadata records no file sizes (older radcot, or not built by radcot) pass.
    """
    index_dir = Path(index_dir)
    meta = read_index_meta(index_dir) if meta is None else meta
    if meta and not meta.get("complete", False):
        return f"{index_dir / INDEX_META_FILE} says the build did not complete"
    for name, size in (meta.get("files") or {}).items():
        path = index_dir / name
        if not path.is_file():
            return f"index file {path} is missing"
        actual = path.stat().st_size
        if actual != size:
            return (f"index file {path} has {actual} bytes but had {size} when the index was built "
                    f"({'truncated' if actual < size else 'changed'})")
    return None


def check_index_files(index_dir: str | os.PathLike, meta: dict | None = None, dense: bool = False) -> None:
    """Raise :class:`IndexDamagedError` (one line: the file and the rebuild command) if :func:`damaged` says so."""
    meta = read_index_meta(index_dir) if meta is None else meta
    why = damaged(index_dir, meta)
    if why:
        raise IndexDamagedError(f"{why}; rebuild the index: {rebuild_hint(index_dir, meta, dense)}")
