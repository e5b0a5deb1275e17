"""Readers and writers for the IR ecosystem's file formats, streaming and strict.

Formats: BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``), pyserini JsonCollection
(``{"id", "contents"}``), MS MARCO TSV (``pid \\t text``, ``qid \\t text``), TREC qrels, TREC topics
(TSV and ``<top>`` SGML), TREC runs. ``.gz`` files are read transparently.

Every malformed line raises :class:`~radcot.records.DataFormatError` naming the file, the line number,
what was expected and what was found.

Example:
    >>> from radcot.data.readers import read_queries
    >>> queries = list(read_queries("data/demo"))  # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from radcot.records import DataFormatError, Doc, Qrel, Query, ScoredDoc

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

_BEIR_QRELS_SPLITS = ("test", "dev", "train")


def _open(path: PathLike) -> io.TextIOBase:
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_line(path, lineno, line):
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, lineno, "one JSON object per line", f"{line[:80]!r} ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, lineno, "a JSON object", f"a JSON {type(obj).__name__}")
    return obj


def _first_key(obj: Mapping, keys: Iterable[str]):
    for k in keys:
        if k in obj:
            return k
    return None


# ----------------------------------------------------------------------------------------------- corpus


def _corpus_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"collection {path} does not exist (expected a BEIR directory, a JsonCollection "
                                f"directory/file or an MS MARCO collection.tsv)")
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (path / name).is_file():
            return [path / name]
    files = sorted(p for p in path.iterdir() if p.is_file() and re.search(r"\.(jsonl?|tsv)(\.gz)?$", p.name))
    if not files:
        raise DataFormatError(path, None, "corpus.jsonl (BEIR) or *.jsonl/*.json/*.tsv collection files",
                              f"none among {sorted(p.name for p in path.iterdir())[:10]}")
    return files


def read_corpus(path: PathLike, check_duplicates: bool = True) -> Iterator[Doc]:
    """Stream the documents of a collection, one :class:`Doc` at a time.

    Args:
        path: a BEIR directory (``corpus.jsonl``), a JsonCollection directory or file (``{"id", "contents"}``),
            a BEIR-style JSONL file (``{"_id", "title", "text"}``) or an MS MARCO TSV (``pid \\t text``).
        check_duplicates: raise on a repeated doc id (keeps a set of ids: ~70 bytes per doc).

    Returns:
        An iterator of :class:`Doc`; nothing is held in memory but the id set.
    """
    seen: dict[str, tuple[str, int]] | None = {} if check_duplicates else None
    for file in _corpus_files(Path(path)):
        reader = _read_tsv_docs if re.search(r"\.tsv(\.gz)?$", file.name) else _read_jsonl_docs
        for lineno, doc in reader(file):
            if seen is not None:
                if doc.doc_id in seen:
                    f0, l0 = seen[doc.doc_id]
                    raise DataFormatError(file, lineno, "unique document ids",
                                          f"doc id {doc.doc_id!r} again (first at {f0}, line {l0})",
                                          "Remove or rename the duplicate document")
                seen[doc.doc_id] = (file.name, lineno)
            yield doc


def _read_jsonl_docs(file: Path) -> Iterator[tuple[int, Doc]]:
    with _open(file) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = _json_line(file, lineno, line)
            idk = _first_key(obj, ("_id", "id", "docid", "doc_id"))
            if idk is None:
                raise DataFormatError(file, lineno, 'a document id field ("_id" or "id")',
                                      f"fields {sorted(obj)}")
            if "contents" in obj:
                text, title = obj["contents"], obj.get("title", "")
            elif "text" in obj:
                text, title = obj["text"], obj.get("title", "")
            else:
                raise DataFormatError(file, lineno, 'a text field ("text" or "contents")', f"fields {sorted(obj)}")
            if not isinstance(text, str):
                raise DataFormatError(file, lineno, "text to be a string", type(text).__name__)
            yield lineno, Doc(str(obj[idk]), text, title or "")


def _read_tsv_docs(file: Path) -> Iterator[tuple[int, Doc]]:
    with _open(file) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) == 2:
                yield lineno, Doc(parts[0], parts[1])
            elif len(parts) == 3:  # pid \t title \t text
                yield lineno, Doc(parts[0], parts[2], parts[1])
            else:
                raise DataFormatError(file, lineno, "2 tab-separated fields (doc-id, text)",
                                      f"{len(parts)} fields: {line[:80]!r}")


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

    Duplicate query ids raise :class:`DataFormatError`. TREC topics use the ``<title>`` field.

    Returns:
        The queries in file order.
    """
    file = _queries_file(Path(path))
    with _open(file) as f:
        head = f.read(4096)
    stripped = head.lstrip()
    if stripped.startswith("<top>") or stripped.startswith("<topics"):
        queries = _read_sgml_topics(file)
    elif stripped.startswith("{"):
        queries = _read_jsonl_queries(file)
    else:
        queries = _read_tsv_queries(file)
    seen: dict[str, int] = {}
    for lineno, q in queries:
        if q.query_id in seen:
            raise DataFormatError(file, lineno, "unique query ids",
                                  f"query id {q.query_id!r} again (first at line {seen[q.query_id]})",
                                  "Remove the duplicate query")
        seen[q.query_id] = lineno
    return [q for _, q in queries]


