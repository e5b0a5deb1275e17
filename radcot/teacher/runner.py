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
  unless ``force=True`` (keep going, config updated) or ``overwrite=True`` (start again). An output
  whose run finished no query (every query failed, or it was stopped before the first answer) pins
  nothing: a run with other settings replaces it, with a log line.

A run killed at any point (even ``kill -9`` in the middle of a write) resumes correctly: a torn last
line of ``cots.jsonl`` is detected and cut off, and that query is asked again; a complete last record
that only lacks its newline is kept (the newline is added before the next append).

A teacher endpoint that refuses every connection from the start stops the run at once
(:class:`~radcot.teacher.base.TeacherUnreachable`, naming the URL and the fix) instead of retrying each query.

One writer per output: :func:`teach` holds :func:`radcot.locks.output_lock` on ``cots.jsonl`` while it
runs; a second run on the same output fails at once naming the first one's PID.

Readers use :func:`read_teacher_output`, which yields exactly one final record per query id
(finished records from the main file, failures only for ids that never finished) and rejects a query id
finished twice. The record, its writer and the sidecars live in :mod:`radcot.cot` (shared with the
student's ``generate_cots``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from radcot.cot import (
    CoTRecord,
    CoTWriter,
    check_config,
    config_differences,
    config_path,
    done_ids,
    failed_path,
    is_usable,
    read_cots,
    remove_outputs,
    rewrite_cots,
    scan_cots,
)
from radcot.records import Query, RadcotError
from radcot.teacher._checks import check_bool, check_float, check_int, check_path, check_str, iter_queries
from radcot.teacher.base import (
    Generation,
    GenerationParams,
    TeacherBackend,
    TeacherError,
    TeacherUnreachable,
    TeachItem,
)

logger = logging.getLogger("radcot.teacher")

#: default share of failed queries above which a run stops (see ``teach(max_failed_fraction=...)``)
DEFAULT_MAX_FAILED_FRACTION = 0.5
#: answers seen before the failure share is judged (or all of them, when fewer)
FAILURE_SAMPLE = 10


class TeacherConfigMismatch(RadcotError, ValueError):
    """An existing teacher output was produced with a different config than the current run."""


class TeacherFailed(RadcotError, RuntimeError):
    """The backend failed for too many queries (more than ``max_failed_fraction``); the run stopped."""


def read_teacher_output(path: str | os.PathLike) -> dict[str, dict]:
    """Read teacher (or student) outputs as ``{query_id: record}``, exactly one final record per query.

    Accepts a radcot CoT JSONL (``OUT.jsonl``, together with its ``OUT.failed.jsonl`` if present),
    the official davinci-003 CoT files (``qid \\t query \\t cot \\t cosine``) and query2doc-style
    ``qid \\t text`` TSV files. For JSONL, finished records win; a failure is returned only for a query
    that never finished (its last failure); a query id finished twice raises
    :class:`~radcot.records.DataFormatError` naming the file and both lines. A leading UTF-8 BOM is skipped
    and a complete last record without its newline is kept; a torn last line (killed run) is ignored with a
    warning, not repaired (rerunning the command that wrote it redoes that query). Use :func:`is_usable`
    (``error is None and text.strip()``) before using a record's text. Same as :func:`radcot.cot.read_cots`.

    Args:
        path: the teacher output file.

    Returns:
        dict mapping query id to its record (fields ``query_id, query, text, error, ...``).

    Example:
        >>> recs = read_teacher_output("cots.jsonl")  # doctest: +SKIP
        >>> cots = {qid: r["text"] for qid, r in recs.items() if is_usable(r)}  # doctest: +SKIP
    """
    return read_cots(path)


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
    last_error: str = ""

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
    """Paper's post-processing: strip, and replace each newline by ``newline`` (``None`` keeps them).

    Example:
        >>> normalize_text(" a\\nb ")
        'a b'
    """
    check_str("normalize_text", "text", text, optional=True)
    check_str("normalize_text", "newline", newline, optional=True)
    text = (text or "").strip()
    if newline is not None:
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", newline)
    return text


CONFIG_KEYS = ("backend", "model", "prompt_name", "prompt_template", "prompt_examples", "params", "newline")


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


def _iter_chunks(items: Iterable[TeachItem], size: int) -> Iterator[list[TeachItem]]:
    chunk: list[TeachItem] = []
    for it in items:
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --------------------------------------------------------------------------------------------
# the steps of a run
# --------------------------------------------------------------------------------------------


def _load_queries(queries: Iterable[Query] | str | os.PathLike) -> Iterable[Query]:
    """Queries from a file path, or the given records checked one by one (a bare text is refused)."""
    if isinstance(queries, (str, os.PathLike)):
        from radcot.data.readers import read_queries

        return read_queries(queries)
    return iter_queries("teach", queries)


