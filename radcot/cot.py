"""The chain-of-thought record: one home for what the teacher and the student write and what readers read.

Teachers (:func:`radcot.teacher.runner.teach`) and students (:func:`radcot.student.generate.generate_cots`)
write the same JSONL: one :class:`CoTRecord` per query, appended and fsync'd by a :class:`CoTWriter`, with
two sidecars next to ``OUT.jsonl``:

- ``OUT.config.json`` (:func:`config_path`): what produced the records; resuming with another config is
  refused by :func:`check_config`.
- ``OUT.failed.jsonl`` (:func:`failed_path`, teacher only): queries whose latest attempt failed.

A killed run leaves at most a torn last line: :func:`scan_cots` with ``repair=True`` cuts it off so the
query is asked again (a complete last record that only lacks its newline is kept, and the newline added).
A UTF-8 byte order mark at the start of a JSONL or TSV file is skipped. :func:`read_cots` reads a finished
output as ``{query_id: record}`` and rejects a query id that finished twice (file and both line numbers),
instead of silently taking one copy.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "cots.jsonl"
    >>> with CoTWriter(out) as w:
    ...     w.write(CoTRecord(query_id="1", query="what is bm25", text="a ranking function"))
    >>> read_cots(out)["1"]["text"]
    'a ranking function'
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from radcot.records import DataFormatError, RadcotError

logger = logging.getLogger("radcot.cot")


@dataclasses.dataclass
class CoTRecord:
    """One query's chain of thought (or its failure), as written to a CoT JSONL.

    ``error`` is ``None`` for a finished record; ``empty`` flags a finished record with blank text.
    ``extra`` holds writer-specific fields (the student's ``doc_ids`` and ``texts``), written at top level.
    """

    query_id: str
    query: str | None = None
    text: str | None = None
    prompt_name: str | None = None
    model: str | None = None
    params: dict[str, Any] | None = None
    finish_reason: str | None = None
    attempts: int | None = None
    elapsed_s: float | None = None
    error: str | None = None
    empty: bool | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.query_id = str(self.query_id)
        if self.error is None and self.empty is None:
            self.empty = not str(self.text or "").strip()

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written per line (``extra`` merged at top level)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CoTRecord":
        """Inverse of :meth:`to_dict` (unknown keys go to ``extra``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in names}, extra={k: v for k, v in d.items() if k not in names})

    @property
    def usable(self) -> bool:
        return is_usable(self.to_dict())


def is_usable(record: dict) -> bool:
    """A record can be used for expansion/distillation iff it has no error and non-blank text."""
    if not isinstance(record, Mapping):
        raise TypeError(f"is_usable: record must be a CoT record (a dict from read_cots), got {type(record).__name__}")
    return record.get("error") is None and bool(str(record.get("text") or "").strip())


# ---------------------------------------------------------------------------------------------- sidecars


def _stem(path: Path) -> Path:
    return path.with_suffix("") if path.suffix == ".jsonl" else path


def failed_path(out_path: str | os.PathLike) -> Path:
    """``OUT.failed.jsonl`` next to ``OUT.jsonl``."""
    p = Path(out_path)
    return p.with_name(_stem(p).name + ".failed.jsonl")


def config_path(out_path: str | os.PathLike) -> Path:
    """``OUT.config.json`` next to ``OUT.jsonl``."""
    p = Path(out_path)
    return p.with_name(_stem(p).name + ".config.json")


