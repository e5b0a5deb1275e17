"""Readers and writers for the IR ecosystem's file formats, streaming and strict.

Formats: BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``), pyserini/Anserini JsonCollection
(``{"id", "contents"}``; a directory is read recursively, as Anserini does; a ``.json`` file may also hold one
JSON object or a JSON array), MS MARCO TSV (``pid \\t text``, ``qid \\t text``), TREC qrels, TREC topics (TSV,
``<top>`` SGML as in TREC ad hoc/Robust, and ``<topic number="..."><query>`` XML as in the TREC Web/COVID
tracks), TREC runs. Gzip-compressed files are read transparently, recognised by their content (a gzip file
without ``.gz`` is read too; a ``.gz`` file that is not gzip is refused).

Rules shared by every reader:

- Every malformed line raises :class:`~radcot.records.DataFormatError` naming the file, the line number,
  what was expected and what was found; a line that is not UTF-8 raises
  :class:`~radcot.records.EncodingError` ("FILE line N is not UTF-8 (byte 0x.. at column C); re-save it as
  UTF-8").
- A UTF-8 byte-order mark at the start of a file is accepted and stripped (Windows editors write one).
- Lines end at ``\\n``, ``\\r\\n`` or a lone ``\\r``.
- Query and document ids are non-empty and hold no whitespace (TREC runs and qrels are whitespace-separated,
  so such an id could not be written back); scores in runs are finite numbers; relevance is an integer.
- An input with no records (empty file, only blank lines) is an error, not an empty result.
- A TSV collection or queries file whose first line is a column header (``id \\t text``, ``pid \\t passage``,
  ``qid \\t query``, ``docid \\t title \\t text``...) has that line skipped, with a warning: it is not a record.
- A directory, a dangling symbolic link, or a zip/bzip2/xz/zstd file given where a text file is expected is
  named as such, with the fix.

Example:
    >>> from radcot.data.readers import read_queries
    >>> queries = list(read_queries("data/demo"))  # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import numbers
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from radcot.records import DataFormatError, Doc, EncodingError, InvalidIdError, Qrel, Query, RadcotError, ScoredDoc

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_BEIR_QRELS_SPLITS = ("test", "dev", "train")
_BOM = b"\xef\xbb\xbf"


# ------------------------------------------------------------------------------------------- text files


class TextFile:
    """The lines of a text file (``.gz`` read transparently), decoded as strict UTF-8, BOM stripped.

    Iterating yields each line without its terminator; :attr:`lineno` is the number of the line last
    yielded. Errors (not UTF-8, damaged gzip) raise :class:`DataFormatError` subclasses naming the line.

    Example:
        >>> with TextFile("data/demo/queries.test.tsv") as f:  # doctest: +SKIP
        ...     first = next(iter(f))
    """

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.lineno = 0
        self._raw = _open_binary(self.path)

    def __enter__(self) -> "TextFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._raw.close()

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._raw:
                for raw in chunk.splitlines():  # \n, \r\n and a lone \r all end a line
                    self.lineno += 1
                    yield self._decode(raw)
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataFormatError(self.path, self.lineno + 1, "a complete gzip file", f"damaged data ({e})",
                                  "Re-download or re-compress the file") from None

    def _decode(self, raw: bytes) -> str:
        if self.lineno == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise EncodingError(self.path, self.lineno, raw[e.start], e.start + 1) from None

    def read(self) -> str:
        """The whole file as one string (lines joined by ``\\n``)."""
        return "\n".join(self)


#: leading bytes of compressed formats: gzip is read; the others are named, with the fix
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
          (b"\x28\xb5\x2f\xfd", "zstd"))


def not_a_file(path: PathLike) -> str | None:
    """What ``path`` is when it is not a regular file radcot can read (``None`` when it is one).

    Example:
        >>> not_a_file("/")
        'a directory'
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return f"a symbolic link to {os.readlink(path)}, which does not exist"
    if not path.exists():
        return "nothing (no such file)"
    if path.is_dir():
        return "a directory"
    if not path.is_file():
        return "not a regular file (a pipe, socket or device)"
    return None


