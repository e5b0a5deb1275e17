"""Resumable teacher runs: one JSONL record per query, append-only, fsync'd, exactly once.

Output layout for ``teach(..., out_path="cots.jsonl")``:

- ``cots.jsonl``: one record per *finished* query (``error`` is ``None``), appended and fsync'd as
  soon as it is produced. A query appears here at most once. Records whose output was empty are
  kept (``empty: true``) because re-asking a temperature-0 teacher gives the same answer.
- ``cots.failed.jsonl``: queries that failed in the latest run (``error`` holds the final message,
  ``attempts`` how often the backend tried). They are retried by the next run over the same output;
  a query that then succeeds moves to ``cots.jsonl`` and leaves this file.
- ``cots.config.json``: backend, model, prompt (name and template), generation parameters and
  newline handling. Resuming with a different config raises :class:`TeacherConfigMismatch`
  unless ``force=True`` (keep going, config updated) or ``overwrite=True`` (start again).

A run killed at any point (even ``kill -9`` in the middle of a write) resumes correctly: a torn last
line of ``cots.jsonl`` is detected and cut off, and that query is asked again.

Readers use :func:`read_teacher_output`, which yields exactly one final record per query id
(finished records from the main file, failures only for ids that never finished).

Record fields: ``query_id, query, text, prompt_name, model, params, finish_reason, attempts,
elapsed_s, error, empty, prompt_tokens, completion_tokens``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from radcot.records import DataFormatError, Query, RadcotError
from radcot.teacher.base import Generation, GenerationParams, TeacherBackend, TeacherError, TeachItem

logger = logging.getLogger("radcot.teacher")

RECORD_FIELDS = (
    "query_id", "query", "text", "prompt_name", "model", "params", "finish_reason",
    "attempts", "elapsed_s", "error", "empty", "prompt_tokens", "completion_tokens",
)


class TeacherConfigMismatch(RadcotError, ValueError):
    """An existing teacher output was produced with a different config than the current run."""


# --------------------------------------------------------------------------------------------
# paths and reading
# --------------------------------------------------------------------------------------------


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


def is_usable(record: dict) -> bool:
    """A record can be used for expansion/distillation iff it has no error and non-blank text."""
    return record.get("error") is None and bool(str(record.get("text") or "").strip())


def _scan_jsonl(path: Path, repair: bool = False) -> list[dict]:
    """Read a teacher JSONL; a torn/garbled *last* line is dropped (and cut from the file if ``repair``).

    A malformed line anywhere else is corruption and raises :class:`DataFormatError`.
    """
    if not path.exists():
        return []
    with open(path, "rb") as f:
        data = f.read()
    records: list[dict] = []
    good_end = 0  # byte offset just past the last good, newline-terminated line
    pos, lineno = 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        raw = data[pos:end]
        lineno += 1
        is_last = end >= len(data)
        if raw.strip():
            obj = None
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
            ok = isinstance(obj, dict) and "query_id" in obj and nl >= 0
            if not ok:
                if is_last:  # torn write from a killed run
                    logger.warning("%s: line %d is incomplete (interrupted write); it will be redone", path, lineno)
                    break
                raise DataFormatError(
                    path, lineno, "one JSON teacher record per line (with query_id)", repr(raw[:80]),
                    "The file is corrupt in the middle (not a torn last line); delete the line or rerun with --overwrite",
                )
            records.append(obj)
        good_end = end
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())
    return records


def _read_tsv_output(path: Path) -> dict[str, dict]:
    """``qid \\t query \\t cot \\t cosine`` (official davinci-003 release, aligned) or ``qid \\t text``."""
    out: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) == 2:
                qid, query, text = parts[0], None, parts[1]
            elif len(parts) in (3, 4):
                qid, query, text = parts[0], parts[1], parts[2]
            else:
                raise DataFormatError(
                    path, i, "2 fields (qid \\t text) or 3-4 fields (qid \\t query \\t cot [\\t cosine])",
                    f"{len(parts)} fields",
                )
            qid = qid.strip()
            if i == 1 and qid.lower() in ("qid", "query_id", "query-id", "id"):
                continue  # header
            if qid in out:
                raise DataFormatError(path, i, "each query id once", f"query id {qid!r} again")
            out[qid] = {
                "query_id": qid, "query": query, "text": text, "prompt_name": None, "model": None,
                "params": None, "finish_reason": None, "attempts": None, "elapsed_s": None,
                "error": None, "empty": not text.strip(),
            }
    return out


def read_teacher_output(path: str | os.PathLike) -> dict[str, dict]:
    """Read teacher outputs as ``{query_id: record}``, exactly one final record per query.

    Accepts a radcot teacher JSONL (``OUT.jsonl``, together with its ``OUT.failed.jsonl`` if present),
    the official davinci-003 CoT files (``qid \\t query \\t cot \\t cosine``) and query2doc-style
    ``qid \\t text`` TSV files. For JSONL, finished records win; a failure is returned only for a query
    that never finished (its last failure). A torn last line (killed run) is ignored, not repaired.
    Use :func:`is_usable` (``error is None and text.strip()``) before using a record's text.

    Args:
        path: the teacher output file.

    Returns:
        dict mapping query id to its record (fields ``query_id, query, text, error, ...``).

    Example:
        >>> recs = read_teacher_output("cots.jsonl")  # doctest: +SKIP
        >>> cots = {qid: r["text"] for qid, r in recs.items() if is_usable(r)}  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher output {path} does not exist (run `radcot teach ... --out {path}` first)")
    if path.suffix.lower() in (".tsv", ".txt"):
        return _read_tsv_output(path)
    out: dict[str, dict] = {}
    for rec in _scan_jsonl(path):
        qid = str(rec["query_id"])
        if rec.get("error") is not None:
            # a foreign/merged JSONL may carry failures inline: keep the last, never over a success
            if qid not in out or out[qid].get("error") is not None:
                out[qid] = rec
            continue
        if qid in out and out[qid].get("error") is None:
            continue  # first finished record wins (should not happen with radcot-written files)
        out[qid] = rec
    for rec in _scan_jsonl(failed_path(path)):
        qid = str(rec["query_id"])
        if qid not in out or out[qid].get("error") is not None:
            out[qid] = rec
    return out


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