def _select_todo(queries: Iterable[Query], finished: set[str], earlier_failed: dict[str, dict],
                 limit: int | None, retry_failed: bool) -> tuple[list[Query], int]:
    """The queries still to ask (de-duplicated, first ``limit``) and how many were asked for."""
    seen: set[str] = set()
    todo: list[Query] = []
    total = dups = 0
    for q in queries:
        qid = str(q.query_id)
        if qid in seen:
            dups += 1
            continue
        seen.add(qid)
        if limit is not None and total >= limit:
            break
        total += 1
        if qid in finished or (not retry_failed and qid in earlier_failed):
            continue
        todo.append(Query(qid, q.text))
    if dups:
        logger.warning("%d duplicate query ids in the input were ignored (each query id is answered once)", dups)
    return todo, total


def _run_chunk(backend: TeacherBackend, params: GenerationParams,
               chunk: list[TeachItem]) -> tuple[list[Generation | TeacherError], float]:
    """Ask the backend for one chunk; any exception becomes a per-query error (a 500k run keeps going)."""
    t = time.perf_counter()
    try:
        res = list(backend.generate(chunk, params))
        if len(res) != len(chunk):
            raise TeacherError(f"backend {backend.name} returned {len(res)} results for {len(chunk)} prompts")
    except Exception as e:  # noqa: BLE001 - a backend bug must not kill a 500k run; recorded per query
        err = e if isinstance(e, TeacherError) else TeacherError(f"{type(e).__name__}: {e}")
        res = [err] * len(chunk)
    return res, time.perf_counter() - t


class _Recorder:
    """Writes each answer (or failure) at once and keeps the summary and the still-failed set."""

    def __init__(self, out_path: Path, summary: TeachSummary, still_failed: dict[str, dict], prompt_name: str,
                 model: str | None, params: dict, newline: str | None, max_failed_fraction: float):
        self.summary, self.still_failed, self.newline = summary, still_failed, newline
        self.base = {"prompt_name": prompt_name, "model": model, "params": params}
        self.max_failed_fraction = max_failed_fraction
        self.writer = CoTWriter(out_path)
        self.fail_writer = CoTWriter(failed_path(out_path))  # logged at once, so a killed run still reports them

    def record(self, item: TeachItem, res: Generation | TeacherError, elapsed: float) -> None:
        q, s = item.query, self.summary
        if isinstance(res, BaseException):
            rec = CoTRecord(q.query_id, q.text, None, **self.base, attempts=getattr(res, "attempts", 1),
                            elapsed_s=round(elapsed, 4), error=str(res) or type(res).__name__, prompt_tokens=0,
                            completion_tokens=0).to_dict()
            self.fail_writer.write(rec)
            self.still_failed[q.query_id] = rec
            s.failed += 1
            s.last_error = rec["error"]
            if len(s.errors) < 20:
                s.errors[q.query_id] = rec["error"]
            return
        text = normalize_text(res.text, self.newline)
        self.writer.write(CoTRecord(q.query_id, q.text, text, **self.base, finish_reason=res.finish_reason,
                                    attempts=res.attempts, elapsed_s=round(elapsed, 4), error=None,
                                    prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens))
        self.still_failed.pop(q.query_id, None)
        s.done += 1
        s.empty += int(not text)
        s.prompt_tokens += res.prompt_tokens or 0
        s.completion_tokens += res.completion_tokens or 0

    def check_failures(self, todo: int) -> None:
        """Stop the run when more than ``max_failed_fraction`` of the first answers failed."""
        s = self.summary
        seen = s.done + s.failed
        if seen < min(todo, FAILURE_SAMPLE) or s.failed <= self.max_failed_fraction * seen:
            return
        raise TeacherFailed(
            f"the teacher failed for {s.failed} of the {seen} queries answered so far (more than "
            f"{self.max_failed_fraction:.0%}), so the run stopped; last error: {s.last_error}. Fix the cause "
            f"(is the server up? the model name, key and --base-url right?) and rerun the same command: the "
            f"{s.done} finished queries are kept and the failed ones are asked again")

    def close(self) -> None:
        self.writer.close()
        self.fail_writer.close()


def _stop_if_unreachable(results: Sequence[Generation | TeacherError]) -> None:
    """The endpoint never answered (:class:`TeacherUnreachable`): stop the run now, with its message."""
    for res in results:
        if isinstance(res, TeacherUnreachable):
            raise TeacherUnreachable(str(res), attempts=res.attempts)


