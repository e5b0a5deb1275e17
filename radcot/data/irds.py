"""Named datasets through ir_datasets: its ids, its cache and checksums, behind radcot's strict readers.

Any ir_datasets id works (``vaswani``, ``cranfield``, ``beir/scifact/test``, ``msmarco-passage/trec-dl-2019/judged``,
``antique/test``...); prefix ``irds:`` to choose ir_datasets for a name radcot also knows itself
(``irds:msmarco-passage/trec-dl-2019``). ir_datasets downloads (once, checking each file's MD5) into its cache,
``$IR_DATASETS_HOME`` (default ``~/.ir_datasets``). radcot then exports the dataset's queries, qrels and --
when an index must be built from them -- documents into radcot's formats under
:func:`radcot.utils.cache_dir` ``/ir_datasets/<id>/`` (``queries.jsonl``, ``qrels.txt``, ``corpus.jsonl``), checking
every id on the way, and reads them back with :mod:`radcot.data.readers` like any other files. The export is
redone when ir_datasets' files change.

Offline. Before ir_datasets is asked for anything, radcot walks the dataset's download plan for the files
missing from the cache. If some are missing and their server does not answer a TCP connection within
:data:`PROBE_TIMEOUT_S` seconds (or ``RADCOT_OFFLINE=1``), it stops at once with one line that names each file,
where to put it (the exact path in ir_datasets' cache) and its URL and MD5 -- instead of ir_datasets' retries.

MS MARCO passage ids (``msmarco-passage/...``) need no 3 GB collection: like radcot's own MS MARCO names they
use pyserini's prebuilt ``msmarco-v1-passage`` index, unless ir_datasets' ``collection.tsv`` is already in its
cache (then it is the corpus, read in place) or an index is given.

Example:
    >>> from radcot.data.registry import load_dataset
    >>> ds = load_dataset("msmarco-passage/trec-dl-2019/judged")  # doctest: +SKIP
    >>> len(ds.queries())                                        # doctest: +SKIP
    43
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from radcot.records import DataFormatError, OfflineResourceError, RadcotError
from radcot.utils import env_var

logger = logging.getLogger(__name__)

#: prefix that sends a name to ir_datasets even when radcot knows it too
PREFIX = "irds:"
#: seconds a download server gets to answer before radcot calls the machine offline
PROBE_TIMEOUT_S = 3.0
#: ir_datasets id that provides the documents -> pyserini prebuilt index used when no index is given
PREBUILT_INDEX = {"msmarco-passage": "msmarco-v1-passage"}


@dataclasses.dataclass(frozen=True)
class IrdsFiles:
    """What a named ir_datasets dataset resolves to: radcot-format files, and the index to search."""

    name: str
    queries: Path
    qrels: Path | None
    corpus: Path | None
    index: str | None


@dataclasses.dataclass(frozen=True)
class MissingFile:
    """A file ir_datasets needs that its cache lacks: where it comes from and where it must go."""

    url: str | None
    md5: str | None
    path: Path | None
    how: str = ""  # "" (as downloaded), or what to do with the download first ("gunzip it", ...)
    note: str = ""  # ir_datasets' own instructions for files it cannot download itself

    def describe(self) -> str:
        if self.url is None:
            return f"put {self.path} in place ({' '.join(self.note.split())[:300]})"
        md5 = f" (md5 {self.md5})" if self.md5 else ""
        if self.path is None:
            return f"{self.url}{md5} (ir_datasets keeps no copy of it: it needs the internet on every use)"
        todo = f", {self.how}," if self.how else ""
        return f"{self.url}{md5}{todo} to {self.path}"


# ---------------------------------------------------------------------------------------------- ir_datasets


def ir_datasets():
    """The ir_datasets module (imported on first use; it reads ``$IR_DATASETS_HOME`` then).

    While it is imported, ``IR_DATASETS_SMALL_FILE_SIZE=0`` (unless set): ir_datasets then also looks for every
    file in its ``downloads/<md5>`` folder, so that small files it would otherwise stream from the internet on
    each use can be put there by hand.

    Raises:
        MissingDependencyError: ir_datasets is not installed.
    """
    if "ir_datasets" in sys.modules:
        return sys.modules["ir_datasets"]
    from radcot._deps import require

    small = os.environ.get("IR_DATASETS_SMALL_FILE_SIZE", "0")
    with env_var("IR_DATASETS_SMALL_FILE_SIZE", small):
        return require("ir_datasets", "named datasets (ir_datasets ids)", extra="irds")


def strip_prefix(name: str) -> tuple[str, bool]:
    """``(id, explicitly ir_datasets)`` of a dataset name."""
    return (name[len(PREFIX):], True) if name.startswith(PREFIX) else (name, False)


def is_irds_id(name: str) -> bool:
    """Whether ir_datasets knows ``name`` (an id or an ``irds:`` id); False when ir_datasets is not installed."""
    name, explicit = strip_prefix(name)
    try:
        irds = ir_datasets()
    except ImportError:
        if explicit:
            raise
        return False
    try:
        irds.load(name)
    except KeyError:
        return False
    return True


def home() -> Path:
    """ir_datasets' cache folder (``$IR_DATASETS_HOME``, default ``~/.ir_datasets``)."""
    return Path(ir_datasets().util.home_path())


