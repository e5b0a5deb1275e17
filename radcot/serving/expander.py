"""The in-memory expander: a trained student (and its retriever) loaded once, expanding query strings live.

A served student answers as the evaluated one did: :meth:`Expander.load` reads the student's profile
(:mod:`radcot.student.profile`, ``radcot_student.json``): its passages come from the index it was trained
and evaluated with (checked against a given ``index``: another kind or collection is refused unless
``force_index``), and its passages per query, decoding settings and expansion formula are the recorded
ones; keyword arguments override them. A checkpoint without a profile (older radcot) needs an explicit
index when it reads passages, with today's default decoding. :attr:`Expander.settings` says what is served.

The model inputs are built by the functions ``radcot generate`` uses
(:func:`radcot.student.generate.examples_from_queries`, the student's collator and
:meth:`~radcot.student.model.FiDStudent.generate_text`), so greedy CoTs equal ``radcot generate``'s.

With a ``cache`` (:mod:`radcot.serving.cache`: in memory, or a SQLite file that ``radcot serve`` workers,
the PyTerrier transformer and ``radcot cache warm`` share) each normalised query is generated once per
served student: entries are keyed by :attr:`ServedSettings.fingerprint` (weights, passages, decoding,
precision), so another student never reads them.

Example:
    >>> from radcot import Expander
    >>> expander = Expander.load("runs/demo/students/radcot")  # its recorded index and settings  # doctest: +SKIP
    >>> expander.expand("where was Velkor Danth born").expanded  # doctest: +SKIP
    'where was Velkor Danth born where was ... Rationale: ... Answer: ...'
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from radcot.expansion import Expansion, check_formula, expand_query, limit_terms
from radcot.records import Query, RadcotError, ScoredDoc
from radcot.serving.cache import CoTStore, normalize_query
from radcot.serving.cpu import CpuPath

#: bump when the way a CoT is produced from the same settings changes (old cache entries then never match)
GENERATION_VERSION = 1


def resolve_student_dir(path: str | os.PathLike) -> Path:
    """The directory of a student's profile: ``RUN_DIR/best``, a checkpoint, or a pipeline row's profile dir.

    Raises:
        RadcotError: the path does not exist or holds no saved student (names what was found and the fix).
    """
    from radcot.student.profile import StudentProfile

    return StudentProfile.load(path).directory


def as_texts(texts: Any, who: str = "expand_batch") -> list[str]:
    """The query strings of ``texts`` (any iterable, read once), checked: a str is not a list of queries.

    Raises:
        TypeError: ``texts`` is a string/bytes or not iterable, or an item is not a string (its index named).

    Example:
        >>> as_texts(t for t in ["a", "b"])
        ['a', 'b']
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{who} takes a list of query strings, got one {type(texts).__name__} ({texts[:40]!r}); "
                        f"wrap it in a list, or call expand() for one query")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"{who} takes an iterable of query strings, got {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{who}: query {i} is {type(t).__name__} ({t!r:.40}), expected a str")
    return items