def require_file(path: PathLike, what: str = "") -> Path:
    """``path`` if it is a regular file; else an error naming what it is instead.

    Raises:
        FileNotFoundError: nothing is there, or a dangling symbolic link (the message names its target).
        DataFormatError: a directory or a special file.
    """
    path = Path(path)
    found = not_a_file(path)
    if found is None:
        return path
    name = f"{what} file" if what else "file"
    if not path.exists():
        raise FileNotFoundError(f"{name} {path} is {found}" if path.is_symlink() else f"{name} {path} does not exist")
    raise DataFormatError(path, None, f"a {name}", found, "Point at the file itself" if found == "a directory" else "")


def _compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        head = f.read(6)
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _open_binary(path: Path):
    """The raw bytes of ``path``; gzip (by content, whatever the name) decompressed on the fly."""
    require_file(path)
    try:
        kind = _compression(path)
        if kind == "gzip":
            if not path.name.endswith(".gz"):
                logger.info("%s is gzip-compressed (its name has no .gz); reading it decompressed", path)
            return gzip.open(path, "rb")
    except PermissionError:
        raise RadcotError(f"{path}: permission denied; check the file's permissions") from None
    if kind is not None:
        raise DataFormatError(path, None, "a text file (plain or gzip-compressed)", f"a {kind} file",
                              f"Decompress it first{' (unzip)' if kind == 'zip' else ''} and point at the result")
    if path.name.endswith(".gz"):
        raise DataFormatError(path, None, "a gzip-compressed file (its name ends in .gz)", "plain bytes (no gzip "
                              "header)", f"Rename it without .gz ({path.name[:-3]}) or compress it")
    return open(path, "rb")


def open_text(path: PathLike) -> TextFile:
    """Open ``path`` for reading lines with the readers' rules (see :class:`TextFile`)."""
    return TextFile(path)


_open = open_text  # the name other modules import


def _lines(path: PathLike) -> Iterator[tuple[int, str]]:
    """Non-blank lines of ``path`` with their line numbers."""
    with open_text(path) as f:
        for line in f:
            if line.strip():
                yield f.lineno, line


