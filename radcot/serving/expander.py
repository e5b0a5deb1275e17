"""The in-memory expander: a trained student (and its retriever) loaded once, expanding query strings live.

Nothing is written to disk. The model inputs are built by the same functions ``radcot generate`` uses
(:func:`radcot.student.generate.examples_from_queries` for the retrieved passages, the student's
:class:`~radcot.student.data.FiDCollator` and :meth:`~radcot.student.model.FiDStudent.generate_text`), with
the same decoding defaults, so greedy CoTs equal the ``text`` field of ``radcot generate``'s output.

Example:
    >>> from radcot import Expander
    >>> expander = Expander.load("runs/demo/train-radcot/best", index="runs/demo/index")  # doctest: +SKIP
    >>> expander.expand("where was Velkor Danth born").expanded  # doctest: +SKIP
    'where was Velkor Danth born where was ... Rationale: ... Answer: ...'
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from radcot.expansion import _check_formula, _clean, _usable, expand_text, limit_terms
from radcot.records import Query, RadcotError, ScoredDoc

#: the teacher's length, as ``radcot generate`` (davinci-003 max_tokens=150)
DEFAULT_MAX_NEW_TOKENS = 150


@dataclass(frozen=True)
class Expansion:
    """One expanded query: the original ``query``, the student's ``cot`` and the ``expanded`` text."""

    query: str
    cot: str
    expanded: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def resolve_student_dir(path: str | os.PathLike) -> Path:
    """``RUN_DIR`` -> ``RUN_DIR/best`` when it exists; a directory with ``config.json`` as it is.

    Raises:
        RadcotError: the path does not exist or holds no saved student (names what was found and the fix).
    """
    p = Path(path)
    if (p / "best" / "config.json").is_file():
        return p / "best"
    if (p / "config.json").is_file():
        return p
    if not p.exists():
        raise RadcotError(f"student directory {p} does not exist; pass a training run directory (radcot train "
                          f"--out DIR) or its best/ subdirectory")
    found = sorted(c.name for c in p.iterdir())[:8] if p.is_dir() else "a file"
    raise RadcotError(f"{p} holds no trained student (no best/config.json or config.json; found {found}); pass "
                      f"the directory given to radcot train --out, or its best/ subdirectory")


class Expander:
    """A loaded student that expands query strings in memory; thread-safe (one lock around generation).

    Args:
        student: a loaded :class:`~radcot.student.model.FiDStudent`.
        retriever: its passages' retriever (``batch_search``, ``doc``, ``search``); required for a
            retrieval-augmented student, optional for a no-context one (then only :meth:`search` needs it).
        formula: default expansion formula (``radcot``, ``query2doc``, ``dense``, ``none``).
        k: passages per query (default: the student's ``n_context``, as ``radcot generate``).
        max_new_tokens, batch_size, no_repeat_ngram_size, repetition_penalty: as ``radcot generate``
            (greedy decoding; same defaults).
        device: where the student runs (``auto``: cuda when available).
    """

    def __init__(self, student: Any, retriever: Any = None, formula: str = "radcot", k: int | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 16, no_repeat_ngram_size: int = 0,
                 repetition_penalty: float = 1.0, device: str = "auto"):
        import torch

        self.formula = _check_formula(formula)
        fid = student.fid_config
        self.no_context = bool(fid.no_context)
        if not self.no_context and retriever is None:
            raise RadcotError(f"this student was trained with {fid.n_context} retrieved passages per query: pass "
                              f"the index it reads (Expander.load(..., index=DIR), radcot serve --index DIR)")
        self.k = fid.n_context if k is None else int(k)
        if self.k < 1 or max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"k, max_new_tokens and batch_size must be >= 1, got {self.k}, {max_new_tokens}, "
                             f"{batch_size}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.student = student.to(device).eval()
        self.retriever = retriever
        self.batch_size = batch_size
        self.gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                                               num_return_sequences=1, use_cache=True)
        if no_repeat_ngram_size:
            self.gen_kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
        if repetition_penalty != 1.0:
            self.gen_kwargs["repetition_penalty"] = repetition_penalty
        self._lock = threading.Lock()  # one generate at a time (torch uses all cores for one batch)
        self._search_lock = threading.Lock()  # the retriever's searcher is not documented as thread-safe

    @classmethod
    def load(cls, student_dir: str | os.PathLike, index: str | os.PathLike | Any = None, formula: str = "radcot",
             device: str = "auto", **kwargs) -> "Expander":
        """Load a trained student (``RUN_DIR`` or ``RUN_DIR/best``) and, if given, its index (BM25 or FAISS).

        Args:
            student_dir: the training run directory or its ``best/``.
            index: an index directory (:func:`radcot.retrieval.load_retriever`) or a retriever object.
            formula, device, **kwargs: see :class:`Expander`.
        """
        from radcot.student.model import FiDStudent

        student = FiDStudent.from_pretrained(resolve_student_dir(student_dir))
        retriever = index
        if isinstance(index, (str, os.PathLike)):
            from radcot.retrieval import load_retriever

            retriever = load_retriever(index)
        return cls(student, retriever, formula=formula, device=device, **kwargs)

    # ----------------------------------------------------------------------------------------- generation

    def cots(self, texts: Sequence[str]) -> list[str]:
        """The student's greedy CoT for each text (one-line, whitespace-normalised as ``radcot generate``)."""
        from radcot.student.generate import examples_from_queries

        texts = [str(t) for t in texts]
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
                out.extend(" ".join(t.split()) for t in self.student.generate_text(chunk, **self.gen_kwargs))
        return out

    def apply(self, text: str, cot: str, formula: str | None = None) -> Expansion:
        """Build the :class:`Expansion` of ``text`` from its CoT (a blank CoT falls back to the query)."""
        formula = _check_formula(formula or self.formula)
        cot = _clean(cot) if _usable(cot) else ""
        if formula == "none" or not cot:
            return Expansion(text, cot, text)
        return Expansion(text, cot, expand_text(text, cot, formula))

    def expand_batch(self, texts: Sequence[str], formula: str | None = None) -> list[Expansion]:
        """Expand several query strings (batched generation); one :class:`Expansion` per text, in order."""
        return [self.apply(t, c, formula) for t, c in zip(texts, self.cots(texts))]

    def expand(self, text: str, formula: str | None = None) -> Expansion:
        """Expand one query string.

        Example:
            >>> Expander.load("runs/student").expand("what is bm25").expanded  # doctest: +SKIP
        """
        return self.expand_batch([text], formula)[0]

    def warm_up(self) -> None:
        """One expansion (and search) so the first real request pays no start-up cost (JVM, index, kernels)."""
        exp = self.expand("warm up")
        if self.retriever is not None:
            self.search(exp.expanded, k=1)

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
        return f"Expander({kind}, formula={self.formula!r}, device={self.student.device})"


__all__ = ["Expander", "Expansion", "resolve_student_dir"]