# -------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class ServedSettings:
    """What a served student answers with (printed by ``radcot serve`` at start, shown by ``/v1/info``).

    ``fingerprint`` hashes everything that decides a CoT: the weights and their profile, the passages
    (retriever kind, index identity, settings), passages per query, decoding and the CPU path. It keys
    the expansion cache.
    """

    student: str
    checkpoint: str
    profile_recorded: bool
    no_context: bool
    n_context: int
    decoding: Mapping[str, Any]
    formula: str
    retriever: Mapping[str, Any] | None
    cpu_path: Mapping[str, Any]
    device: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: ``student S (fingerprint F): bm25 index I, k=10, max_new_tokens=150, ..., fp32 on cpu``."""
        if self.no_context:
            passages = "no passages"
        elif self.retriever is None:
            passages = "passages from a given retriever"
        else:
            passages = f"{self.retriever['kind']} passages from {', '.join(i['path'] for i in self.retriever['indexes'])}"
        dec = ", ".join(f"{k}={v}" for k, v in self.decoding.items())
        how = CpuPath(**self.cpu_path).label
        rec = "" if self.profile_recorded else " (no recorded profile: given index, default decoding)"
        return (f"student {self.student} (fingerprint {self.fingerprint}){rec}: {passages}, k={self.n_context}, "
                f"{dec}, formula={self.formula}, {how} on {self.device}")


def _retriever_record(retriever: Any) -> dict[str, Any] | None:
    """The retriever as recorded in profiles (kind, indexes, settings); ``None`` when radcot cannot record it."""
    if retriever is None:
        return None
    from radcot.student.profile import ProfileError, RetrieverRecord

    try:
        return RetrieverRecord.of(retriever).to_dict()
    except ProfileError:
        return {"kind": getattr(retriever, "kind", type(retriever).__name__), "params": {},
                "indexes": [{"kind": "object", "path": repr(retriever), "identity": {}}]}


def _retriever_key(record: Mapping[str, Any] | None) -> Any:
    """The part of a retriever record that decides passages: kind, settings, each index's identity (its path
    only when the identity does not name its collection: an index radcot did not build)."""
    if record is None:
        return None
    indexes = [{**i["identity"], **({} if i["identity"].get("collection_fingerprint") else {"path": i["path"]})}
               for i in record["indexes"]]
    return {"kind": record["kind"], "params": record["params"], "indexes": indexes}


def _weights_fingerprint(student: Any) -> str:
    """A loaded student's identity: its saved files' profile fingerprint when it came from a directory, else a
    hash of its parameters."""
    src = getattr(student, "name_or_path", None)
    if src and Path(src).is_dir():
        from radcot.student.profile import StudentProfile

        return StudentProfile.load(src).fingerprint()
    h = hashlib.sha256()
    for name, t in sorted(student.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# -------------------------------------------------------------------------------------------- expander


class Expander:
    """A loaded student that expands query strings in memory; thread-safe (one lock around generation).

    Args:
        student: a loaded :class:`~radcot.student.model.FiDStudent`.
        retriever: its passages' retriever (``batch_search``, ``doc``, ``search``); required for a
            retrieval-augmented student, optional for a no-context one (then only :meth:`search` needs it).
        inference: passages per query, decoding and formula (a :class:`~radcot.student.profile.Inference`;
            default: the student's ``n_context`` and :class:`~radcot.student.profile.Decoding`'s defaults).
        batch_size: queries per ``generate`` call.
        device: where the student runs (``auto``: cuda when available).
        cache: a :class:`~radcot.serving.cache.CoTStore` (``MemoryCache``, ``SQLiteCache``) or ``None``.
        cpu_path: the serving path's precision and early stop (:class:`~radcot.serving.cpu.CpuPath`; default fp32).
        profile: the student's :class:`~radcot.student.profile.StudentProfile` (names and fingerprints it).
    """

    def __init__(self, student: Any, retriever: Any = None, inference: Any = None, batch_size: int = 16,
                 device: str = "auto", cache: CoTStore | None = None, cpu_path: CpuPath | None = None,
                 profile: Any = None):
        import torch

        from radcot.serving.cpu import prepare
        from radcot.student.profile import Inference

        fid = student.fid_config
        self.inference = inference or Inference(n_context=int(fid.n_context))
        self.formula = check_formula(self.inference.formula)
        self.no_context = bool(fid.no_context)
        if not self.no_context and retriever is None:
            raise RadcotError(f"this student was trained with {fid.n_context} retrieved passages per query and "
                              f"records no index: pass the index it reads (Expander.load(..., index=DIR), radcot "
                              f"serve --index DIR)")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.k, self.batch_size = self.inference.n_context, batch_size
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cpu_path = cpu_path or CpuPath()
        self.student = prepare(student.to(device).eval(), self.cpu_path, device)
        self.retriever, self.cache, self.profile = retriever, cache, profile
        self.gen_kwargs: dict[str, Any] = dict(self.inference.decoding.generate_kwargs(), do_sample=False,
                                               num_return_sequences=1, use_cache=True)
        self.settings = self._settings(student, device)
        self._lock = threading.Lock()  # one generate at a time (torch uses all cores for one batch)
        self._search_lock = threading.Lock()  # the retriever's searcher is not documented as thread-safe

    def _settings(self, student: Any, device: str) -> ServedSettings:
        rec = _retriever_record(self.retriever) if not self.no_context else None
        decoding = dataclasses.asdict(self.inference.decoding)
        base = self.profile.fingerprint() if self.profile is not None else _weights_fingerprint(student)
        key = {"v": GENERATION_VERSION, "student": base, "no_context": self.no_context, "k": self.k,
               "decoding": decoding, "retriever": _retriever_key(rec), "cpu": self.cpu_path.to_dict()}
        fp = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        where = self.profile.directory if self.profile is not None else getattr(student, "name_or_path", "FiDStudent")
        checkpoint = self.profile.checkpoint if self.profile is not None else where
        return ServedSettings(str(where), str(checkpoint), bool(self.profile is not None and self.profile.recorded),
                              self.no_context, self.k, decoding, self.formula, rec, self.cpu_path.to_dict(),
                              str(device), fp)

    @classmethod
    def load(cls, student_dir: str | os.PathLike, index: Any = None, *, dense_index: str | os.PathLike | None = None,
             force_index: bool = False, formula: str | None = None, k: int | None = None,
             max_new_tokens: int | None = None, num_beams: int | None = None,
             no_repeat_ngram_size: int | None = None, repetition_penalty: float | None = None,
             batch_size: int = 16, device: str = "auto", cache: CoTStore | None = None,
             precision: str = "fp32", stop_at_answer: bool = False) -> "Expander":
        """Load a trained student with the passages and settings its profile records.

        Args:
            student_dir: a training run directory, its ``best/``, or a pipeline row's profile directory.
            index: ``None`` (the recorded index), an index directory, or a retriever object; an index of another
                kind or collection than the recorded one is refused unless ``force_index``.
            dense_index: the dense index of a fused (BM25 + dense) student, with ``index`` its BM25 one.
            force_index: serve a given index even when it is not the one the student was evaluated with.
            formula, k, max_new_tokens, num_beams, no_repeat_ngram_size, repetition_penalty: override the
                recorded formula, passages per query and decoding (``None``: the recorded value).
            batch_size, device, cache: see :class:`Expander`.
            precision, stop_at_answer: the CPU serving path (:class:`~radcot.serving.cpu.CpuPath`).

        Raises:
            RadcotError: no student there; no index recorded or given for a student that reads passages; an
                index that does not match (see :meth:`~radcot.student.profile.StudentProfile.open_retriever`).
        """
        from radcot.student.model import FiDStudent
        from radcot.student.profile import StudentProfile

        profile = StudentProfile.load(student_dir)
        if dense_index is not None:
            index = {"dense": str(dense_index), **({"bm25": str(index)} if index is not None else {})}
        retriever = profile.open_retriever(index, force=force_index)
        inference = served_inference(profile.inference, formula=formula, k=k, max_new_tokens=max_new_tokens,
                                     num_beams=num_beams, no_repeat_ngram_size=no_repeat_ngram_size,
                                     repetition_penalty=repetition_penalty)
        student = FiDStudent.from_pretrained(profile.checkpoint)
        return cls(student, retriever, inference, batch_size=batch_size, device=device, cache=cache,
                   cpu_path=CpuPath(precision, stop_at_answer), profile=profile)

    # ----------------------------------------------------------------------------------------- generation

    def lookup(self, keys: list[str]) -> dict[str, str]:
        """Cached CoTs of normalised queries (``{key: cot}``; none without a cache)."""
        return self.cache.get_many(self.settings.fingerprint, keys) if self.cache is not None and keys else {}

    def generate(self, keys: list[str]) -> list[str]:
        """The student's greedy CoT for each normalised query (no cache lookup), stored in the cache."""
        cots = self._generate(keys)
        if self.cache is not None and keys:
            self.cache.put_many(self.settings.fingerprint, dict(zip(keys, cots)))
        return cots

    def _generate(self, texts: list[str]) -> list[str]:
        from radcot.student.generate import examples_from_queries

        if not texts:
            return []
        queries = [Query(str(i), t) for i, t in enumerate(texts)]
        with self._search_lock:
            examples = examples_from_queries(queries, self.retriever, self.k, self.no_context,
                                             max(self.batch_size, 64))
        out: list[str] = []
        with self._lock:
            for i in range(0, len(examples), self.batch_size):
                chunk = [dict(ex, passages=list(ex["passages"])[:self.k]) for ex in examples[i:i + self.batch_size]]
                out.extend(" ".join(t.split()) for t in self.student.generate_text(chunk, n_context=self.k,
                                                                                   **self._kwargs()))
        return out

    def _kwargs(self) -> dict[str, Any]:
        if not self.cpu_path.stop_at_answer:
            return self.gen_kwargs
        from radcot.serving.cpu import answer_stop

        return dict(self.gen_kwargs, stopping_criteria=answer_stop(self.student.tokenizer))

    def cots(self, texts: Iterable[str]) -> list[str]:
        """The student's greedy CoT for each query string (cache first; one-line, whitespace-normalised as
        ``radcot generate``'s). A blank query gets ``""`` without generating.

        Raises:
            TypeError: ``texts`` is a str, or holds a non-str item (see :func:`as_texts`).
        """
        keys = [normalize_query(t) for t in as_texts(texts, "cots")]
        found = self.lookup(list(dict.fromkeys(k for k in keys if k)))
        todo = [k for k in dict.fromkeys(keys) if k and k not in found]
        found.update(zip(todo, self.generate(todo)))
        return [found.get(k, "") for k in keys]

    def apply(self, text: str, cot: Any, formula: str | None = None) -> Expansion:
        """The :class:`~radcot.expansion.Expansion` of ``text`` from its CoT (:func:`radcot.expansion.expand_query`:
        a blank CoT falls back to the query, marked ``fallback="no_cot"``)."""
        return expand_query(text, cot, formula or self.formula)

    def expand_batch(self, texts: Iterable[str], formula: str | None = None) -> list[Expansion]:
        """Expand several query strings (batched generation); one :class:`Expansion` per text, in order.

        Raises:
            TypeError: ``texts`` is a single str, or holds a non-str item (its index named).
        """
        texts = as_texts(texts)
        check_formula(formula or self.formula)
        return [self.apply(t, c, formula) for t, c in zip(texts, self.cots(texts))]

    def expand(self, text: str, formula: str | None = None) -> Expansion:
        """Expand one query string.

        Example:
            >>> Expander.load("runs/student").expand("what is bm25").expanded  # doctest: +SKIP
        """
        if not isinstance(text, str):
            raise TypeError(f"expand takes one query string, got {type(text).__name__}; use expand_batch for several")
        return self.expand_batch([text], formula)[0]

    def warm_up(self) -> float:
        """One generation (and search) so the first real request pays no start-up cost (JVM, index, kernels);
        not cached. Returns the seconds the generation took after a first untimed one."""
        self._generate(["warm up"])
        t0 = time.perf_counter()
        self._generate(["warm up the student"])
        seconds = time.perf_counter() - t0
        if self.retriever is not None:
            self.search("warm up", k=1)
        return seconds

    # ---------------------------------------------------------------------------------------------- search

    def search(self, expanded: str, k: int = 10, max_terms: int | None = 1000) -> list[ScoredDoc]:
        """Search the retriever with an expanded text (cut to ``max_terms`` distinct terms for Lucene)."""
        if self.retriever is None:
            raise RadcotError("searching needs an index: pass index= to Expander.load (radcot serve --index DIR)")
        text = limit_terms(expanded, max_terms) if max_terms else expanded
        with self._search_lock:
            return self.retriever.search(text, k=k)

    def __repr__(self) -> str:
        kind = "no-context" if self.no_context else f"k={self.k}"
        return (f"Expander({kind}, formula={self.formula!r}, {self.cpu_path.label}, device={self.student.device}, "
                f"fingerprint={self.settings.fingerprint})")


def served_inference(base: Any, **overrides: Any):
    """``base`` (an :class:`~radcot.student.profile.Inference`) with the given non-``None`` overrides:
    ``formula``, ``k`` (passages per query), and the :class:`~radcot.student.profile.Decoding` fields.

    Raises:
        ProfileError: an override out of range (names it).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "formula" in overrides:
        check_formula(overrides["formula"])
    decoding_fields = {f.name for f in dataclasses.fields(base.decoding)}
    decoding = dataclasses.replace(base.decoding, **{k: v for k, v in overrides.items() if k in decoding_fields})
    top = {"decoding": decoding}
    if "k" in overrides:
        top["n_context"] = overrides["k"]
    if "formula" in overrides:
        top["formula"] = overrides["formula"]
    return dataclasses.replace(base, **top)


__all__ = ["Expander", "Expansion", "ServedSettings", "as_texts", "resolve_student_dir", "served_inference"]
