"""Readers and writers for the IR ecosystem's file formats, streaming and strict.

Formats: BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``), pyserini JsonCollection
(``{"id", "contents"}``), MS MARCO TSV (``pid \\t text``, ``qid \\t text``), TREC qrels, TREC topics
(TSV and ``<top>`` SGML), TREC runs. ``.gz`` files are read transparently.

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

Example:
    >>> from radcot.data.readers import read_queries
    >>> queries = list(read_queries("data/demo"))  # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
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


def _open_binary(path: Path):
    if path.is_dir():
        raise DataFormatError(path, None, "a file", "a directory")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except PermissionError:
        raise RadcotError(f"{path}: permission denied; check the file's permissions") from None


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

_CORPUS_FILE_RE = re.compile(r"\.(jsonl?|tsv)(\.gz)?$")
_NOT_CORPUS_RE = re.compile(r"^(queries|topics|qrels)\b", re.I)


def _corpus_files(path: Path) -> list[Path]:
    """The files holding a collection's documents (one for BEIR/MS MARCO, several for a JsonCollection)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"collection {path} does not exist (expected a BEIR directory, a JsonCollection "
                                f"directory/file or an MS MARCO collection.tsv)")
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).is_file():
            return [path / name]
    names = sorted(p.name for p in path.iterdir())
    if (path / "qrels").is_dir() or any(_NOT_CORPUS_RE.match(n) for n in names):
        raise DataFormatError(path, None, "corpus.jsonl in this BEIR-layout directory (it has queries/qrels)",
                              f"no corpus file among {names[:10]}", "Add corpus.jsonl or point at the corpus file")
    files = [path / n for n in names if (path / n).is_file() and _CORPUS_FILE_RE.search(n)]
    if not files:
        raise DataFormatError(path, None, "corpus.jsonl (BEIR) or *.jsonl/*.json/*.tsv collection files",
                              f"none among {names[:10]}")
    return files


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
    for lineno, line in _lines(file):
        yield lineno, _json_doc(file, lineno, _json_line(file, lineno, line))


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


def _read_tsv_docs(file: Path) -> Iterator[tuple[int, Doc]]:
    for lineno, line in _lines(file):
        parts = line.split("\t")
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
            if (path / name).is_file():
                return path / name
        raise DataFormatError(path, None, "queries.jsonl (BEIR layout) in the directory",
                              f"{sorted(p.name for p in path.iterdir())[:10]}")
    if not path.exists():
        raise FileNotFoundError(f"queries file {path} does not exist")
    return path


def read_queries(path: PathLike) -> list[Query]:
    """Read queries from a BEIR directory/``queries.jsonl``, a ``qid \\t text`` TSV or TREC ``<top>`` topics.

    TREC topics use the ``<title>`` field. In a TSV, fields after the text are ignored (e.g. the released
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
    """``sgml``, ``jsonl`` or ``tsv``, from the first non-blank line."""
    first = next((line.lstrip() for _, line in _lines(file)), "")
    if first[:5].lower() == "<top>" or first[:7].lower() == "<topics":
        return "sgml"
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
    for lineno, line in _lines(file):
        parts = line.split("\t")
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


_QUERY_READERS: dict[str, Callable[[Path], list[tuple[int, Query]]]] = {
    "sgml": _read_sgml_topics, "jsonl": _read_jsonl_queries, "tsv": _read_tsv_queries}


# ------------------------------------------------------------------------------------------------ qrels

_QRELS_HEADER_LAST = {"score", "relevance", "rel", "label", "judgment", "judgement", "grade"}


def _qrels_file(path: Path, split: str | None = None) -> Path:
    if path.is_dir():
        qdir = path / "qrels" if (path / "qrels").is_dir() else path
        for s in ([split] if split else _BEIR_QRELS_SPLITS):
            if (qdir / f"{s}.tsv").is_file():
                return qdir / f"{s}.tsv"
        raise DataFormatError(path, None, f"qrels/{split or 'test'}.tsv (BEIR layout)",
                              f"{sorted(p.name for p in qdir.iterdir())[:10]}")
    if not path.exists():
        raise FileNotFoundError(f"qrels file {path} does not exist")
    return path


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


def write_run(run: Mapping[str, Mapping[str, float]], path: PathLike, tag: str = "radcot") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, sorted by score (ties by doc id), atomically.

    Raises:
        InvalidIdError: the tag, a query id or a doc id is empty or holds whitespace; a score is nan/inf
            (nothing is written).
    """
    from radcot.utils import atomic_write

    check_trec_id(tag, "run tag")
    with atomic_write(path) as f:
        for qid, docs in run.items():
            check_trec_id(qid, "query id")
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