def _drive(backend: TeacherBackend, params: GenerationParams, items: Iterator[TeachItem], rec: _Recorder,
           n_todo: int, concurrency: int, bar) -> None:
    """Keep ``2 * workers`` chunks in flight and record results as they come; Ctrl-C drops queued chunks."""
    workers = max(1, min(concurrency, getattr(backend, "max_concurrency", None) or concurrency))
    batch = max(1, int(getattr(backend, "batch_size", 1) or 1))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="radcot-teacher")
    finished = False
    try:
        pending: dict[Future, list[TeachItem]] = {}
        chunks = _iter_chunks(items, batch)
        while True:
            while len(pending) < 2 * workers and (chunk := next(chunks, None)) is not None:
                pending[pool.submit(_run_chunk, backend, params, chunk)] = chunk
            if not pending:
                break
            done_f, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done_f:
                chunk = pending.pop(fut)
                results, elapsed = fut.result()
                per = elapsed / len(chunk) if batch > 1 else elapsed
                for item, res in zip(chunk, results):
                    rec.record(item, res, per)
                bar.update(len(chunk))
                bar.set_postfix(failed=rec.summary.failed, refresh=False)
                _stop_if_unreachable(results)
            rec.check_failures(n_todo)
        finished = True
    finally:
        # on Ctrl-C, queued chunks are dropped (they are asked again on the next run), not run first
        pool.shutdown(wait=finished, cancel_futures=True)


def _replace_empty_attempt(out_path: Path, config: dict) -> None:
    """An earlier run that finished no query (all failed, or stopped before the first answer) pins nothing:
    when its settings differ from ``config``, its files are deleted (with a log line) and the run starts afresh."""
    if done_ids(out_path, repair=True):
        return
    differences = config_differences(out_path, config, keys=CONFIG_KEYS)
    if differences:
        logger.warning("%s: the earlier run finished no query, so its files are replaced by this run with other "
                       "settings (%s)", out_path, differences)
        remove_outputs(out_path)


def _resume_scan(out_path: Path, config: dict, force: bool, overwrite: bool) -> tuple[set[str], dict[str, dict]]:
    """Start over (``overwrite``, or an earlier run that wrote no record) or check the recorded config;
    finished ids and earlier failures."""
    from radcot.utils import write_json

    if overwrite:
        remove_outputs(out_path)
    _replace_empty_attempt(out_path, config)
    check_config(out_path, config, keys=CONFIG_KEYS, force=force, error=TeacherConfigMismatch)
    finished = done_ids(out_path, repair=True)
    earlier_failed = {str(r["query_id"]): r for _, r in scan_cots(failed_path(out_path), repair=True)}
    write_json(config_path(out_path), config)
    return finished, earlier_failed