def _json_line(path, lineno, line):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, lineno, "one JSON object per line", f"{line[:80]!r} ({e.msg})") from None
    except (ValueError, RecursionError) as e:  # a 5,000-digit number, nesting too deep
        raise DataFormatError(path, lineno, "one JSON object per line", f"{line[:80]!r} ({e})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, "a JSON object", f"a JSON {type(obj).__name__}")
    return obj


def _first_key(obj: Mapping, keys: Iterable[str]):
    for k in keys:
        if k in obj:
            return k
    return None


def _check_id(path, lineno, kind: str, value) -> str:
    """``value`` as an id: a string or an integer, non-empty, without whitespace."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(path, lineno, f"a {kind} id (string or integer)", f"a JSON {type(value).__name__}")
    value = str(value)
    if value.split() != [value]:
        raise DataFormatError(path, lineno, f"a non-empty {kind} id without whitespace (TREC files are "
                              f"whitespace-separated)", repr(value), "Replace the spaces in the id, e.g. with '_'")
    return value


def _check_text(path, lineno, field: str, value, allow_empty: bool = True) -> str:
    """``value`` as text: a string that UTF-8 can hold (JSON can spell lone surrogates)."""
    if not isinstance(value, str):
        raise DataFormatError(path, lineno, f'"{field}" to be a string', f"a JSON {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DataFormatError(path, lineno, f'"{field}" to be text UTF-8 can hold',
                              "a lone surrogate escape (\\ud800-\\udfff)") from None
    if not allow_empty and not value.strip():
        raise DataFormatError(path, lineno, f"a non-empty {field}", repr(value))
    return value


def _check_ids_unique(path, kind: str, records: Iterable[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for lineno, rid in records:
        if rid in seen:
            raise DataFormatError(path, lineno, f"unique {kind} ids", f"{kind} id {rid!r} again (first at line "
                                  f"{seen[rid]})", f"Remove the duplicate {kind}")
        seen[rid] = lineno


# ----------------------------------------------------------------------------------------------- corpus

#: files of a collection directory: Anserini's JsonCollection suffixes (.json, .jsonl, .gz) and TSV
_CORPUS_FILE_RE = re.compile(r"\.(jsonl?|tsv)(\.gz)?$")
_NOT_CORPUS_RE = re.compile(r"^(queries|topics|qrels)\b", re.I)


def _corpus_files(path: Path) -> list[Path]:
    """The files holding a collection's documents (one for BEIR/MS MARCO, several for a JsonCollection)."""
    if not path.is_dir():
        if path.exists() and not path.is_file():
            require_file(path, "collection")
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(f"collection {path} is {not_a_file(path)}")
        if not path.exists():
            raise FileNotFoundError(f"collection {path} does not exist (expected a BEIR directory, a JsonCollection "
                                    f"directory/file or an MS MARCO collection.tsv)")
        return [path]
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).exists() or (path / name).is_symlink():
            return [require_file(path / name, "corpus")]
    names = sorted(p.name for p in path.iterdir())
    if (path / "qrels").is_dir() or any(_NOT_CORPUS_RE.match(n) for n in names):
        raise DataFormatError(path, None, "corpus.jsonl in this BEIR-layout directory (it has queries/qrels)",
                              f"no corpus file among {names[:10]}", "Add corpus.jsonl or point at the corpus file")
    files = _collection_dir_files(path)
    if not files:
        raise DataFormatError(path, None, "corpus.jsonl (BEIR) or *.jsonl/*.json/*.tsv collection files (in it or "
                              "its subdirectories)", f"none among {names[:10]}")
    return files


