"""What a collection *is*: content fingerprints, and the check that an index was built from a given corpus.

A collection's fingerprint is the SHA-256 of its files' bytes (in reading order), so an index is reused only
for the same documents: an in-place edit that keeps the size and the modification time still changes it, and
a copy or a move of the same files does not.

Cost. Hashing streams every byte once: ~0.7 GB/s measured here (SHA-256 runs on the CPU's SHA extensions),
so MS MARCO's 3 GB ``collection.tsv`` takes ~5 s the first time. The digest is then remembered, keyed by the
file's identity *including its inode change time* (``st_ctime_ns``), which the kernel updates on every
write and every ``utime``, and which no user call can set back: asking again costs one ``stat`` (microseconds)
until the file is touched in any way, and a touched file is simply hashed again. A sampled hash (fixed blocks
plus the size, milliseconds every time) was rejected: 64 blocks of 64 KiB cover 0.1% of MS MARCO, so it misses
nearly every edit of a single passage -- exactly the silent reuse the fingerprint exists to prevent.

Memo: in memory for the process, and on disk in :func:`radcot.utils.cache_dir` ``/fingerprints`` (one small
JSON file per file identity; deleting it only costs a re-hash). As git does with "racily clean" files, a file
changed less than :data:`RACY_SECONDS` before it was hashed is never remembered: the kernel's file clock is
coarse (milliseconds), so an edit right after a write could keep every field of the identity.

Example:
    >>> from radcot.data.fingerprint import collection_fingerprint
    >>> collection_fingerprint("../shared/data/vaswani")  # doctest: +SKIP
    'sha256:4b6c0f3e9a1d2c7b'
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from radcot.records import RadcotError

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: written into every index directory radcot builds (kind, build settings, the collection it indexes, its files)
INDEX_META_FILE = "radcot_index.json"
#: prefix of content fingerprints (older radcot versions recorded path+size+mtime hashes without it)
PREFIX = "sha256:"

#: a file whose inode changed less than this many seconds before hashing is not remembered (see above)
RACY_SECONDS = 2.0

_memo: dict[tuple, str] = {}
_memo_lock = threading.Lock()


class IndexCollectionMismatchError(RadcotError, ValueError):
    """An index was built from another collection than the dataset's corpus; names both and the fix."""


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: PathLike) -> str:
    """Hex SHA-256 of a file's bytes, remembered by the file's identity (see the module docstring).

    Example:
        >>> len(file_digest(__file__))
        64
    """
    path = Path(path)
    key = _identity(path)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    digest = _disk_memo_get(key)
    if digest is None:
        return _hash(path, key)
    with _memo_lock:
        _memo[key] = digest
    return digest


def _hash(path: Path, key: tuple) -> str:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if _identity(path) != key or time.time_ns() - key[4] < RACY_SECONDS * 1e9:
        return digest  # written while we read it, or so recently that a next write could keep its identity
    _disk_memo_put(key, path, digest)
    with _memo_lock:
        _memo[key] = digest
    return digest


def _memo_path(key: tuple) -> Path:
    from radcot.utils import cache_dir

    return cache_dir() / "fingerprints" / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".json")


def _disk_memo_get(key: tuple) -> str | None:
    try:
        record = json.loads(_memo_path(key).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get("sha256") if record.get("identity") == list(key) else None


def _disk_memo_put(key: tuple, path: Path, digest: str) -> None:
    from radcot.utils import write_json

    try:
        write_json(_memo_path(key), {"identity": list(key), "path": str(path), "sha256": digest})
    except OSError as e:  # a read-only cache only costs a re-hash next time
        logger.debug("could not remember the fingerprint of %s: %s", path, e)


def collection_files(collection: PathLike) -> list[Path]:
    """The files a collection path's documents come from, in reading order (see :func:`radcot.data.read_corpus`)."""
    from radcot.data.readers import _corpus_files

    return _corpus_files(Path(collection))


def collection_fingerprint(collection) -> str | None:
    """``sha256:`` + 16 hex digits over the bytes of a collection's files (not their names or places).

    Args:
        collection: a collection path (BEIR directory, JsonCollection, MS MARCO TSV), or anything else (an
            in-memory iterable of documents), which has no fingerprint (``None``).

    Raises:
        FileNotFoundError: the path does not exist.
    """
    if not isinstance(collection, (str, os.PathLike)):
        return None
    h = hashlib.sha256()
    for f in collection_files(collection):
        h.update(f"{f.stat().st_size}:{file_digest(f)}\n".encode())
    return PREFIX + h.hexdigest()[:16]


def legacy_fingerprint(collection: PathLike) -> str:
    """The path+size+mtime hash radcot < 0.3 recorded in its indexes (kept so that they are still reused)."""
    from radcot.utils import config_hash

    files = collection_files(collection)
    return config_hash([(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)) for p in files], n=16)


def same_collection(recorded: str | None, collection: PathLike) -> bool:
    """Whether a fingerprint recorded in an index (current or legacy form) is that of ``collection`` now."""
    if not recorded:
        return False
    if recorded.startswith(PREFIX):
        return recorded == collection_fingerprint(collection)
    return recorded == legacy_fingerprint(collection)


def read_index_meta(index_dir: PathLike) -> dict:
    """The ``radcot_index.json`` of an index directory (``{}`` when it has none, e.g. a pyserini prebuilt one).

    Raises:
        DataFormatError: the file is not a JSON object.
    """
    from radcot.records import DataFormatError

    path = Path(index_dir) / INDEX_META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataFormatError(path, getattr(e, "lineno", None), "a JSON object (radcot index metadata)", str(e),
                              f"Rebuild the index with `radcot index ... --index {index_dir} --overwrite`") from None
    if not isinstance(meta, dict):
        raise DataFormatError(path, None, "a JSON object (radcot index metadata)", f"a JSON {type(meta).__name__}",
                              f"Rebuild the index with `radcot index ... --index {index_dir} --overwrite`")
    return meta


def check_index_collection(index_dir: PathLike, corpus: PathLike) -> None:
    """Refuse an index whose metadata names another collection than ``corpus``.

    Indexes without radcot metadata (pyserini prebuilt, Anserini-built) cannot be checked and pass.

    Raises:
        IndexCollectionMismatchError: the index was built from other documents; names both and the fix.
    """
    meta = read_index_meta(index_dir)
    recorded = meta.get("collection_fingerprint")
    if not recorded:
        logger.debug("index %s records no collection fingerprint; cannot check it against %s", index_dir, corpus)
        return
    if same_collection(recorded, corpus):
        return
    raise IndexCollectionMismatchError(
        f"index {index_dir} was built from {meta.get('collection') or 'another collection'} "
        f"({meta.get('num_docs', '?')} documents, fingerprint {recorded}), not from this dataset's corpus {corpus} "
        f"(fingerprint {collection_fingerprint(corpus)}): searching it would score documents of another collection. "
        f"Build an index of this corpus with `radcot index --collection {corpus} --index DIR` and pass DIR, or give "
        f"no index and let the pipeline build it")