def config_differences(out_path: str | os.PathLike, new: dict, *, keys: Iterable[str] | None = None) -> str:
    """How ``OUT.config.json`` differs from ``new`` (on ``keys``, or all): ``"field: was A, now B; ..."``.

    Empty when there is no recorded config or it matches.

    Raises:
        DataFormatError: the recorded config is not JSON.
    """
    path = config_path(out_path)
    if not path.exists():
        return ""
    try:
        old = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, None, "a JSON config written by radcot", str(e),
                              "delete it (and its output) or rerun with --overwrite") from None
    if not isinstance(old, dict):
        raise DataFormatError(path, None, "a JSON object written by radcot", type(old).__name__,
                              "delete it (and its output) or rerun with --overwrite")
    new = json.loads(json.dumps(new, default=str))  # compare as stored (tuples -> lists...)
    keys = sorted(set(old) | set(new)) if keys is None else list(keys)
    diff = {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
    return "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())


def check_config(out_path: str | os.PathLike, new: dict, *, keys: Iterable[str] | None = None, force: bool = False,
                 error: type[RadcotError] = RadcotError) -> None:
    """Refuse to resume ``out_path`` when its ``OUT.config.json`` differs from ``new`` (on ``keys``, or all).

    Raises ``error`` naming each differing field (old and new value) and the ways out; with ``force`` the
    difference is only logged.
    """
    lines = config_differences(out_path, new, keys=keys)
    if not lines:
        return
    if force:
        logger.warning("config changed for %s (--force given, continuing): %s", out_path, lines)
        return
    raise error(f"{out_path} was written with a different config ({config_path(out_path)}: {lines}). Resuming would "
                f"mix outputs: use the same settings, a new --out, --force to continue anyway, or --overwrite to "
                f"start over")


# ---------------------------------------------------------------------------------------------- reading


_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark (Windows editors write one): not part of the first line


def _parse_line(raw: bytes) -> dict | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) and "query_id" in obj else None


def scan_cots(path: str | os.PathLike, repair: bool = False) -> list[tuple[int, dict]]:
    """``(line number, record)`` of a CoT JSONL, exactly as written (a leading UTF-8 BOM is skipped).

    A complete last record without its newline is kept. A torn/garbled *last* line (a run killed mid-write) is
    dropped with a warning; with ``repair`` it is cut off (so the query is asked again), and a missing final
    newline is added (so the next append starts on its own line). A malformed line anywhere else is corruption
    and raises :class:`DataFormatError` with its line.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"scan_cots: path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[tuple[int, dict]] = []
    pos = good_end = len(_BOM) if data.startswith(_BOM) else 0  # good_end: just past the last good line
    lineno = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        raw, lineno = data[pos:end], lineno + 1
        if raw.strip():
            obj = _parse_line(raw)
            if obj is None:
                if end >= len(data):  # torn write from a killed run
                    _warn_torn(path, lineno, repair)
                    break
                raise DataFormatError(path, lineno, "one JSON CoT record per line (with query_id)", repr(raw[:80]),
                                      "the file is corrupt in the middle (not a torn last line); delete the line "
                                      "or rerun with --overwrite")
            records.append((lineno, obj))
        good_end = pos = end
    if repair:
        _repair_tail(path, data, good_end)
    return records


def _warn_torn(path: Path, lineno: int, repair: bool) -> None:
    if repair:
        logger.warning("%s: line %d is incomplete (an interrupted write); it is cut off and its query asked again",
                       path, lineno)
    else:
        logger.warning("%s: line %d is incomplete (an interrupted write) and is ignored; rerun the command that "
                       "wrote the file to redo that query", path, lineno)


def _repair_tail(path: Path, data: bytes, good_end: int) -> None:
    """Cut a torn last line off at ``good_end``, or end a complete last record with its missing newline."""
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    elif data.strip(_BOM + b" \t\r\n") and not data.endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())


def _read_tsv(path: Path) -> dict[str, dict]:
    """``qid \\t query \\t cot \\t cosine`` (official davinci-003 release, aligned) or ``qid \\t text``."""
    out: dict[str, dict] = {}
    raw_lines = path.read_bytes().removeprefix(_BOM).split(b"\n")
    for i, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataFormatError(path, i, "UTF-8 text", f"byte {raw[e.start:e.start + 1]!r} at column {e.start + 1}",
                                  "re-save the file as UTF-8") from None
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) == 2:
            qid, query, text = parts[0], None, parts[1]
        elif len(parts) in (3, 4):
            qid, query, text = parts[0], parts[1], parts[2]
        else:
            raise DataFormatError(path, i, "2 fields (qid \\t text) or 3-4 fields (qid \\t query \\t cot "
                                           "[\\t cosine])", f"{len(parts)} fields")
        qid = qid.strip()
        if i == 1 and qid.lower() in ("qid", "query_id", "query-id", "id"):
            continue  # header
        if qid in out:
            raise DataFormatError(path, i, "each query id once", f"query id {qid!r} again")
        out[qid] = CoTRecord(query_id=qid, query=query, text=text).to_dict()
    return out


def _merge_jsonl(path: Path) -> dict[str, dict]:
    """Finished records win over failures; a query id finished twice is an error (two writers, a bad merge)."""
    out: dict[str, dict] = {}
    finished_at: dict[str, int] = {}
    for lineno, rec in scan_cots(path):
        qid = str(rec["query_id"])
        if rec.get("error") is not None:
            if qid not in finished_at:  # a failure never hides a success; the last failure is kept
                out[qid] = rec
            continue
        if qid in finished_at:
            raise DataFormatError(path, lineno, "each query id finished once",
                                  f"query id {qid!r} again (first on line {finished_at[qid]})",
                                  "two runs wrote this file, or it was merged twice: keep one line per query id")
        finished_at[qid] = lineno
        out[qid] = rec
    for _, rec in scan_cots(failed_path(path)):
        qid = str(rec["query_id"])
        if qid not in finished_at:
            out[qid] = rec
    return out


def read_cots(path: str | os.PathLike) -> dict[str, dict]:
    """Read a teacher or student CoT output as ``{query_id: record}``, exactly one record per query.

    Accepts radcot JSONL (with its ``OUT.failed.jsonl`` if present), the official davinci-003 CoT files
    (``qid \\t query \\t cot \\t cosine``) and query2doc-style ``qid \\t text`` TSV. In JSONL a finished
    record wins over failures; a failure is returned only for a query that never finished. A query id
    finished twice raises :class:`DataFormatError` naming the file and both lines. A leading UTF-8 BOM is
    skipped; a complete last record without a final newline is kept; a torn last line (killed run) is ignored
    with a warning, not repaired (rerunning the command that wrote it redoes that query). Check
    :func:`is_usable` before using a record's text.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"read_cots: path must be a file path (str or pathlib.Path), got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CoT output {path} does not exist (run `radcot teach ... --out {path}` or "
                                f"`radcot generate ... --out {path}` first)")
    if path.is_dir():
        raise RadcotError(f"CoT output {path} is a directory; pass the JSONL/TSV file")
    if path.suffix.lower() in (".tsv", ".txt"):
        return _read_tsv(path)
    return _merge_jsonl(path)