def _collection_dir_files(root: Path) -> list[Path]:
    """A JsonCollection directory's files, recursively (as Anserini's collection walk), in path order.

    Symbolic links to directories are not followed (as Anserini's); a matching name that is not a readable
    file (a dangling link) is an error, not a silent skip.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if _CORPUS_FILE_RE.search(name):
                files.append(require_file(Path(dirpath) / name, "collection"))
    return sorted(files, key=lambda f: f.relative_to(root).parts)


def read_corpus(path: PathLike, check_duplicates: bool = True) -> Iterator[Doc]:
    """Stream the documents of a collection, one :class:`Doc` at a time.

    Args:
        path: a BEIR directory (``corpus.jsonl``), a JsonCollection directory or file (``{"id", "contents"}``),
            a BEIR-style JSONL file (``{"_id", "title", "text"}``) or an MS MARCO TSV (``pid \\t text``).
        check_duplicates: raise on a repeated doc id (keeps a set of ids: ~70 bytes per doc).

    Returns:
        An iterator of :class:`Doc`; nothing is held in memory but the id set.

    Raises:
        DataFormatError: a malformed line, a duplicate id, an id with whitespace, or no document at all.
    """
    seen: dict[str, tuple[str, int]] | None = {} if check_duplicates else None
    n = 0
    for file in _corpus_files(Path(path)):
        reader = _read_tsv_docs if re.search(r"\.tsv(\.gz)?$", file.name) else _read_jsonl_docs
        for lineno, doc in reader(file):
            if seen is not None:
                _remember_doc(seen, file, lineno, doc.doc_id)
            n += 1
            yield doc
    if n == 0:
        raise DataFormatError(path, None, "at least one document", "no documents (empty collection)")


def _remember_doc(seen: dict[str, tuple[str, int]], file: Path, lineno: int, doc_id: str) -> None:
    if doc_id in seen:
        f0, l0 = seen[doc_id]
        raise DataFormatError(file, lineno, "unique document ids", f"doc id {doc_id!r} again (first at {f0}, "
                              f"line {l0})", "Remove or rename the duplicate document")
    seen[doc_id] = (file.name, lineno)


def _read_jsonl_docs(file: Path) -> Iterator[tuple[int, Doc]]:
    """One JSON object per line; or, as Anserini's JsonCollection also accepts, a file holding one JSON object
    (possibly spread over lines) or a JSON array of them."""
    lines = _lines(file)
    first = next(lines, None)
    if first is None:
        return
    if not _json_object_line(first[1]):
        whole = _whole_json(file)
        if whole is not None:
            yield from _json_file_docs(file, whole)
            return
    for lineno, line in _chain(first, lines):
        yield lineno, _json_doc(file, lineno, _json_line(file, lineno, line))


def _chain(first, rest):
    yield first
    yield from rest


def _json_object_line(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, RecursionError):
        return False


#: larger files are never parsed whole (a JSONL file with a broken first line must not be loaded into memory)
_WHOLE_JSON_LIMIT = 256 << 20


def _whole_json(file: Path):
    """The file parsed as one JSON document, or ``None`` when it is not one (then it is read line by line)."""
    if file.stat().st_size > _WHOLE_JSON_LIMIT:
        return None
    with open_text(file) as f:
        text = f.read()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None


def _json_file_docs(file: Path, value) -> Iterator[tuple[int, Doc]]:
    if isinstance(value, dict):
        yield 1, _json_doc(file, 1, value)
        return
    for i, obj in enumerate(value, 1):
        if not isinstance(obj, dict):
            raise DataFormatError(file, None, "a JSON array of document objects", f"item {i}: a JSON "
                                  f"{type(obj).__name__}")
        yield 1, _json_doc(file, 1, obj)


def _json_doc(file: Path, lineno: int, obj: dict) -> Doc:
    idk = _first_key(obj, ("_id", "id", "docid", "doc_id"))
    if idk is None:
        raise DataFormatError(file, lineno, 'a document id field ("_id" or "id")', f"fields {sorted(obj)}")
    tk = _first_key(obj, ("contents", "text"))
    if tk is None:
        raise DataFormatError(file, lineno, 'a text field ("text" or "contents")', f"fields {sorted(obj)}")
    doc_id = _check_id(file, lineno, "document", obj[idk])
    text = _check_text(file, lineno, tk, obj[tk])
    return Doc(doc_id, text, _check_text(file, lineno, "title", obj.get("title") or ""))


#: first-column and second-column names that make a TSV's first line a header, not a record
_ID_COLUMNS = {"id", "_id", "pid", "docid", "doc_id", "doc-id", "did", "passage_id", "passageid", "corpus-id",
               "corpus_id", "qid", "query_id", "query-id", "queryid", "topic", "topic_id"}
_TEXT_COLUMNS = {"text", "passage", "contents", "content", "title", "body", "document", "doc", "query",
                 "question", "topic", "description"}


def _tsv_records(file: Path) -> Iterator[tuple[int, str, list[str]]]:
    """``(line, line text, tab-separated fields)`` of the non-blank lines, a column-header first line skipped.

    MS MARCO's own files have no header, and neither Anserini nor ir_datasets skip one: a header would become
    a document or query named ``id``. A first line whose first two fields are column names (``pid \\t passage``,
    ``qid \\t query``, ``docid \\t title \\t text``...) is therefore skipped, with a warning.
    """
    first = True
    for lineno, line in _lines(file):
        parts = line.split("\t")
        if first and _is_header(parts):
            logger.warning("%s, line %d: skipped the column header %r (not a record)", file, lineno, line[:80])
            first = False
            continue
        first = False
        yield lineno, line, parts


def _is_header(parts: list[str]) -> bool:
    return (len(parts) >= 2 and parts[0].strip().lower() in _ID_COLUMNS
            and parts[1].strip().lower() in _TEXT_COLUMNS)


def _read_tsv_docs(file: Path) -> Iterator[tuple[int, Doc]]:
    for lineno, line, parts in _tsv_records(file):
        if len(parts) == 2:
            doc_id, text, title = parts[0], parts[1], ""
        elif len(parts) == 3:  # pid \t title \t text
            doc_id, title, text = parts
        else:
            raise DataFormatError(file, lineno, "2 tab-separated fields (doc-id, text) or 3 (doc-id, title, text)",
                                  f"{len(parts)} fields: {line[:80]!r}")
        yield lineno, Doc(_check_id(file, lineno, "document", doc_id.strip()), text, title)


# ---------------------------------------------------------------------------------------------- queries

def _queries_file(path: Path) -> Path:
    if path.is_dir():
        for name in ("queries.jsonl", "queries.jsonl.gz", "queries.tsv", "topics.tsv", "topics.txt"):
            if (path / name).exists() or (path / name).is_symlink():
                return require_file(path / name, "queries")
        raise DataFormatError(path, None, "queries.jsonl (BEIR layout) in the directory",
                              f"{sorted(p.name for p in path.iterdir())[:10]}")
    return require_file(path, "queries")


def read_queries(path: PathLike) -> list[Query]:
    """Read queries from a BEIR directory/``queries.jsonl``, a ``qid \\t text`` TSV, TREC ``<top>`` topics or
    TREC XML topics (``<topic number="..."><query>``).

    TREC ``<top>`` topics use the ``<title>`` field; XML topics their ``<query>``. In a TSV, fields after the text are ignored (e.g. the released
    ``qid \\t query \\t cot`` files).

    Returns:
        The queries in file order.

    Raises:
        DataFormatError: a malformed line, a duplicate id, an id with whitespace, an empty text, an unclosed
            ``<top>``, or no query at all.
    """
    file = _queries_file(Path(path))
    queries = _QUERY_READERS[_queries_format(file)](file)
    if not queries:
        raise DataFormatError(file, None, "at least one query", "no queries (empty file)")
    _check_ids_unique(file, "query", ((lineno, q.query_id) for lineno, q in queries))
    return [q for _, q in queries]


def _queries_format(file: Path) -> str:
    """``sgml`` (``<top>``), ``xml`` (``<topic number=...>``), ``jsonl`` or ``tsv``, from the file's start."""
    first = next((line.lstrip() for _, line in _lines(file)), "")
    if first.startswith("<"):
        with open_text(file) as f:
            head = "\n".join(line for _, line in zip(range(200), f))
        if re.search(r"<top>", head, re.I):
            return "sgml"
        if re.search(r"<topic[\s>]", head) or first.startswith("<?xml"):
            return "xml"
        return "sgml"  # e.g. <topics> wrapping <top> blocks further down: the SGML reader says what it misses
    return "jsonl" if first.startswith("{") else "tsv"