def _read_jsonl_queries(file: Path) -> list[tuple[int, Query]]:
    out = []
    with _open(file) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = _json_line(file, lineno, line)
            idk = _first_key(obj, ("_id", "id", "query_id", "qid"))
            tk = _first_key(obj, ("text", "query", "title", "contents"))
            if idk is None or tk is None:
                raise DataFormatError(file, lineno, 'fields "_id" and "text"', f"fields {sorted(obj)}")
            out.append((lineno, Query(str(obj[idk]), str(obj[tk]))))
    return out


def _read_tsv_queries(file: Path) -> list[tuple[int, Query]]:
    out = []
    with _open(file) as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2:
                raise DataFormatError(file, lineno, "2 tab-separated fields (query-id, text)",
                                      f"{len(parts)} field: {line[:80]!r}",
                                      "Separate the id and the text with a tab")
            out.append((lineno, Query(parts[0].strip(), parts[1].strip())))
    return out


_TOP_RE = re.compile(r"<top>(.*?)</top>", re.S)
_NUM_RE = re.compile(r"<num>\s*(?:Number:)?\s*(\S+)", re.I)
_TITLE_RE = re.compile(r"<title>\s*(?:Topic:)?\s*(.*?)\s*(?=<desc>|<narr>|<con>|<fac>|<def>|</top>|$)", re.S | re.I)


def _read_sgml_topics(file: Path) -> list[tuple[int, Query]]:
    with _open(file) as f:
        text = f.read()
    out = []
    for m in _TOP_RE.finditer(text):
        lineno = text.count("\n", 0, m.start()) + 1
        block = m.group(1)
        num, title = _NUM_RE.search(block), _TITLE_RE.search(block)
        if not num or not title:
            raise DataFormatError(file, lineno, "<num> and <title> in each <top> block",
                                  f"{block.strip()[:80]!r}")
        out.append((lineno, Query(num.group(1), " ".join(title.group(1).split()))))
    if not out:
        raise DataFormatError(file, 1, "<top> ... </top> topic blocks", f"{text[:80]!r}")
    return out


# ------------------------------------------------------------------------------------------------ qrels

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

    Args:
        path: a file or a BEIR directory (``qrels/test.tsv``, or ``split``).
        split: BEIR split name when ``path`` is a directory.
    """
    file = _qrels_file(Path(path), split)
    out: list[Qrel] = []
    seen: dict[tuple[str, str], int] = {}
    with _open(file) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if lineno == 1 and parts and not parts[-1].lstrip("-").isdigit():
                continue  # header (query-id corpus-id score)
            if len(parts) == 4:
                qid, _, did, rel = parts
            elif len(parts) == 3:
                qid, did, rel = parts
            else:
                raise DataFormatError(file, lineno, "4 fields (query-id 0 doc-id relevance) or 3 (query-id doc-id score)",
                                      f"{len(parts)} fields: {line.strip()[:80]!r}")
            try:
                relevance = int(float(rel))
            except ValueError:
                raise DataFormatError(file, lineno, "an integer relevance", repr(rel)) from None
            if (qid, did) in seen:
                raise DataFormatError(file, lineno, "one judgement per (query, doc)",
                                      f"({qid}, {did}) again (first at line {seen[(qid, did)]})")
            seen[(qid, did)] = lineno
            out.append(Qrel(qid, did, relevance))
    return out


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
    """Read a TREC run (``qid Q0 docid rank score tag``) into ``{qid: {docid: score}}``."""
    run: Run = defaultdict(dict)
    with _open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataFormatError(path, lineno, "6 fields (query-id Q0 doc-id rank score tag)",
                                      f"{len(parts)} fields: {line.strip()[:80]!r}")
            try:
                score = float(parts[4])
            except ValueError:
                raise DataFormatError(path, lineno, "a numeric score in field 5", repr(parts[4])) from None
            if parts[2] in run[parts[0]]:
                raise DataFormatError(path, lineno, "each doc once per query", f"doc {parts[2]!r} again for query {parts[0]!r}")
            run[parts[0]][parts[2]] = score
    return dict(run)


def run_from_scored(scored: Iterable[ScoredDoc]) -> Run:
    """Turn :class:`ScoredDoc` records into ``{qid: {docid: score}}``."""
    run: Run = defaultdict(dict)
    for s in scored:
        run[s.query_id][s.doc_id] = s.score
    return dict(run)


def write_run(run: Mapping[str, Mapping[str, float]], path: PathLike, tag: str = "radcot") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run, sorted by score (ties by doc id), atomically."""
    from radcot.utils import atomic_write

    with atomic_write(path) as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (did, score) in enumerate(ranked, 1):
                f.write(f"{qid} Q0 {did} {rank} {score:.6f} {tag}\n")


def write_queries_tsv(queries: Iterable[Query], path: PathLike) -> None:
    """Write ``qid \\t text`` (newlines and tabs in text become spaces), atomically."""
    from radcot.utils import atomic_write

    with atomic_write(path) as f:
        for q in queries:
            f.write(f"{q.query_id}\t{' '.join(q.text.split())}\n")
