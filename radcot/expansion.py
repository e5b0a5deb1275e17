"""Stage 4: expand queries with chains of thought (RADCoT / query2doc formulas) and search with them.

Formulas (``q``: the query, ``cot``: its chain of thought; lengths in characters), one registry,
:data:`FORMULAS` (CLI choices, request schemas and config checks read their names from it):

- ``radcot`` (the official): ``(q + " ") * n + " " + cot`` with ``n = max(5, len(cot) // len(q))``, so the
  query keeps its weight against long CoTs (BM25 counts the repeated terms).
- ``query2doc``: the same with a fixed ``n = 5`` (Wang et al., 2023).
- ``dense``: ``q + " [SEP] " + cot`` (for an encoder).
- ``none``: ``q`` (the unexpanded baseline through the same code path).

One function turns a query and its CoT into the searched text, :func:`expand_query`: the CoT is cleaned
(:func:`clean_cot`), and a query whose CoT is missing, failed or blank falls back to ``q`` (marked
``fallback="no_cot"``), never to an empty or crashing query. Everything that expands (this module's
expanders, :class:`radcot.Expander`, ``radcot serve``, the PyTerrier transformer) goes through it.

Sources of CoTs for :class:`QueryExpander`: a dict ``{qid: cot}`` (or ``{qid: [cot, ...]}`` for several
samples), a teacher output file (radcot JSONL, ``qid \\t text`` TSV or the official davinci-003 TSV, read by
:func:`radcot.teacher.runner.read_teacher_output`), a list of such files (one per sample), a
:class:`~radcot.teacher.base.TeacherBackend` (asked on demand), or a trained student (generation through
:func:`radcot.student.generate.generate_cots`, with the passages and decoding its profile records, see
:mod:`radcot.student.profile`; ``retriever`` / ``generate_kwargs`` override them).

With ``samples = m > 1`` the expander yields ``m`` expansions per query and :class:`ExpandedSearcher`
fuses the ``m`` runs with reciprocal rank fusion.

Example:
    >>> from radcot.expansion import expand_query, expand_text
    >>> expand_text("bm25", "a ranking function", "query2doc")
    'bm25 bm25 bm25 bm25 bm25  a ranking function'
    >>> expand_query("bm25", "  ", "radcot")
    Expansion(query='bm25', cot='', expanded='bm25', fallback='no_cot')
    >>> expander = QueryExpander({"1": "Rationale: ... Answer: ..."}, formula="radcot")  # doctest: +SKIP
    >>> searcher = ExpandedSearcher(BM25Retriever("runs/idx"), expander)  # doctest: +SKIP
    >>> run = searcher.run(read_queries("data/demo/queries.test.tsv"), k=1000)  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from radcot.records import DataFormatError, Query, RadcotError, ScoredDoc

logger = logging.getLogger(__name__)

#: the separator of the ``dense`` formula
SEP = " [SEP] "

#: why an :class:`Expansion` is the query itself: no usable CoT; (serving) the deadline passed first; the
#: queue was full
FALLBACKS = ("no_cot", "deadline", "overloaded")


# ----------------------------------------------------------------------------------------------- formulas


def radcot_repeats(query: str, cot: str, minimum: int = 5) -> int:
    """How often the ``radcot`` formula repeats the query: ``max(minimum, len(cot) // len(query))``.

    Lengths are in characters (Python ``len``, i.e. code points). An empty query gives ``minimum``.

    Example:
        >>> radcot_repeats("abc", "x" * 30)
        10
        >>> radcot_repeats("abc", "short")
        5
    """
    if not query:
        return minimum
    return max(minimum, len(cot) // len(query))


def _radcot(query: str, cot: str) -> str:
    return (query + " ") * radcot_repeats(query, cot) + " " + cot


def _query2doc(query: str, cot: str) -> str:
    return (query + " ") * 5 + " " + cot


def _dense(query: str, cot: str) -> str:
    return query + SEP + cot


def _none(query: str, cot: str) -> str:
    return query


#: the expansion formulas by name, ``formula(query, cot) -> expanded text`` (the only list of them)
FORMULAS: Mapping[str, Callable[[str, str], str]] = MappingProxyType(
    {"radcot": _radcot, "query2doc": _query2doc, "dense": _dense, "none": _none})


def check_formula(formula: Any) -> str:
    """``formula`` if it names a formula of :data:`FORMULAS`; else :class:`RadcotError` listing them."""
    if not isinstance(formula, str) or formula not in FORMULAS:
        raise RadcotError(f"unknown expansion formula {formula!r}; choose one of {', '.join(FORMULAS)}")
    return formula


_check_formula = check_formula  # the name other modules imported before the registry was public


def expand_text(query: str, cot: str | None, formula: str = "radcot") -> str:
    """Apply one expansion formula to a query and its CoT (the pure formula; no cleaning, no fallback).

    Use :func:`expand_query` for a CoT as a model wrote it.

    Args:
        query: the query text.
        cot: the chain of thought (``None`` is treated as ``""``).
        formula: ``radcot``, ``query2doc``, ``dense`` or ``none``.

    Returns:
        The expanded query text.

    Example:
        >>> expand_text("ab", "cdefghijklmn", "radcot")  # n = max(5, 12 // 2) = 6
        'ab ab ab ab ab ab  cdefghijklmn'
        >>> expand_text("q", "cot", "dense")
        'q [SEP] cot'
    """
    return FORMULAS[check_formula(formula)](query, cot or "")


def is_usable_cot(text: Any) -> bool:
    """Whether ``text`` can expand a query: a string with something besides whitespace."""
    return isinstance(text, str) and bool(text.strip())


_usable = is_usable_cot


def clean_cot(text: str) -> str:
    """CoTs go into one-line queries: each newline/tab becomes a space (the paper's post-processing), ends stripped.

    Inner runs of spaces are kept, so ``len(cot)`` -- and the ``radcot`` repeat count -- match the source.

    Example:
        >>> clean_cot(" Rationale: a.\\nAnswer: b. ")
        'Rationale: a. Answer: b.'
    """
    return text.replace("\r\n", " ").replace("\t", " ").replace("\r", " ").replace("\n", " ").strip()


_clean = clean_cot


@dataclasses.dataclass(frozen=True)
class Expansion:
    """One expanded query: the original ``query``, the (cleaned) ``cot`` and the ``expanded`` text searched.

    ``fallback`` says why ``expanded`` is the query itself (``None``: it is expanded, or the formula is
    ``none``): ``no_cot`` (no usable CoT), and in serving ``deadline`` (the student did not finish in time)
    or ``overloaded`` (the queue was full).
    """

    query: str
    cot: str
    expanded: str
    fallback: str | None = None

    def __post_init__(self):
        if self.fallback is not None and self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be None or one of {FALLBACKS}, got {self.fallback!r}")

    @property
    def is_expanded(self) -> bool:
        """False when the query is searched as it is for want of a CoT (``fallback`` says why)."""
        return self.fallback is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def unexpanded(cls, query: str, reason: str) -> "Expansion":
        """The query as its own expansion, with the reason (one of :data:`FALLBACKS`)."""
        return cls(query, "", query, reason)


def expand_query(query: str, cot: Any, formula: str = "radcot") -> Expansion:
    """The expansion of ``query`` with ``cot``: the one place where a CoT becomes a searched text.

    The CoT is cleaned (:func:`clean_cot`); a ``None``, non-string or blank CoT gives the query itself with
    ``fallback="no_cot"``. The ``none`` formula gives the query (not a fallback: it is the chosen baseline).

    Example:
        >>> expand_query("q", "c\\nd", "query2doc").expanded
        'q q q q q  c d'
        >>> expand_query("q", None).fallback
        'no_cot'
    """
    fn = FORMULAS[check_formula(formula)]
    cot = clean_cot(cot) if is_usable_cot(cot) else ""
    if formula == "none":
        return Expansion(query, cot, query)
    if not cot:
        return Expansion.unexpanded(query, "no_cot")
    return Expansion(query, cot, fn(query, cot))


#: one token as Lucene's StandardTokenizer roughly sees it: a CJK character alone, else a run of word characters
_TOKEN_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|\w+")


def limit_terms(text: str, max_terms: int = 1000) -> str:
    """Cut ``text`` before its ``max_terms + 1``-th distinct token (case-folded); shorter texts are unchanged.

    Lucene builds one clause per distinct term and refuses more than ``maxClauseCount`` (1024) -- a long
    CoT of many distinct words makes pyserini raise ``TooManyClauses``. The query comes first in every
    formula, so the cut only shortens the CoT's tail. The count here is an over-estimate of the analyzer's
    (which also stems and drops stopwords), so the limit holds with the default margin.

    Example:
        >>> limit_terms("a b a c d", max_terms=2)
        'a b a'
    """
    seen: set[str] = set()
    for m in _TOKEN_RE.finditer(text):
        tok = m.group(0).casefold()
        if tok not in seen:
            if len(seen) >= max_terms:
                return text[: m.start()].rstrip()
            seen.add(tok)
    return text


def expand_queries(queries: Iterable[Query], cots: Mapping[str, str | None], formula: str = "radcot") -> dict[str, str]:
    """Expand each query with its CoT (:func:`expand_query`); a query without a usable CoT keeps its text
    (counted, logged).

    Args:
        queries: :class:`Query` records, ``(qid, text)`` pairs or ``{qid: text}``.
        cots: ``{query_id: cot}`` (missing ids, ``None`` and blank CoTs fall back to the query).
        formula: see :data:`FORMULAS`.

    Returns:
        ``{query_id: expanded text}`` in query order.

    Example:
        >>> expand_queries([Query("1", "q")], {"1": "c"}, "query2doc")
        {'1': 'q q q q q  c'}
    """
    check_formula(formula)
    if isinstance(queries, (str, bytes)):
        raise TypeError(f"expand_queries: queries must be Query records (or a {{qid: text}} mapping), got one str "
                        f"{queries[:40]!r}; wrap it ([Query(qid, text)]), or call expand_query(text, cot) for one")
    from radcot.retrieval.base import as_queries

    out: dict[str, str] = {}
    missing: list[str] = []
    for q in as_queries(queries):
        exp = expand_query(q.text, cots.get(q.query_id), formula)
        if exp.fallback is not None:
            missing.append(q.query_id)
        out[q.query_id] = exp.expanded
    if missing:
        logger.warning("%d of %d queries have no usable CoT and are searched unexpanded (e.g. %s)",
                       len(missing), len(out), ", ".join(missing[:5]))
    return out


def write_expansions(expanded: Mapping[str, str], path: str | os.PathLike) -> None:
    """Write ``qid \\t expanded text`` (one line per query, tabs/newlines flattened), atomically.

    Raises:
        RadcotError: a blank expanded text (nothing would be searched; :func:`expand_query` never makes one).
    """
    from radcot.utils import atomic_write

    blank = [qid for qid, text in expanded.items() if not is_usable_cot(text)]
    if blank:
        raise RadcotError(f"{len(blank)} expanded queries are blank (e.g. query id {blank[0]!r}); nothing written "
                          f"to {path}: expand with expand_query/expand_queries, which keep the query text when "
                          f"there is no usable CoT")
    with atomic_write(path) as f:
        for qid, text in expanded.items():
            flat = text.replace("\r\n", " ").replace("\t", " ").replace("\r", " ").replace("\n", " ")
            f.write(f"{qid}\t{flat}\n")


def read_expansions(path: str | os.PathLike) -> dict[str, str]:
    """Read a ``qid \t expanded text`` file written by :func:`write_expansions` / ``radcot expand`` (``.gz`` too).

    Raises:
        DataFormatError: a line without a tab, a blank expanded text (it would search an empty query), or a
            repeated query id (file and line named).
    """
    from radcot.data.readers import _open

    out: dict[str, str] = {}
    first: dict[str, int] = {}
    with _open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            qid, sep, text = line.partition("\t")
            if not sep:
                raise DataFormatError(path, i, "2 tab-separated fields (query-id \\t expanded text)",
                                      f"no tab: {line[:80]!r}", "Write one `qid\\ttext` line per query (radcot expand does)")
            qid = qid.strip()
            if not text.strip():
                raise DataFormatError(path, i, "a non-blank expanded text after the tab",
                                      f"a blank expansion for query id {qid!r}",
                                      "write the query text itself for a query without a usable CoT (radcot expand "
                                      "does), or remove the line to search the query unexpanded")
            if qid in first:
                raise DataFormatError(path, i, "each query id once", f"query id {qid!r} again (first at line {first[qid]})")
            first[qid] = i
            out[qid] = text
    return out


def load_cots(path: str | os.PathLike) -> dict[str, str]:
    """Usable CoTs of a teacher/student output file (JSONL or TSV) as ``{qid: text}``.

    Failed and blank records are left out (the expander then falls back to the query).
    """
    from radcot.teacher.runner import is_usable, read_teacher_output

    return {qid: rec["text"] for qid, rec in read_teacher_output(path).items() if is_usable(rec)}


# ------------------------------------------------------------------------------------------------ expander


class TeacherUnavailable(RadcotError):
    """The teacher backend failed for (more than a stated fraction of) the queries: nothing to expand with."""


def text_query_id(text: str) -> str:
    """The query id :class:`QueryExpander` gives a plain string: ``text-`` and 16 hex digits of its SHA-1.

    Example:
        >>> text_query_id("what is bm25") == text_query_id("what is bm25") != text_query_id("what is rm3")
        True
    """
    import hashlib

    return "text-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _is_student_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("best", "config.json", "train_config.json",
                                                              "model.safetensors", "last", "radcot_student.json"))


class QueryExpander:
    """Expand queries with CoTs from a file, a dict, a teacher backend or a trained student.

    Args:
        source: ``{qid: cot}`` / ``{qid: [cot, ...]}``; a teacher output file (JSONL/TSV); a list of files
            (one per sample); a :class:`~radcot.teacher.base.TeacherBackend`; a student run directory
            (``RUN_DIR`` or ``RUN_DIR/best``) or a loaded ``FiDStudent``.
        formula: ``radcot`` (default), ``query2doc``, ``dense`` or ``none``.
        samples: CoTs per query to use (``m``); the searcher fuses their runs with RRF. Files/dicts give at
            most as many as they hold; a teacher is asked ``m`` times with seeds ``seed, seed+1, ...``.
        prompt: teacher prompt name or template (teacher source).
        params: :class:`~radcot.teacher.base.GenerationParams` for a teacher source (default: 150 tokens,
            temperature 0; use a temperature > 0 with ``samples > 1``).
        retriever: passages for a student source (its FiD context). Default: the index its profile records
            (``radcot_student.json``); a student without a profile needs one unless it reads no passages.
        generate_kwargs: keyword arguments for :func:`radcot.student.generate.generate_cots` over the profile's
            (``k``, ``max_new_tokens``, ``no_repeat_ngram_size``, ``batch_size``, ``num_return_sequences`` ...).
        cache_dir: where a student's generations are written (default: a temporary directory).
        max_failed_fraction: a teacher source raises :class:`TeacherUnavailable` when more than this fraction
            of its calls in one expansion fail (default 0.5; a server that is down fails them all).

    Example:
        >>> ex = QueryExpander({"1": "Rationale: x. Answer: y."}, formula="query2doc")
        >>> ex.expand(Query("1", "q"))
        'q q q q q  Rationale: x. Answer: y.'
    """

    def __init__(self, source: Any, formula: str = "radcot", samples: int = 1, prompt: Any = "radcot",
                 params: Any = None, retriever: Any = None, generate_kwargs: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None, max_failed_fraction: float = 0.5):
        from radcot.teacher.base import TeacherBackend

        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        self.max_failed_fraction = max_failed_fraction

        self.formula = check_formula(formula)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples = samples
        self.prompt, self.params = prompt, params
        self.retriever = retriever
        self.generate_kwargs = dict(generate_kwargs or {})
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.backend: TeacherBackend | None = None
        self.student: Any = None  # a student directory or a loaded FiDStudent
        self.profile: Any = None  # the student's StudentProfile (a student directory source)
        self._cots: dict[str, list[str]] = {}  # qid -> samples (known / generated so far)
        self._by_text: dict[str, str] = {}  # query text -> qid (from files that record the query)
        self.last_missing: list[str] = []  # query ids that fell back to the query in the last call
        if isinstance(source, TeacherBackend):
            self.backend = source
            self.kind = "teacher"
        elif isinstance(source, Mapping):
            for qid, v in source.items():
                vals = [v] if isinstance(v, str) or v is None else list(v)
                self._cots[str(qid)] = [clean_cot(t) for t in vals if is_usable_cot(t)]
            self.kind = "dict"
        elif isinstance(source, (str, os.PathLike)) and _is_student_dir(Path(source)):
            from radcot.student.profile import StudentProfile

            self.profile = StudentProfile.load(source)  # its passages and decoding, unless overridden
            self.student = self.profile.checkpoint
            self.kind = "student"
        elif type(source).__name__ == "FiDStudent":  # a loaded student (no torch import here)
            self.student = source
            self.kind = "student"
        elif isinstance(source, (str, os.PathLike)):
            self._load_files([Path(source)])
            self.kind = "file"
        elif isinstance(source, (list, tuple)) and source and all(isinstance(p, (str, os.PathLike)) for p in source):
            self._load_files([Path(p) for p in source])
            self.kind = "files"
        else:
            raise RadcotError(
                f"QueryExpander source must be a dict of CoTs, a CoT file (JSONL/TSV), a list of files, a teacher "
                f"backend or a student run directory; got {type(source).__name__}")

    def _load_files(self, paths: list[Path]) -> None:
        from radcot.teacher.runner import is_usable, read_teacher_output

        for p in paths:
            if p.is_dir():
                raise RadcotError(f"{p} is a directory but not a trained student run (no best/ or config.json); "
                                  "pass a CoT file (JSONL/TSV) or a student run directory")
            for qid, rec in read_teacher_output(p).items():
                if rec.get("query"):
                    self._by_text.setdefault(" ".join(str(rec["query"]).split()), qid)
                if is_usable(rec):
                    self._cots.setdefault(qid, []).append(clean_cot(rec["text"]))

    # -------------------------------------------------------------------------------------- CoT supply

    def _generate_teacher(self, queries: list[Query]) -> None:
        from radcot.teacher.base import GenerationParams, TeacherError, TeachItem
        from radcot.teacher.prompts import get_prompt
        from radcot.teacher.runner import FAILURE_SAMPLE

        prompt = get_prompt(self.prompt)
        params = self.params or GenerationParams()
        batch = max(1, int(getattr(self.backend, "batch_size", 1) or 1))
        chunks = ((params if s == 0 else dataclasses.replace(params, seed=(params.seed or 0) + s), queries[i:i + batch])
                  for s in range(self.samples) for i in range(0, len(queries), batch))
        total, asked, failed, last_error = len(queries) * self.samples, 0, 0, None
        for p, chunk in chunks:
            items = [TeachItem(q, prompt.render(q.text)) for q in chunk]
            try:
                results = self.backend.generate(items, p)
            except Exception as e:  # noqa: BLE001 - counted; too many failures raise below
                results = [TeacherError(f"{type(e).__name__}: {e}")] * len(chunk)
            for q, res in zip(chunk, results):
                asked += 1
                if isinstance(res, BaseException):
                    failed, last_error = failed + 1, res
                elif is_usable_cot(res.text):
                    self._cots.setdefault(q.query_id, []).append(clean_cot(res.text))
                else:
                    self._cots.setdefault(q.query_id, [])  # answered, but blank: falls back to the query
            if asked >= min(total, FAILURE_SAMPLE) and failed > self.max_failed_fraction * asked:
                break  # most of the first answers failed: stop now (as radcot teach does), not after every query
        self._check_failures(asked, failed, last_error)

    def _check_failures(self, asked: int, failed: int, last_error: BaseException | None) -> None:
        """Raise :class:`TeacherUnavailable` when more than ``max_failed_fraction`` of the teacher calls failed.

        Failed queries are not cached, so calling again retries them.
        """
        if not failed:
            return
        where = getattr(self.backend, "base_url", None)
        if failed / asked > self.max_failed_fraction:
            check = f"check that the server at {where} is up (curl {where}/models)" if where else \
                "check the teacher backend"
            raise TeacherUnavailable(
                f"teacher {self.backend.name} failed on {failed} of {asked} queries (more than "
                f"max_failed_fraction={self.max_failed_fraction:g}); last error: {last_error}. Nothing was expanded "
                f"with it: {check} and run again (failed queries are retried, answered ones are kept)")
        logger.warning("teacher %s failed on %d of %d queries (last error: %s); they are searched unexpanded",
                       self.backend.name, failed, asked, last_error)

    def _generate_student(self, queries: list[Query]) -> None:
        from radcot.student.generate import generate_cots  # other stage; imported only when used

        kwargs = self._profile_kwargs()
        if self.retriever is None and self.profile is not None:
            self.retriever = self.profile.open_retriever()  # the recorded index (None: a no-context student)
        if self.samples > 1:
            kwargs.setdefault("num_return_sequences", self.samples)
            kwargs.setdefault("do_sample", True)
        tmp = None
        if self.cache_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="radcot-expand-")
            out_dir = Path(tmp.name)
        else:
            out_dir = self.cache_dir
        try:
            out = out_dir / "student-cots.jsonl"
            generate_cots(self.student, out, queries=queries, retriever=self.retriever, **kwargs)
            from radcot.utils import read_jsonl

            # one or several records per query (several samples): keep them in file order
            wanted = {q.query_id for q in queries}
            for rec in read_jsonl(out):
                qid = str(rec.get("query_id"))
                if qid not in wanted:
                    continue  # a resumed cache file also holds earlier queries
                texts = rec.get("texts") if isinstance(rec.get("texts"), list) else [rec.get("text")]
                if rec.get("error") is None:
                    self._cots.setdefault(qid, []).extend(clean_cot(t) for t in texts if is_usable_cot(t))
            for q in queries:
                self._cots.setdefault(q.query_id, [])
        finally:
            if tmp is not None:
                tmp.cleanup()

    def _profile_kwargs(self) -> dict[str, Any]:
        """``generate_cots`` arguments: the profile's passages per query and decoding, then ``generate_kwargs``."""
        if self.profile is None:
            return dict(self.generate_kwargs)
        inf = self.profile.inference
        return {"k": inf.n_context, **inf.decoding.generate_kwargs(), **self.generate_kwargs}

    def cots(self, queries: Sequence[Query]) -> dict[str, list[str]]:
        """The CoT samples of each query (an empty list where there is none), generating what is missing."""
        queries = [q if isinstance(q, Query) else Query(*q) for q in queries]
        todo = [q for q in queries if q.query_id not in self._cots]
        if todo and self.backend is not None:
            self._generate_teacher(todo)
        elif todo and self.student is not None:
            self._generate_student(todo)
        return {q.query_id: self._cots.get(q.query_id, [])[: self.samples] for q in queries}

    def _as_query(self, query: Query | str) -> Query:
        """A :class:`Query` as it is; a string gets the id recorded for its text in a CoT file, else an id made
        from the text itself (:func:`text_query_id`), so that two different strings never share a CoT."""
        if isinstance(query, Query):
            return query
        text = str(query)
        key = " ".join(text.split())
        return Query(self._by_text.get(key) or text_query_id(key), text)

    # -------------------------------------------------------------------------------------- expansion

    def expand_samples(self, queries: Sequence[Query]) -> list[dict[str, str]]:
        """``m`` expansion sets: ``[{qid: expanded}, ...]`` (sample ``i`` of each query; a query with fewer
        samples reuses its last one, a query with none falls back to its text -- counted and logged)."""
        queries = [self._as_query(q) for q in queries]
        cots = self.cots(queries) if self.formula != "none" else {q.query_id: [] for q in queries}
        m = self.samples if self.formula != "none" else 1
        out: list[dict[str, str]] = [{} for _ in range(m)]
        missing: list[str] = []
        for q in queries:
            samples = cots.get(q.query_id) or []
            if not samples and self.formula != "none":
                missing.append(q.query_id)
            for i in range(m):
                cot = samples[min(i, len(samples) - 1)] if samples else None
                out[i][q.query_id] = expand_query(q.text, cot, self.formula).expanded
        self.last_missing = missing
        if missing:
            logger.warning("%d of %d queries have no usable CoT and are searched unexpanded (e.g. %s)",
                           len(missing), len(queries), ", ".join(missing[:5]))
        return out

    def expand_all(self, queries: Sequence[Query]) -> dict[str, str]:
        """``{qid: expanded text}`` with the first CoT sample of each query."""
        return self.expand_samples(queries)[0]

    def expand(self, query: Query | str) -> str:
        """The expanded text of one query (a plain string is looked up by its text in recorded outputs)."""
        q = self._as_query(query)
        return self.expand_samples([q])[0][q.query_id]

    def __repr__(self) -> str:
        return f"QueryExpander(kind={self.kind!r}, formula={self.formula!r}, samples={self.samples})"


# ------------------------------------------------------------------------------------------------ searcher


class ExpandedSearcher:
    """A retriever that searches with expanded queries; same ``search``/``batch_search``/``run`` shape.

    With ``expander.samples > 1`` each query is searched once per CoT sample and the runs are fused with
    reciprocal rank fusion (``rrf_constant``, ``depth``).

    Args:
        retriever: a :class:`~radcot.retrieval.bm25.BM25Retriever` / ``DenseRetriever`` (anything with
            ``search(text, k)`` and ``batch_search(queries, k, threads)``).
        expander: a :class:`QueryExpander`.
        rrf_constant: the RRF constant (default 60, as Cormack et al.; ``rrf_k`` is its deprecated name).
        depth: how deep each sample's run is searched before fusion (at least ``k``).
        max_terms: cut expansions to this many distinct terms (Lucene's clause limit is 1024; see
            :func:`limit_terms`); ``None`` sends them whole.

    Example:
        >>> searcher = ExpandedSearcher(bm25, QueryExpander("cots.jsonl"))  # doctest: +SKIP
        >>> searcher.search("where was Velkor Danth born", k=10)[0].doc_id  # doctest: +SKIP
    """

    def __init__(self, retriever: Any, expander: QueryExpander, rrf_constant: float | None = None, depth: int = 1000,
                 max_terms: int | None = 1000, *, rrf_k: float | None = None):
        from radcot.retrieval.fusion import DEFAULT_RRF_CONSTANT, _renamed

        rrf_constant = _renamed("rrf_constant", rrf_constant, "rrf_k", rrf_k, "ExpandedSearcher")
        self.retriever, self.expander = retriever, expander
        self.rrf_constant = DEFAULT_RRF_CONSTANT if rrf_constant is None else rrf_constant
        self.depth, self.max_terms = depth, max_terms
        recorded = expander.profile is not None and expander.profile.retriever is not None
        if expander.student is not None and expander.retriever is None and not recorded:
            expander.retriever = retriever  # a student that records no index reads the searched one

    def _fuse(self, runs: list[dict[str, dict[str, float]]], depth: int) -> dict[str, dict[str, float]]:
        from radcot.retrieval.fusion import reciprocal_rank_fusion

        return reciprocal_rank_fusion(runs, rrf_constant=self.rrf_constant, depth=depth)

    def _expanded_sets(self, queries: Sequence[Query]) -> list[dict[str, str]]:
        sets = self.expander.expand_samples(queries)
        if self.max_terms is None:
            return sets
        cut = 0
        for s in sets:
            for qid, text in s.items():
                short = limit_terms(text, self.max_terms)
                if short is not text:
                    s[qid], cut = short, cut + 1
        if cut:
            logger.info("%d expanded queries were cut to %d distinct terms (Lucene's clause limit)", cut, self.max_terms)
        return sets

    def batch_search(self, queries: Sequence[Query], k: int = 1000, threads: int = 2) -> dict[str, list[ScoredDoc]]:
        """``{qid: [ScoredDoc, ...]}`` best first, searching the expanded queries (fused over samples)."""
        queries = [q if isinstance(q, Query) else Query(*q) for q in queries]
        sets = self._expanded_sets(queries)
        if len(sets) == 1:
            expanded = [Query(q.query_id, sets[0][q.query_id]) for q in queries]
            return self.retriever.batch_search(expanded, k=k, threads=threads)
        depth = max(k, self.depth)
        runs = []
        for s in sets:
            res = self.retriever.batch_search([Query(q.query_id, s[q.query_id]) for q in queries], k=depth,
                                              threads=threads)
            runs.append({qid: {d.doc_id: d.score for d in docs} for qid, docs in res.items()})
        fused = self._fuse(runs, depth)
        out: dict[str, list[ScoredDoc]] = {}
        for q in queries:
            ranked = sorted(fused.get(q.query_id, {}).items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out[q.query_id] = [ScoredDoc(q.query_id, d, s) for d, s in ranked]
        return out

    def search(self, query: Query | str, k: int = 10) -> list[ScoredDoc]:
        """Search one query (a :class:`Query`, or a text looked up in the expander's recorded outputs)."""
        q = self.expander._as_query(query)
        return self.batch_search([q], k=k, threads=1).get(q.query_id, [])

    def run(self, queries: Sequence[Query], k: int = 1000, threads: int = 2) -> dict[str, dict[str, float]]:
        """``{qid: {docid: score}}`` (the run dict :func:`radcot.evaluation.evaluate` and ``write_run`` take)."""
        queries = [q if isinstance(q, Query) else Query(*q) for q in queries]
        sets = self._expanded_sets(queries)
        if len(sets) == 1 and hasattr(self.retriever, "run"):
            return self.retriever.run([Query(q.query_id, sets[0][q.query_id]) for q in queries], k=k, threads=threads)
        res = self.batch_search(queries, k=k, threads=threads)
        return {qid: {d.doc_id: d.score for d in docs} for qid, docs in res.items()}

    def doc(self, doc_id: str):
        """The retriever's document (``Doc`` or None), so the searcher stands in for the retriever."""
        return self.retriever.doc(doc_id)


__all__ = ["FALLBACKS", "FORMULAS", "ExpandedSearcher", "Expansion", "QueryExpander", "check_formula", "clean_cot",
           "expand_queries", "expand_query", "expand_text", "is_usable_cot", "limit_terms", "load_cots",
           "radcot_repeats", "read_expansions", "text_query_id", "write_expansions", "TeacherUnavailable"]