def _read_jsonl_queries(file: Path) -> list[tuple[int, Query]]:
    out = []
    for lineno, line in _lines(file):
        obj = _json_line(file, lineno, line)
        idk = _first_key(obj, ("_id", "id", "query_id", "qid"))
        tk = _first_key(obj, ("text", "query", "title", "contents"))
        if idk is None or tk is None:
            raise DataFormatError(file, lineno, 'fields "_id" and "text"', f"fields {sorted(obj)}")
        qid = _check_id(file, lineno, "query", obj[idk])
        out.append((lineno, Query(qid, _check_text(file, lineno, "query text", obj[tk], allow_empty=False))))
    return out


def _read_tsv_queries(file: Path) -> list[tuple[int, Query]]:
    out = []
    for lineno, line, parts in _tsv_records(file):
        if len(parts) < 2:
            raise DataFormatError(file, lineno, "2 tab-separated fields (query-id, text)",
                                  f"{len(parts)} field: {line[:80]!r}", "Separate the id and the text with a tab")
        qid = _check_id(file, lineno, "query", parts[0].strip())
        out.append((lineno, Query(qid, _check_text(file, lineno, "query text", parts[1].strip(), False))))
    return out


_NUM_RE = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)", re.I)
_TITLE_RE = re.compile(r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?=<desc>|<narr>|<con>|<fac>|<def>|$)", re.S | re.I)


