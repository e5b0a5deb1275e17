"""How much of the teacher a student keeps, per query: answer rates and the context ceiling (the demo's analysis).

It lives with the demo, whose diagnostics (``radcot table --answers --world``, ``eval/demo_*.py``) it serves; the
CLI hands its Markdown to the report (:func:`radcot.report.write_report`'s ``sections``), so the report module
does not import it.

The table's gap-closed column (:mod:`radcot.report`) says how much of the teacher's retrieval gain a row
keeps; this module says why. :func:`answer_rate` counts the queries whose CoT contains the teacher's
answer (a CoT that names the answer pulls up the passages stating it), for any teacher whose output
has an ``Answer:`` part (the RADCoT prompt's style; the demo's ``kb`` teacher and davinci-003 CoTs).
:func:`context_recall` is the ceiling a retrieval-augmented student works under: the share of queries
with at least one answer-bearing (judged) passage among the top ``k`` passages of its context.

The answer of a query is the set of *answer terms*: the words of the teacher's ``Answer:`` part that
also occur in its rationale, minus the query's words and stopwords (so ``Answer: X is employed by
Qisaehael Foundry.`` for "who is X's employer" gives ``{qisaehael, foundry}``). A CoT contains the
answer when it contains every answer term. Give ``answers={qid: "exact span"}`` instead where the
exact answers are known (the demo world's fact objects: :func:`world_answers`).

Example:
    >>> answer_terms("Rationale: Farmeil was born in Shoulark. Answer: Shoulark.", "where was Farmeil born")
    {'shoulark'}
    >>> contains_answer("Farmeil is a native of Shoulark", {"shoulark"})
    True
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from radcot.records import RadcotError

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_ANSWER = re.compile(r"\banswer\s*:", re.IGNORECASE)
STOPWORDS = frozenset("""a an and are as at be by for from has have he her his in is it its of on or she so that the
their them they this to was were which who whom whose with what where when why how does do did""".split())


class AnalysisError(RadcotError, ValueError):
    """An analysis input that cannot be used (no teacher answers, missing CoT files)."""


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text or "")]


def split_answer(cot: str) -> tuple[str, str | None]:
    """``(rationale, answer)`` of a CoT written as ``... Answer: ...``; answer ``None`` when there is none."""
    parts = _ANSWER.split(cot or "")
    if len(parts) < 2:
        return cot or "", None
    rationale = " ".join(parts[:-1])
    return re.sub(r"^\s*rationale\s*:\s*", "", rationale, flags=re.IGNORECASE), parts[-1].strip()


def answer_terms(teacher_cot: str, query: str) -> set[str]:
    """The teacher's answer terms for a query (see the module docstring); empty when it has no answer."""
    rationale, answer = split_answer(teacher_cot)
    if answer is None:
        return set()
    drop = set(_words(query)) | STOPWORDS
    terms = {w for w in _words(answer) if w not in drop}
    in_rationale = terms & set(_words(rationale))
    return in_rationale or terms


def contains_answer(cot: str, terms: set[str] | str) -> bool:
    """Whether ``cot`` contains every answer term (or, for a string, the exact span, case-insensitive)."""
    if isinstance(terms, str):
        return " ".join(_words(terms)) in " ".join(_words(cot))
    return bool(terms) and terms <= set(_words(cot))


@dataclasses.dataclass
class AnswerRate:
    """How many CoTs of a source contain the teacher's answer."""

    name: str
    hits: int
    n: int  # queries with both an answer and a CoT
    no_answer: int = 0  # queries whose teacher output has no answer (not counted in n)

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "hits": self.hits, "n": self.n, "rate": self.rate, "no_answer": self.no_answer}


def _texts(cots: str | os.PathLike | Mapping[str, str | dict] | Sequence) -> dict[str, str]:
    """``{qid: text}`` from CoT file(s) (teacher/student JSONL or TSV) or a mapping."""
    from radcot.teacher.runner import read_teacher_output

    if isinstance(cots, Mapping):
        return {q: (v.get("text") or "" if isinstance(v, Mapping) else str(v)) for q, v in cots.items()}
    paths = [cots] if isinstance(cots, (str, os.PathLike)) else list(cots)
    out: dict[str, str] = {}
    for p in paths:
        if not Path(p).is_file():
            raise AnalysisError(f"CoT file {p} does not exist")
        out.update({q: r.get("text") or "" for q, r in read_teacher_output(p).items() if r.get("error") is None})
    return out


def teacher_answers(teacher_out, queries: Mapping[str, str] | None = None) -> dict[str, set[str]]:
    """``{qid: answer terms}`` from teacher output(s); queries default to the records' ``query`` field."""
    from radcot.teacher.runner import read_teacher_output

    records: dict[str, dict] = {}
    for p in ([teacher_out] if isinstance(teacher_out, (str, os.PathLike)) else list(teacher_out)):
        records.update(read_teacher_output(p))
    out = {}
    for qid, rec in records.items():
        if rec.get("error") is None:
            query = (queries or {}).get(qid, rec.get("query") or "")
            out[qid] = answer_terms(rec.get("text") or "", query)
    return out


def answer_rate(answers: Mapping[str, set[str] | str], cots, name: str = "cots") -> AnswerRate:
    """Share of queries whose CoT contains the answer.

    Args:
        answers: ``{qid: answer terms}`` (:func:`teacher_answers`) or ``{qid: exact span}`` (:func:`world_answers`).
        cots: CoT file(s) or ``{qid: text}``.
        name: a label for the result.
    """
    texts = _texts(cots)
    hits = n = no_answer = 0
    for qid, text in texts.items():
        if qid not in answers:
            continue
        if not answers[qid]:
            no_answer += 1
            continue
        n += 1
        hits += contains_answer(text, answers[qid])
    return AnswerRate(name, hits, n, no_answer)