class _Appender:
    """Append JSON lines with flush + fsync per record (a killed run loses at most the line in flight)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


@dataclasses.dataclass
class TeachSummary:
    """What a :func:`teach` run did."""

    out_path: str
    total: int = 0  # queries asked for (after --limit)
    skipped: int = 0  # already finished by an earlier run
    done: int = 0  # finished by this run
    failed: int = 0  # failed in this run (see failed_path; retried next run)
    empty: int = 0  # finished with an empty text (flagged)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    elapsed_s: float = 0.0
    failed_path: str = ""
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # qid -> error, first 20

    @property
    def queries_per_s(self) -> float:
        return (self.done + self.failed) / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["queries_per_s"] = round(self.queries_per_s, 3)
        return d

    def __str__(self) -> str:
        s = (
            f"teacher: {self.done} done, {self.skipped} already done, {self.failed} failed, {self.empty} empty "
            f"of {self.total} queries in {self.elapsed_s:.1f}s ({self.queries_per_s:.2f} q/s); "
            f"tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion -> {self.out_path}"
        )
        if self.failed:
            s += f"; failures in {self.failed_path} (rerun the same command to retry them)"
        return s


def normalize_text(text: str, newline: str | None = " ") -> str:
    """Paper's post-processing: strip, and replace each newline by ``newline`` (``None`` keeps them)."""
    text = (text or "").strip()
    if newline is not None:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", newline)
    return text


def _config(backend: TeacherBackend, prompt, params: GenerationParams, newline: str | None) -> dict[str, Any]:
    return {
        "backend": backend.name,
        "model": backend.model_name,
        "prompt_name": prompt.name,
        "prompt_template": prompt.template,
        "prompt_examples": prompt.examples_text,
        "params": params.to_dict(),
        "newline": newline,
        "backend_config": backend.config() if hasattr(backend, "config") else {},
    }