def _read_sgml_topics(file: Path) -> list[tuple[int, Query]]:
    with open_text(file) as f:
        text = f.read()
    if not re.search(r"<top>", text, re.I):
        raise DataFormatError(file, None, "TREC topics: <top> blocks with <num> and <title>, or XML <topic "
                              'number="..."> elements', f"neither (starts {text.strip()[:60]!r})")
    out = []
    for lineno, block in _sgml_blocks(file, text):
        num, title = _NUM_RE.search(block), _TITLE_RE.search(block)
        if not num or not title:
            raise DataFormatError(file, lineno, "<num> and <title> in each <top> block", f"{block.strip()[:80]!r}")
        qid = _check_id(file, lineno, "query", num.group(1))
        out.append((lineno, Query(qid, _check_text(file, lineno, "<title>", " ".join(title.group(1).split()),
                                                   False))))
    return out


def _sgml_blocks(file: Path, text: str) -> Iterator[tuple[int, str]]:
    """``(line, body)`` of each ``<top> ... </top>``; a ``<top>`` closed by nothing is an error."""
    starts = [m.start() for m in re.finditer(r"<top>", text, re.I)]
    for i, start in enumerate(starts):
        limit = starts[i + 1] if i + 1 < len(starts) else len(text)
        end = text.lower().find("</top>", start, limit)
        lineno = text.count("\n", 0, start) + 1
        if end < 0:
            found = "another <top>" if i + 1 < len(starts) else "the end of the file"
            raise DataFormatError(file, lineno, "</top> closing the <top> opened on this line", found,
                                  "Close the topic with </top>")
        yield lineno, text[start + len("<top>"):end]


def _read_xml_topics(file: Path) -> list[tuple[int, Query]]:
    """TREC XML topics (Web 2009-14, COVID, ...): each ``<topic number="N">``'s ``<query>`` (else ``<title>``).

    As ir_datasets' ``TrecXmlQueries`` and Anserini's web/COVID topic readers read them.
    """
    with open_text(file) as f:
        text = f.read()
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DataFormatError(file, e.position[0], "well-formed XML topics", f"an XML error ({e})") from None
    topics = [root] if root.tag == "topic" else list(root.iter("topic"))
    lines = [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r"<topic[\s>]", text)]
    out = []
    for i, topic in enumerate(topics):
        lineno = lines[i] if i < len(lines) else None
        qid, query = topic.get("number") or topic.get("id"), topic.find("query")
        if query is None:
            query = topic.find("title")
        if qid is None or query is None:
            raise DataFormatError(file, lineno, '<topic number="..."> holding a <query> (or <title>)',
                                  f"attributes {dict(topic.attrib)} and elements {[c.tag for c in topic][:6]}")
        qtext = " ".join("".join(query.itertext()).split())
        out.append((lineno, Query(_check_id(file, lineno, "query", qid.strip()),
                                  _check_text(file, lineno, f"<{query.tag}>", qtext, False))))
    return out


_QUERY_READERS: dict[str, Callable[[Path], list[tuple[int, Query]]]] = {
    "sgml": _read_sgml_topics, "xml": _read_xml_topics, "jsonl": _read_jsonl_queries, "tsv": _read_tsv_queries}


# ------------------------------------------------------------------------------------------------ qrels

_QRELS_HEADER_LAST = {"score", "relevance", "rel", "label", "judgment", "judgement", "grade"}