# ---------------------------------------------------------------------------------------------- download plan


def _kind(obj) -> str:
    return type(obj).__name__ if type(obj).__module__.startswith("ir_datasets") else ""


def plan(handler) -> tuple[list[MissingFile], list[Path]]:
    """``(missing files, present source files)`` of an ir_datasets docs/queries/qrels handler.

    Walks the handler's chain of caches, extractions and downloads as ir_datasets builds it, without
    downloading or reading anything: a cached file ends its branch; a download with no cached copy is missing.
    """
    missing: list[MissingFile] = []
    present: list[Path] = []
    _walk(handler, None, [], missing, present, set())
    return missing, present


#: ir_datasets steps that keep their result in a file or folder of the cache, and the attribute naming it
_CACHED_AT = {"Cache": "_path", "ZipExtractCache": "extract_path", "TarExtractAll": "_extract_path"}


def _walk(obj, outer: Path | None, how: list[str], missing: list, present: list, seen: set) -> None:
    if id(obj) in seen or obj is None:
        return
    seen.add(id(obj))
    kind = _kind(obj)
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _walk(item, outer, how, missing, present, seen)
    elif kind in _CACHED_AT:
        path = Path(getattr(obj, _CACHED_AT[kind]))
        if path.exists():
            present.append(path)
            return
        inner = getattr(obj, "_streamer", None) or getattr(obj, "dlc", None)
        _walk(inner, path, [] if kind == "Cache" else ["unpack it"], missing, present, seen)
    elif kind in ("GzipExtract", "Bz2Extract", "Lz4Extract"):
        step = {"GzipExtract": "gunzip it", "Bz2Extract": "bunzip2 it", "Lz4Extract": "lz4-decompress it"}[kind]
        _walk(obj._streamer, outer, [step] + how, missing, present, seen)
    elif kind in ("TarExtract", "ZipExtract"):
        member = getattr(obj, "_tar_path", None) or getattr(obj, "zip_path", "")
        inner = getattr(obj, "_streamer", None) or getattr(obj, "dlc", None)
        _walk(inner, outer, [f"take {member} out of it"] + how, missing, present, seen)
    elif kind == "Download":
        _download(obj, outer, how, missing, present)
    elif kind == "LocalDownload":
        if obj._path.exists():
            present.append(obj._path)
        else:
            missing.append(MissingFile(None, None, obj._path, note=getattr(obj, "_message", "") or ""))
    elif kind in ("Lazy", "PackageDataFile", "StringFile") or callable(obj) and not kind:
        return
    elif kind and hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            if isinstance(value, (list, tuple)) or _kind(value):
                _walk(value, outer, how, missing, present, seen)


def _download(obj, outer: Path | None, how: list[str], missing: list, present: list) -> None:
    cache = Path(obj._cache_path) if obj._cache_path else None
    if cache is not None and cache.exists():
        present.append(cache)
        return
    if obj._path is not None:  # downloaded earlier in this process (a temporary file)
        return
    urls = [m.url for m in obj.mirrors if hasattr(m, "url")]
    local = [m._path for m in obj.mirrors if _kind(m) == "LocalDownload"]
    if local and local[0].exists():
        present.append(local[0])
        return
    if not urls and local:  # a file ir_datasets cannot download (a licence to sign, a DVD)
        note = next((getattr(m, "_message", "") for m in obj.mirrors if _kind(m) == "LocalDownload"), "")
        missing.append(MissingFile(None, obj.expected_md5, local[0], note=note or ""))
        return
    place, steps = (cache, []) if cache else (local[0], []) if local else (outer, how)
    missing.append(MissingFile(urls[0] if urls else None, obj.expected_md5, place, " and ".join(steps)))


# ---------------------------------------------------------------------------------------------- offline