def world_answers(world: str | os.PathLike) -> dict[str, str]:
    """``{qid: the fact's object name}`` for the queries of a demo world (``radcot make-world``)."""
    from radcot.demo.world import KnowledgeBase
    from radcot.utils import read_jsonl

    kb = KnowledgeBase.load(world)
    answer = {f["fact_id"]: f["object_name"] for f in kb.facts}
    queries = Path(world) / "queries.jsonl"
    if not queries.is_file():
        raise AnalysisError(f"{queries} not found: a world directory has queries.jsonl (radcot make-world)")
    return {q["_id"]: answer[q["metadata"]["fact_id"]] for q in read_jsonl(queries)
            if (q.get("metadata") or {}).get("fact_id") in answer}


def context_recall(hits: Mapping[str, Iterable], qrels: Mapping[str, Mapping[str, int]], k: int,
                   min_rel: int = 1) -> float:
    """Share of judged queries with a passage of relevance >= ``min_rel`` among their top ``k`` hits.

    Args:
        hits: ``{qid: doc ids best first}`` (or ScoredDoc lists / ``{docid: score}`` runs, best first).
        qrels: ``{qid: {docid: relevance}}``; only these queries count.
        k: context size.
        min_rel: the relevance an answer-bearing passage has (demo world: 2 states the fact).

    Example:
        >>> context_recall({"q": ["a", "b"]}, {"q": {"b": 2}}, k=1)
        0.0
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not qrels:
        raise AnalysisError("context_recall needs qrels for at least one query")
    found = 0
    for qid, judged in qrels.items():
        ids = [getattr(h, "doc_id", h) for h in list(hits.get(qid, []))[:k]]
        found += any(judged.get(d, 0) >= min_rel for d in ids)
    return found / len(qrels)


# --------------------------------------------------------------------------------------- experiments


def experiment_cots(exp_dir: str | os.PathLike) -> dict[str, list[Path]]:
    """``{row: CoT files}`` of a pipeline experiment, from its manifest (rows that expand queries)."""
    from radcot.report import load_manifest

    m = load_manifest(exp_dir)
    stages = m.get("stages") or {}
    specs = {r.get("name"): r for r in (m.get("config") or {}).get("rows", []) if isinstance(r, dict)}
    out: dict[str, list[Path]] = {}
    for row in m.get("rows", []):
        spec = specs.get(row["name"], {})
        if row.get("kind") == "student":
            # exactly this row's stages: a prefix would also take those of a row named e.g. "radcot-frequency"
            own = re.compile(rf"generate-{re.escape(row['name'])}-f\d+")
            names = sorted(s for s in stages if own.fullmatch(s))
            files = [Path(stages[s]["dir"]) / "cot.jsonl" for s in names]
        elif row.get("kind") == "cots":
            src = spec.get("cots")
            files = [Path(stages["teacher-eval"]["dir"]) / "cot.jsonl"] if src == "teacher" and "teacher-eval" in stages \
                else ([Path(src)] if src and src != "teacher" else [])
        else:
            continue
        files = [f for f in files if f.is_file()]
        if files:
            out[row["name"]] = files
    return out


def experiment_answer_rates(exp_dir: str | os.PathLike, teacher_row: str | None = None,
                            world: str | os.PathLike | None = None) -> list[AnswerRate]:
    """The answer rate of every row that expands queries, against the teacher row's answers.

    Args:
        exp_dir: ``runs/<experiment>``.
        teacher_row: the row whose CoTs hold the answers (default: ``evaluation.teacher_row``, else the
            first ``cots: teacher`` row).
        world: a demo world directory: use its exact fact objects as answers instead.

    Raises:
        AnalysisError: no teacher row / no answers.
    """
    from radcot.report import load_manifest, teacher_row_name

    files = experiment_cots(exp_dir)
    if world is not None:
        answers: Mapping = world_answers(world)
    else:
        teacher = teacher_row or teacher_row_name(load_manifest(exp_dir))
        if not teacher or teacher not in files:
            raise AnalysisError(f"{exp_dir}: no teacher row with CoTs to take answers from (rows with CoTs: "
                                f"{sorted(files)}); set evaluation.teacher_row or pass --teacher ROW")
        answers = teacher_answers(files[teacher])
        if not any(answers.values()):
            raise AnalysisError(f"{exp_dir}: the teacher's CoTs ({teacher}) have no 'Answer:' part; answer rates "
                                f"need a teacher output with an answer")
    return [answer_rate(answers, fs, name) for name, fs in files.items()]


def format_answer_rates(rates: Sequence[AnswerRate]) -> str:
    """A Markdown table of answer rates."""
    lines = ["| row | CoTs with the teacher's answer | rate |", "|---|---|---|"]
    lines += [f"| {r.name} | {r.hits}/{r.n} | {r.rate:.1%} |" for r in rates]
    return "\n".join(lines) + "\n"


def write_answer_rates(rates: Sequence[AnswerRate], path: str | os.PathLike) -> Path:
    """Save answer rates as JSON."""
    path = Path(path)
    path.write_text(json.dumps([r.to_dict() for r in rates], indent=2) + "\n", encoding="utf-8")
    return path