def _check_config(path: Path, new: dict, force: bool) -> None:
    if not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    keys = ("backend", "model", "prompt_name", "prompt_template", "prompt_examples", "params", "newline")
    diff = {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
    if not diff:
        return
    lines = "; ".join(f"{k}: was {a!r}, now {b!r}" for k, (a, b) in diff.items())
    if force:
        logger.warning("teacher config changed for %s (--force given, continuing): %s", path, lines)
        return
    raise TeacherConfigMismatch(
        f"{path} records a different teacher config than this run ({lines}). Resuming would mix outputs: "
        "use the same settings, a new --out, --force to continue anyway, or --overwrite to start over"
    )


def _iter_chunks(items: Iterable[TeachItem], size: int) -> Iterator[list[TeachItem]]:
    chunk: list[TeachItem] = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def teach(
    backend: TeacherBackend | str,
    queries: Iterable[Query] | str | os.PathLike,
    out_path: str | os.PathLike,
    prompt: Any = "radcot",
    params: GenerationParams | None = None,
    concurrency: int = 8,
    limit: int | None = None,
    show_progress: bool | None = None,
    newline: str | None = " ",
    force: bool = False,
    overwrite: bool = False,
    retry_failed: bool = True,
) -> TeachSummary:
    """Ask the teacher for every query not yet answered in ``out_path``; resumable, exactly once.

    Args:
        backend: a :class:`TeacherBackend`, or a backend name for :func:`radcot.teacher.get_backend`.
        queries: :class:`Query` records, or a path that :func:`radcot.data.readers.read_queries` reads.
        out_path: the output JSONL (sidecars ``.failed.jsonl`` and ``.config.json`` go next to it).
        prompt: a template name (``radcot``, ``query2doc``, ``cot-keywords``), a template string with
            ``{query}``, or a :class:`radcot.teacher.prompts.Prompt`.
        params: generation parameters (default: 150 tokens, temperature 0, as in the paper).
        concurrency: chunks in flight at once (capped by the backend's ``max_concurrency``).
        limit: only the first ``limit`` queries (after de-duplication).
        show_progress: tqdm bar with rate and ETA (``None``: from the log level).
        newline: replacement for newlines in outputs (the paper: a space); ``None`` keeps them.
        force: continue even if the recorded config differs.
        overwrite: delete earlier outputs and start over.
        retry_failed: ask again for queries that failed in earlier runs (default).

    Returns:
        a :class:`TeachSummary` (done, failed, tokens, time).

    Example:
        >>> from radcot.records import Query
        >>> from radcot.teacher import get_backend, teach
        >>> be = get_backend("openai", base_url="http://127.0.0.1:8000/v1", model="m")  # doctest: +SKIP
        >>> teach(be, [Query("1", "what is bm25")], "cots.jsonl")  # doctest: +SKIP
    """
    from radcot.teacher import get_backend
    from radcot.teacher.prompts import get_prompt
    from radcot.utils import progress_enabled, write_json

    if isinstance(queries, TeacherBackend) and not isinstance(backend, TeacherBackend):
        backend, queries = queries, backend  # the pre-contract order teach(queries, backend, out) still works
    params = params or GenerationParams()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if isinstance(queries, (str, os.PathLike)):
        from radcot.data.readers import read_queries

        queries = read_queries(queries)
    owns_backend = isinstance(backend, str)
    if owns_backend:
        backend = get_backend(backend)
    prompt_obj = get_prompt(prompt)

    out_path = Path(out_path)
    fpath, cpath = failed_path(out_path), config_path(out_path)
    if overwrite:
        for p in (out_path, fpath, cpath):
            p.unlink(missing_ok=True)
    config = _config(backend, prompt_obj, params, newline)
    _check_config(cpath, config, force)

    # resume state: finished ids (torn last line repaired), earlier failures
    finished = {str(r["query_id"]) for r in _scan_jsonl(out_path, repair=True)}
    earlier_failed = {str(r["query_id"]): r for r in _scan_jsonl(fpath, repair=True)}
    write_json(cpath, config)

    seen: set[str] = set()
    todo: list[Query] = []
    total = 0
    dups = 0
    for q in queries:
        qid = str(q.query_id)
        if qid in seen:
            dups += 1
            continue
        seen.add(qid)
        if limit is not None and total >= limit:
            break
        total += 1
        if qid in finished:
            continue
        if not retry_failed and qid in earlier_failed:
            continue
        todo.append(Query(qid, q.text))
    if dups:
        logger.warning("%d duplicate query ids in the input were ignored (each query id is answered once)", dups)

    summary = TeachSummary(out_path=str(out_path), total=total, skipped=total - len(todo), failed_path=str(fpath))
    still_failed = {qid: r for qid, r in earlier_failed.items() if qid not in finished}
    t0 = time.perf_counter()
    bar = None
    if progress_enabled(show_progress) and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"teacher {backend.name}", unit="q", dynamic_ncols=True)

    workers = max(1, min(concurrency, getattr(backend, "max_concurrency", None) or concurrency))
    batch = max(1, int(getattr(backend, "batch_size", 1) or 1))
    items = (TeachItem(q, prompt_obj.render(q.text)) for q in todo)
    model = backend.model_name
    pdict = params.to_dict()
    appender = _Appender(out_path)
    fail_appender = _Appender(fpath)  # failures are also logged at once, so a killed run still reports them

    def run_chunk(chunk: list[TeachItem]) -> tuple[list[Generation | TeacherError], float]:
        t = time.perf_counter()
        try:
            res = list(backend.generate(chunk, params))
            if len(res) != len(chunk):
                raise TeacherError(f"backend {backend.name} returned {len(res)} results for {len(chunk)} prompts")
        except Exception as e:  # noqa: BLE001 - a backend bug must not kill a 500k run; recorded per query
            err = e if isinstance(e, TeacherError) else TeacherError(f"{type(e).__name__}: {e}")
            res = [err] * len(chunk)
        return res, time.perf_counter() - t

    def record(item: TeachItem, res: Generation | TeacherError, elapsed: float) -> None:
        qid = item.query.query_id
        base = {"query_id": qid, "query": item.query.text, "prompt_name": prompt_obj.name, "model": model, "params": pdict}
        if isinstance(res, BaseException):
            rec = {
                **base, "text": None, "finish_reason": None, "attempts": getattr(res, "attempts", 1),
                "elapsed_s": round(elapsed, 4), "error": str(res) or type(res).__name__, "empty": None,
                "prompt_tokens": 0, "completion_tokens": 0,
            }
            fail_appender.write(rec)
            still_failed[qid] = rec
            summary.failed += 1
            if len(summary.errors) < 20:
                summary.errors[qid] = rec["error"]
            return
        text = normalize_text(res.text, newline)
        rec = {
            **base, "text": text, "finish_reason": res.finish_reason, "attempts": res.attempts,
            "elapsed_s": round(elapsed, 4), "error": None, "empty": not text,
            "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
        }
        appender.write(rec)
        still_failed.pop(qid, None)
        summary.done += 1
        summary.empty += int(not text)
        summary.prompt_tokens += res.prompt_tokens or 0
        summary.completion_tokens += res.completion_tokens or 0

    interrupted = True
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="radcot-teacher")
    try:
        pending: dict[Future, list[TeachItem]] = {}
        chunks = _iter_chunks(items, batch)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                pending[pool.submit(run_chunk, chunk)] = chunk
            if not pending:
                break
            done_f, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done_f:
                chunk = pending.pop(fut)
                results, elapsed = fut.result()
                per = elapsed / len(chunk) if batch > 1 else elapsed
                for item, res in zip(chunk, results):
                    record(item, res, per)
                if bar is not None:
                    bar.update(len(chunk))
                    bar.set_postfix(failed=summary.failed, refresh=False)
        interrupted = False
    finally:
        # on Ctrl-C, queued chunks are dropped (they are asked again on the next run), not run first
        pool.shutdown(wait=not interrupted, cancel_futures=True)
        appender.close()
        fail_appender.close()
        if bar is not None:
            bar.close()
        _rewrite_failed(fpath, still_failed)
        summary.elapsed_s = time.perf_counter() - t0
        if owns_backend:
            backend.close()
        if not interrupted:
            write_json(cpath, {**config, "last_summary": summary.to_dict()})
    logger.info("%s", summary)
    return summary


def _rewrite_failed(path: Path, failed: dict[str, dict]) -> None:
    from radcot.utils import atomic_write

    if not failed:
        path.unlink(missing_ok=True)
        return
    with atomic_write(path) as f:
        for rec in failed.values():
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


__all__: Sequence[str] = (
    "TeachSummary", "TeacherConfigMismatch", "config_path", "failed_path", "is_usable",
    "normalize_text", "read_teacher_output", "teach",
)