def _offline(missing: list[MissingFile]) -> bool:
    """Whether the servers of the missing files cannot be reached (or ``RADCOT_OFFLINE=1``)."""
    if os.environ.get("RADCOT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    from radcot.net import reachable

    hosts = {m.url.split("/")[2]: m.url for m in missing if m.url}
    return not hosts or not all(reachable(url, PROBE_TIMEOUT_S) for url in hosts.values())


def _explain(name: str, missing: list[MissingFile], cause: str = "") -> str:
    """The one line: which files, from where, to where; and the connected-machine alternative."""
    files = "; ".join(m.describe() for m in missing)
    where = home()
    why = cause or (f"and {', '.join(sorted({m.url.split('/')[2] for m in missing if m.url})) or 'its source'} "
                    f"cannot be reached (offline?)")
    return (f"dataset {name}: ir_datasets' cache {where} lacks {len(missing)} file(s) {why}. On a connected machine "
            f"download {files} (ir_datasets checks the md5 when it downloads them itself: there, `ir_datasets export "
            f"{name} queries > /dev/null` fills its cache, which you can copy here to the same place)")


def ensure_local(name: str, handlers: Iterable[Any]) -> list[Path]:
    """Make sure every file behind ``handlers`` is in ir_datasets' cache; returns the source files.

    Online, ir_datasets downloads what is missing (checking MD5s). Offline, one line says what to fetch.

    Raises:
        OfflineResourceError: files are missing and their servers cannot be reached, or the download failed.
    """
    missing: list[MissingFile] = []
    present: list[Path] = []
    for handler in handlers:
        m, p = plan(handler)
        missing += [x for x in m if x not in missing]
        present += p
    if missing and _offline(missing):
        raise OfflineResourceError(_explain(name, missing))
    return present


@contextlib.contextmanager
def bounded_downloads(name: str) -> Iterator[None]:
    """ir_datasets calls with a socket timeout (no silent server holds them), their failures turned into one line."""
    from radcot.net import network_timeout

    try:
        with network_timeout(30):
            yield
    except (RadcotError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - ir_datasets raises plain exceptions for download/format failures
        msg = " ".join(str(e).split())[:300]
        raise OfflineResourceError(f"dataset {name}: ir_datasets could not provide it ({type(e).__name__}: {msg}); "
                                   f"its cache is {home()}") from e


# ---------------------------------------------------------------------------------------------- export


def _export_dir(name: str) -> Path:
    from radcot.utils import cache_dir

    return cache_dir() / "ir_datasets" / name.replace("/", "__")


def _source_state(sources: list[Path]) -> list:
    return sorted([str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in sources if p.exists())


def _fresh(target: Path, sources: list[Path]) -> bool:
    state = target.with_name(target.name + ".source.json")
    try:
        return target.is_file() and json.loads(state.read_text(encoding="utf-8")) == _source_state(sources)
    except (OSError, ValueError):
        return False


def _export(name: str, what: str, target: Path, sources: list[Path], write) -> Path:
    """Write ``target`` with ``write(file)`` unless it is fresh for ``sources``; atomically, with a state file."""
    from radcot.utils import atomic_write, write_json

    if _fresh(target, sources):
        return target
    logger.info("exporting ir_datasets %s %s to %s", name, what, target)
    with bounded_downloads(name), atomic_write(target) as f:
        n = write(f)
    if n == 0:
        target.unlink()
        raise DataFormatError(f"ir_datasets {name}", None, f"at least one {what} record", "none")
    write_json(target.with_name(target.name + ".source.json"), _source_state(sources))
    return target


def _checked_id(name: str, what: str, i: int, value) -> str:
    from radcot.data.readers import check_trec_id
    from radcot.records import InvalidIdError

    try:
        return check_trec_id(str(value), f"{what} id")
    except InvalidIdError as e:
        raise DataFormatError(f"ir_datasets {name} {what}s", None, f"ids without whitespace (record {i})",
                              repr(value), str(e).split(":")[-1].strip()) from None


def _query_text(q) -> str:
    return q.default_text() if hasattr(q, "default_text") else q.text


def _write_queries(name: str, ds):
    def write(f) -> int:
        n = 0
        for n, q in enumerate(ds.queries_iter(), 1):
            qid = _checked_id(name, "query", n, q.query_id)
            f.write(json.dumps({"_id": qid, "text": " ".join(str(_query_text(q)).split())}, ensure_ascii=False) + "\n")
        return n
    return write


def _write_qrels(name: str, ds):
    def write(f) -> int:
        n = 0
        for n, qrel in enumerate(ds.qrels_iter(), 1):
            qid, did = _checked_id(name, "query", n, qrel.query_id), _checked_id(name, "document", n, qrel.doc_id)
            f.write(f"{qid} 0 {did} {int(qrel.relevance)}\n")
        return n
    return write


def _doc_fields(doc) -> tuple[str, str]:
    """``(title, text)`` of an ir_datasets document (whatever its type's fields)."""
    fields = getattr(doc, "_fields", ())
    title = doc.title if "title" in fields and isinstance(doc.title, str) else ""
    for field in ("text", "body", "contents"):
        if field in fields and isinstance(getattr(doc, field), str):
            return title, getattr(doc, field)
    return title, doc.default_text()


def _write_docs(name: str, ds, show_progress: bool | None):
    def write(f) -> int:
        from radcot.utils import progress

        n = 0
        with progress(desc=f"exporting {name} documents", unit="doc", show_progress=show_progress) as bar:
            for n, doc in enumerate(ds.docs_iter(), 1):
                title, text = _doc_fields(doc)
                record = {"_id": _checked_id(name, "document", n, doc.doc_id), "title": title, "text": text}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(1)
        return n
    return write


# ---------------------------------------------------------------------------------------------- loading


def docs_handler(ds):
    """The documents handler of an ir_datasets dataset, found without calling it.

    Calling ``docs_handler()`` runs ir_datasets' cache migrations, which delete files such as MS MARCO's
    ``collection.tsv`` when their version stamp is missing; inspecting the plan must not.
    """
    for part in getattr(ds, "_constituents", ()):
        inner = getattr(part, "_wrapped", None) if _kind(part) == "Migrator" else part
        if _kind(inner) == "Dataset":
            found = docs_handler(inner)
            if found is not None:
                return found
        elif inner is not None and hasattr(type(inner), "docs_iter"):
            return inner
    return None


def _docs_source(ds) -> Path | None:
    """An ir_datasets documents file radcot reads in place (MS MARCO's ``collection.tsv``), when cached."""
    handler = docs_handler(ds)
    path = getattr(getattr(handler, "_dlc", None), "_path", None)
    return Path(path) if path is not None and Path(path).name == "collection.tsv" and Path(path).is_file() else None


def load(name: str, index: str | None = None, show_progress: bool | None = None) -> IrdsFiles:
    """Resolve an ir_datasets id to radcot-format files (see the module docstring).

    Args:
        name: an ir_datasets id, optionally prefixed ``irds:``.
        index: an index to search (a directory or a pyserini prebuilt name); without one, the documents are
            exported so that an index can be built from them (MS MARCO passage: pyserini's prebuilt index).
        show_progress: progress bar while exporting documents.

    Raises:
        RadcotError: not an ir_datasets id, or the dataset has no queries.
        OfflineResourceError: its files are not in ir_datasets' cache and cannot be downloaded now.
    """
    irds_id, _ = strip_prefix(name)
    irds = ir_datasets()
    try:
        ds = irds.load(irds_id)
    except KeyError:
        raise RadcotError(f"{irds_id!r} is not an ir_datasets id (see https://ir-datasets.com)") from None
    if not ds.has_queries():
        raise RadcotError(f"ir_datasets {irds_id} has no queries; name one of its subsets with queries and qrels "
                          f"(e.g. {irds_id}/test)")
    prebuilt = PREBUILT_INDEX.get(irds.docs_parent_id(irds_id)) if ds.has_docs() else None
    direct = _docs_source(ds) if ds.has_docs() else None
    export_docs = index is None and ds.has_docs() and direct is None and prebuilt is None
    handlers = [ds.queries_handler()] + ([ds.qrels_handler()] if ds.has_qrels() else [])
    sources = ensure_local(irds_id, handlers + ([docs_handler(ds)] if export_docs else []))
    out = _export_dir(irds_id)
    queries = _export(irds_id, "query", out / "queries.jsonl", sources, _write_queries(irds_id, ds))
    qrels = _export(irds_id, "qrels", out / "qrels.txt", sources, _write_qrels(irds_id, ds)) if ds.has_qrels() else None
    corpus = direct if index is None else None
    if export_docs:
        docs_id = irds.docs_parent_id(irds_id)
        corpus = _export(docs_id, "document", _export_dir(docs_id) / "corpus.jsonl", sources,
                         _write_docs(docs_id, ds, show_progress))
    if index is None and corpus is None:
        index = prebuilt
    return IrdsFiles(irds_id, queries, qrels, corpus, index)