def _qrels_file(path: Path, split: str | None = None) -> Path:
    if path.is_dir():
        qdir = path / "qrels" if (path / "qrels").is_dir() else path
        for s in ([split] if split else _BEIR_QRELS_SPLITS):
            if (qdir / f"{s}.tsv").exists() or (qdir / f"{s}.tsv").is_symlink():
                return require_file(qdir / f"{s}.tsv", "qrels")
        raise DataFormatError(path, None, f"qrels/{split or 'test'}.tsv (BEIR layout)",
                              f"{sorted(p.name for p in qdir.iterdir())[:10]}")
    return require_file(path, "qrels")


def read_qrels(path: PathLike, split: str | None = None) -> list[Qrel]:
    """Read relevance judgements: TREC qrels (``qid 0 docid rel``) or BEIR TSV (``query-id corpus-id score``).

    A first line whose last field is a column name (``score``, ``relevance``...) is a header and skipped.

    Args:
        path: a file or a BEIR directory (``qrels/test.tsv``, or ``split``).
        split: BEIR split name when ``path`` is a directory.

    Raises:
        DataFormatError: a malformed line, a repeated (query, doc) pair, or no judgement at all.
    """
    file = _qrels_file(Path(path), split)
    out: list[Qrel] = []
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in _lines(file):
        parts = _qrels_fields(line)
        if not out and not seen and parts[-1].lower() in _QRELS_HEADER_LAST:
            continue  # header (query-id corpus-id score)
        qrel = _parse_qrel(file, lineno, line, parts)
        if (qrel.query_id, qrel.doc_id) in seen:
            raise DataFormatError(file, lineno, "one judgement per (query, doc)", f"({qrel.query_id}, "
                                  f"{qrel.doc_id}) again (first at line {seen[(qrel.query_id, qrel.doc_id)]})")
        seen[(qrel.query_id, qrel.doc_id)] = lineno
        out.append(qrel)
    if not out:
        raise DataFormatError(file, None, "at least one judgement", "no judgements (empty file)")
    return out


def _qrels_fields(line: str) -> list[str]:
    """Tab-separated fields when the line has 3-4 of them (so an id with a space is caught), else whitespace."""
    if "\t" in line:
        parts = [p.strip() for p in line.strip().split("\t")]
        if len(parts) in (3, 4):
            return parts
    return line.split()


def _parse_qrel(file: Path, lineno: int, line: str, parts: list[str]) -> Qrel:
    if len(parts) == 4:
        qid, _, did, rel = parts
    elif len(parts) == 3:
        qid, did, rel = parts
    else:
        raise DataFormatError(file, lineno, "4 fields (query-id 0 doc-id relevance) or 3 (query-id doc-id score)",
                              f"{len(parts)} fields: {line.strip()[:80]!r}")
    return Qrel(_check_id(file, lineno, "query", qid), _check_id(file, lineno, "document", did),
                _relevance(file, lineno, rel))


def _relevance(file: Path, lineno: int, rel: str) -> int:
    try:
        return int(rel)
    except ValueError:
        pass
    try:
        value = float(rel)
    except ValueError:
        value = math.nan
    if not value.is_integer():
        raise DataFormatError(file, lineno, "an integer relevance", repr(rel))
    return int(value)


def check_qrels(qrels: Iterable[Qrel], queries: Iterable[Query], source: str = "qrels") -> list[str]:
    """Return (and log a warning for) query ids judged in ``qrels`` but absent from ``queries``."""
    known = {q.query_id for q in queries}
    unknown = sorted({q.query_id for q in qrels if q.query_id not in known})
    if unknown:
        logger.warning("%s: %d judged query ids are not among the queries (e.g. %s); they are ignored "
                       "by evaluation", source, len(unknown), ", ".join(unknown[:5]))
    return unknown


# ------------------------------------------------------------------------------------------------- runs

Run = dict[str, dict[str, float]]