def _check_teach_args(out_path, prompt, params, concurrency, limit, show_progress, newline, force, overwrite,
                      retry_failed, max_failed_fraction) -> None:
    """:func:`teach`'s arguments have the right types and ranges (before a backend is built or a file touched)."""
    from radcot.teacher.prompts import Prompt

    check_path("teach", "out_path", out_path)
    if not isinstance(prompt, (str, Prompt)):
        raise TypeError(f"teach: prompt must be a template name, a template string with {{query}} or a Prompt, got "
                        f"{type(prompt).__name__}")
    if params is not None and not isinstance(params, GenerationParams):
        raise TypeError(f"teach: params must be a GenerationParams or None, got {type(params).__name__}")
    check_int("teach", "concurrency", concurrency, minimum=1)
    check_int("teach", "limit", limit, minimum=1, optional=True)
    check_bool("teach", "show_progress", show_progress, optional=True)
    check_str("teach", "newline", newline, optional=True)
    for name, flag in (("force", force), ("overwrite", overwrite), ("retry_failed", retry_failed)):
        check_bool("teach", name, flag)
    if check_float("teach", "max_failed_fraction", max_failed_fraction) > 1.0 or max_failed_fraction < 0.0:
        raise ValueError(f"teach: max_failed_fraction must be in [0, 1], got {max_failed_fraction}")


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
    max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION,
) -> TeachSummary:
    """Ask the teacher for every query not yet answered in ``out_path``; resumable, exactly once.

    Args:
        backend: a :class:`TeacherBackend`, or a backend name for :func:`radcot.teacher.get_backend`.
        queries: :class:`Query` records, or a path that :func:`radcot.data.readers.read_queries` reads.
        out_path: the output JSONL (sidecars ``.failed.jsonl`` and ``.config.json`` go next to it). An output
            whose earlier run finished no query (all failed, or it stopped first) is replaced when the settings
            differ; one with records is resumed only with the same settings (see ``force``/``overwrite``).
        prompt: a template name (``radcot``, ``query2doc``, ``cot-keywords``), a template string with
            ``{query}``, or a :class:`radcot.teacher.prompts.Prompt`.
        params: generation parameters (default: 150 tokens, temperature 0, as in the paper).
        concurrency: chunks in flight at once (capped by the backend's ``max_concurrency``).
        limit: only the first ``limit`` queries (after de-duplication).
        show_progress: progress bar, or log lines when stderr is not a terminal (``None``: from the log level).
        newline: replacement for newlines in outputs (the paper: a space); ``None`` keeps them.
        force: continue even if the recorded config differs.
        overwrite: delete earlier outputs and start over.
        retry_failed: ask again for queries that failed in earlier runs (default).
        max_failed_fraction: stop with :class:`TeacherFailed` once more than this share of the queries
            answered so far failed (judged after the first 10, or all when fewer); 1.0 never stops.

    Returns:
        a :class:`TeachSummary` (done, failed, tokens, time).

    Raises:
        OutputLockedError: another process is writing ``out_path``.
        TeacherConfigMismatch: ``out_path`` was made with other settings (see ``force``/``overwrite``).
        TeacherFailed: too many queries failed (finished ones are kept; rerun to resume).
        TeacherUnreachable: the endpoint refused every connection from the start (the run stopped at once).
        RadcotError: no queries to ask.
        TypeError: an argument of the wrong type (a bare string for ``queries`` is a file path).

    Example:
        >>> from radcot.records import Query
        >>> from radcot.teacher import get_backend, teach
        >>> be = get_backend("openai", base_url="http://127.0.0.1:8000/v1", model="m")  # doctest: +SKIP
        >>> teach(be, [Query("1", "what is bm25")], "cots.jsonl")  # doctest: +SKIP
    """
    from radcot.locks import output_lock
    from radcot.teacher import get_backend

    if not isinstance(backend, (TeacherBackend, str)):
        raise TypeError(f"teach(backend, queries, out_path): backend must be a TeacherBackend or a backend name, "
                        f"got {type(backend).__name__}")
    _check_teach_args(out_path, prompt, params, concurrency, limit, show_progress, newline, force, overwrite,
                      retry_failed, max_failed_fraction)
    queries = _load_queries(queries)
    owns_backend = isinstance(backend, str)
    backend = get_backend(backend) if owns_backend else backend
    try:
        with output_lock(out_path, "teacher output", inherit=True):  # radcot teach already holds it: no gap
            return _teach_locked(backend, queries, Path(out_path), prompt, params or GenerationParams(),
                                 concurrency, limit, show_progress, newline, force, overwrite, retry_failed,
                                 max_failed_fraction)
    finally:
        if owns_backend:
            backend.close()


def _teach_locked(backend: TeacherBackend, queries: Iterable[Query], out_path: Path, prompt: Any,
                  params: GenerationParams, concurrency: int, limit: int | None, show_progress: bool | None,
                  newline: str | None, force: bool, overwrite: bool, retry_failed: bool,
                  max_failed_fraction: float) -> TeachSummary:
    """:func:`teach` once the output lock is held: resume scan, ask, record, summarise."""
    from radcot.teacher.prompts import get_prompt
    from radcot.utils import progress, write_json

    prompt_obj = get_prompt(prompt)
    config = _config(backend, prompt_obj, params, newline)
    finished, earlier_failed = _resume_scan(out_path, config, force, overwrite)
    todo, total = _select_todo(queries, finished, earlier_failed, limit, retry_failed)
    if total == 0:
        raise RadcotError("no queries to ask the teacher: the queries are empty (check the --queries file)")
    summary = TeachSummary(out_path=str(out_path), total=total, skipped=total - len(todo),
                           failed_path=str(failed_path(out_path)))
    still_failed = {qid: r for qid, r in earlier_failed.items() if qid not in finished}
    rec = _Recorder(out_path, summary, still_failed, prompt_obj.name, backend.model_name, params.to_dict(),
                    newline, max_failed_fraction)
    bar = progress(total=len(todo), desc=f"teacher {backend.name}", unit="q",
                   show_progress=show_progress if todo else False)
    items = (TeachItem(q, prompt_obj.render(q.text)) for q in todo)
    t0 = time.perf_counter()
    completed = False
    try:
        _drive(backend, params, items, rec, len(todo), concurrency, bar)
        completed = True
    finally:
        rec.close()
        bar.close()
        rewrite_cots(failed_path(out_path), still_failed.values())
        summary.elapsed_s = time.perf_counter() - t0
        if completed:
            write_json(config_path(out_path), {**config, "last_summary": summary.to_dict()})
    logger.info("%s", summary)
    return summary


__all__: Sequence[str] = (
    "TeachSummary", "TeacherConfigMismatch", "TeacherFailed", "config_path", "failed_path", "is_usable",
    "normalize_text", "read_teacher_output", "teach",
)