# ---------------------------------------------------------------------------------------------- writing


class CoTWriter:
    """Append CoT records with flush + fsync per :meth:`write` (a killed run loses at most the line in flight).

    Example:
        >>> import tempfile, pathlib
        >>> with CoTWriter(pathlib.Path(tempfile.mkdtemp()) / "c.jsonl") as w:
        ...     w.write([CoTRecord("1", text="a"), CoTRecord("2", text="b")])
    """

    def __init__(self, path: str | os.PathLike):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"CoTWriter: path must be a file path (str or pathlib.Path), got {type(path).__name__}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        # a file whose last line lacks its newline: the first record goes on a line of its own
        self._newline_first = self._f.tell() > 0 and not _ends_with_newline(self.path)

    def write(self, records: CoTRecord | dict | Iterable[CoTRecord | dict]) -> None:
        if isinstance(records, (CoTRecord, dict)):
            records = [records]
        lines = [json.dumps(r.to_dict() if isinstance(r, CoTRecord) else r, ensure_ascii=False) + "\n"
                 for r in records]
        if self._newline_first and lines:
            lines[0] = "\n" + lines[0]
            self._newline_first = False
        self._f.write("".join(lines))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "CoTWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def rewrite_cots(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Replace ``path`` atomically with ``records`` (deleted when there are none)."""
    from radcot.utils import atomic_write

    records = list(records)
    if not records:
        Path(path).unlink(missing_ok=True)
        return
    with atomic_write(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def remove_outputs(out_path: str | os.PathLike) -> None:
    """Delete a CoT output and its sidecars (for ``overwrite``)."""
    for p in (Path(out_path), failed_path(out_path), config_path(out_path)):
        p.unlink(missing_ok=True)


def done_ids(out_path: str | os.PathLike, repair: bool = True) -> set[str]:
    """Query ids already finished in ``out_path`` (the torn last line of a killed run cut off)."""
    return {str(rec["query_id"]) for _, rec in scan_cots(out_path, repair=repair) if rec.get("error") is None}



__all__ = ("CoTRecord", "CoTWriter", "check_config", "config_differences", "config_path", "done_ids", "failed_path",
           "is_usable",
           "read_cots", "remove_outputs", "rewrite_cots", "scan_cots")