def read_run(path: PathLike) -> Run:
    """Read a TREC run (``qid Q0 docid rank score tag``) into ``{qid: {docid: score}}``.

    Raises:
        DataFormatError: a line without 6 fields, a rank that is not an integer, a score that is not a finite
            number (``nan``, ``inf``), a doc twice for one query, or an empty run.
    """
    run: Run = defaultdict(dict)
    for lineno, line in _lines(path):
        qid, did, score = _parse_run_line(path, lineno, line)
        if did in run[qid]:
            raise DataFormatError(path, lineno, "each doc once per query", f"doc {did!r} again for query {qid!r}")
        run[qid][did] = score
    if not run:
        raise DataFormatError(path, None, "at least one line (query-id Q0 doc-id rank score tag)",
                              "an empty run")
    return dict(run)


def _parse_run_line(path, lineno: int, line: str) -> tuple[str, str, float]:
    parts = line.split()
    if len(parts) != 6:
        raise DataFormatError(path, lineno, "6 fields (query-id Q0 doc-id rank score tag)",
                              f"{len(parts)} fields: {line.strip()[:80]!r}")
    try:
        int(parts[3])
    except ValueError:
        raise DataFormatError(path, lineno, "an integer rank in field 4", repr(parts[3])) from None
    try:
        score = float(parts[4])
    except ValueError:
        raise DataFormatError(path, lineno, "a numeric score in field 5", repr(parts[4])) from None
    if not math.isfinite(score):
        raise DataFormatError(path, lineno, "a finite score in field 5", repr(parts[4]),
                              "nan/inf scores cannot be ranked; fix the system that wrote the run")
    return parts[0], parts[2], score


def run_from_scored(scored: Iterable[ScoredDoc]) -> Run:
    """Turn :class:`ScoredDoc` records into ``{qid: {docid: score}}``."""
    run: Run = defaultdict(dict)
    for s in scored:
        run[s.query_id][s.doc_id] = s.score
    return dict(run)


def check_trec_id(value: str, what: str) -> str:
    """``value`` if a TREC file can hold it (non-empty, no whitespace); else :class:`InvalidIdError`."""
    if not isinstance(value, str) or value.split() != [value]:
        raise InvalidIdError(f"{what} {value!r} cannot be written to a TREC file: it must be non-empty and hold "
                             f"no whitespace (replace spaces, e.g. with '_')")
    return value


def _check_scores(qid: str, docs: Mapping[str, float]) -> None:
    """Every score of a query's hits is a number (``"1.5"`` or ``True`` raise TypeError naming the doc)."""
    for did, score in docs.items():
        if isinstance(score, bool) or not isinstance(score, numbers.Real):
            raise TypeError(f"write_run: the score of doc {did!r} for query {qid!r} is {score!r:.40} "
                            f"({type(score).__name__}), expected a number")


def write_run(run: Mapping[str, Mapping[str, float]], path: PathLike, tag: str = "radcot") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, sorted by score (ties by doc id), atomically.

    Raises:
        InvalidIdError: the tag, a query id or a doc id is empty or holds whitespace; a score is nan/inf
            (nothing is written).
        TypeError: a score is not a number (``"1.5"``), named (nothing is written).
    """
    from radcot.utils import atomic_write

    check_trec_id(tag, "run tag")
    with atomic_write(path) as f:
        for qid, docs in run.items():
            check_trec_id(qid, "query id")
            _check_scores(qid, docs)
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, 1):
                if not math.isfinite(score):
                    raise InvalidIdError(f"score {score} of doc {did!r} for query {qid!r} is not finite")
                f.write(f"{qid} Q0 {check_trec_id(did, 'doc id')} {rank} {score:.6f} {tag}\n")


def write_queries_tsv(queries: Iterable[Query], path: PathLike) -> None:
    """Write ``qid \\t text`` (newlines and tabs in text become spaces), atomically."""
    from radcot.utils import atomic_write

    with atomic_write(path) as f:
        for q in queries:
            f.write(f"{check_trec_id(q.query_id, 'query id')}\t{' '.join(q.text.split())}\n")
