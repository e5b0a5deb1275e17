"""Expansion-time inference: a trained student writes a CoT per query, in the teacher's JSONL format.

:func:`generate_cots` batches queries, computes each example's encoder states once (``B x N`` passages
in one encoder call), and decodes with the stock ``generate()`` and its KV cache (greedy, beam search
or sampling). The output is a teacher-format JSONL (``query_id, query, text, model, params, ...``), so
everything that reads teacher CoTs (``read_teacher_output``, ``QueryExpander``) reads student CoTs.

The student decides by default how it is run, as it was evaluated: its profile (``radcot_student.json``,
:mod:`radcot.student.profile`) names the index its passages come from (a given index of another kind or
collection is refused unless ``force_index``), the passages per query at inference (``n_context``; the paper
trains with 10 and generates with 50) and its decoding settings; ``fid_config.json`` its input template. A
student without a profile (radcot <= 0.2) uses its training ``n_context`` and :class:`~radcot.student.profile.
Decoding`'s defaults, and needs an index. Whatever is given explicitly wins, and ``OUT.config.json`` records what
was used.

Output is resumable and safe to kill: records (:class:`radcot.cot.CoTRecord`) are appended and fsync'd
batch by batch, a torn last line is cut off on the next run, queries already done are skipped, and
``OUT.config.json`` records the student and the generation parameters (a different config refuses to
resume unless ``overwrite``). One writer per output: a second run on the same ``OUT`` fails at once
(:func:`radcot.locks.output_lock`). Sampling draws each query's tokens from its own generator, seeded by
``seed``, the query id and the sample's number, so a resumed, limited or re-batched run samples exactly what an
uninterrupted one does (on the same device type).

``max_new_tokens`` defaults to 150, the teacher's length (davinci-003 ``max_tokens=150``). The original
RADCoT code capped students at 50 tokens, well below the teacher's ~55 words; pass 50 to reproduce it.

Example:
    >>> from radcot.student.generate import generate_cots
    >>> generate_cots("runs/student/best", "student-cots.jsonl", queries="topics.dl19.txt")  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from radcot._deps import require
from radcot.cot import CoTRecord, CoTWriter, check_config, config_path, done_ids, remove_outputs
from radcot.records import Query, RadcotError
from radcot.student import _check
from radcot.student.overlap import OVERLAP_ACTIONS, check_overlap
from radcot.student.profile import Decoding, Inference, ProfileError, RetrieverRecord, StudentProfile
from radcot.utils import progress, write_json

logger = logging.getLogger("radcot.student")

#: the teacher's length (davinci-003 max_tokens=150); the original RADCoT student used 50
DEFAULT_MAX_NEW_TOKENS = Decoding.max_new_tokens


class GenerationConfigMismatch(RadcotError, ValueError):
    """An existing output was produced by another student or with other generation parameters."""


# ------------------------------------------------------------------------------------------------ options


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
    """The options of :func:`generate_cots`, validated; ``None`` means "as the student records it".

    Args:
        n_context: passages per query (default: the student's profile ``inference.n_context``, else its training
            ``n_context``).
        template: input template name or text (default: the student's, from ``fid_config.json``).
        max_new_tokens, num_beams, no_repeat_ngram_size, repetition_penalty: decoding (default: the student's
            profile, else :class:`~radcot.student.profile.Decoding`'s 150 / 1 / 0 / 1.0).
        batch_size: queries per generation batch.
        do_sample, temperature, top_p, num_return_sequences: sampling (greedy by default).
        seed: sampling seed.
        device: ``auto``, ``cpu``, ``cuda``...
        limit: only the first ``limit`` queries.
        overwrite: start the output again instead of resuming.
        force_index: use a given index even when it is not the kind or collection the student was trained on.
        on_train_overlap: ``warn`` (log) or ``error`` (refuse) when the queries include the student's training
            or dev queries.
    """

    n_context: int | None = None
    template: str | None = None
    max_new_tokens: int | None = None
    num_beams: int | None = None
    no_repeat_ngram_size: int | None = None
    repetition_penalty: float | None = None
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_return_sequences: int = 1
    seed: int = 0
    device: str = "auto"
    limit: int | None = None
    overwrite: bool = False
    force_index: bool = False
    on_train_overlap: str = "warn"

    def __post_init__(self):
        for name, check in _FIELD_CHECKS.items():
            check(getattr(self, name))
        problem = _combination_problem(dataclasses.asdict(self))
        if problem:
            raise _check.ArgumentValueError(problem)


def _field_checks() -> dict[str, Callable[[Any], Any]]:
    """One check per :class:`GenerateOptions` field: raises ArgumentTypeError/ArgumentValueError naming it."""
    from radcot.student.data import resolve_template

    def opt_int(name, lo):
        return lambda v: _check.integer(name, v, lo=lo, optional=True)

    return {
        "n_context": opt_int("n_context", 1),
        "template": lambda v: v is None or resolve_template(v),
        "max_new_tokens": opt_int("max_new_tokens", 1),
        "num_beams": opt_int("num_beams", 1),
        "no_repeat_ngram_size": opt_int("no_repeat_ngram_size", 0),
        "repetition_penalty": lambda v: _check.number("repetition_penalty", v, lo=0.0, lo_open=True, optional=True),
        "batch_size": lambda v: _check.integer("batch_size", v, lo=1),
        "do_sample": lambda v: _check.boolean("do_sample", v),
        "temperature": lambda v: _check.number("temperature", v, lo=0.0, lo_open=True),
        "top_p": lambda v: _check.number("top_p", v, lo=0.0, hi=1.0, lo_open=True),
        "num_return_sequences": lambda v: _check.integer("num_return_sequences", v, lo=1),
        "seed": lambda v: _check.integer("seed", v, lo=0),
        "device": lambda v: _check.text("device", v),
        "limit": opt_int("limit", 1),
        "overwrite": lambda v: _check.boolean("overwrite", v),
        "force_index": lambda v: _check.boolean("force_index", v),
        "on_train_overlap": lambda v: _check.choice("on_train_overlap", v, OVERLAP_ACTIONS),
    }


_FIELD_CHECKS = _field_checks()
#: generate_cots arguments that are inputs, not options (the caller gives them)
_INPUTS = ("student", "out_path", "data", "split", "queries", "retriever", "show_progress")


def _combination_problem(o: Mapping[str, Any]) -> str | None:
    """A problem with how options combine (each one valid alone), or None. ``num_beams`` None: not checked."""
    beams = o.get("num_beams")
    if o.get("do_sample") and beams is not None and beams > 1:
        return (f"do_sample with num_beams={beams} (beam sampling) is not supported: sample with num_beams 1, or "
                f"decode with beams without do_sample")
    if not o.get("do_sample") and beams is not None and o.get("num_return_sequences", 1) > beams:
        return (f"num_return_sequences={o.get('num_return_sequences')} needs num_beams >= it or do_sample=True, "
                f"got num_beams={beams}")
    return None


def check_generate_options(options: Mapping[str, Any]) -> list[str]:
    """The problems of a mapping of :func:`generate_cots` options, without loading a model (``[]`` when none).

    Checks names (with a suggestion for a misspelt one), types, ranges and combinations. ``k`` is accepted as the
    older name of ``n_context``. Combinations involving ``num_beams`` are checked only when it is given (the
    student's recorded value is not known here); :func:`generate_cots` checks them again once it is.

    Example:
        >>> check_generate_options({"num_beams": 0, "max_new_token": 50})
        ['num_beams must be >= 1, got 0', "max_new_token: unknown generate option; did you mean 'max_new_tokens'?"]
    """
    if not isinstance(options, Mapping):
        return [f"generate options must be a mapping of option: value, got {type(options).__name__}"]
    problems = []
    for key, value in options.items():
        name = "n_context" if key == "k" else key
        if name in _FIELD_CHECKS:
            try:
                _FIELD_CHECKS[name](value)
            except (_check.ArgumentTypeError, _check.ArgumentValueError) as e:
                problems.append(str(e) if key == name else str(e).replace("n_context", "k", 1))
        elif key in _INPUTS:
            problems.append(f"{key}: an input of generate_cots, not a generate option")
        else:
            close = difflib.get_close_matches(str(key), list(_FIELD_CHECKS), n=1)
            problems.append(f"{key}: unknown generate option" + (f"; did you mean {close[0]!r}?" if close else
                                                                 f" (options: {', '.join(_FIELD_CHECKS)})"))
    if "k" in options and "n_context" in options and options["k"] != options["n_context"]:
        problems.append(f"k and n_context are the same option (k is its older name), given {options['k']!r} and "
                        f"{options['n_context']!r}: give one")
    if not problems:
        problem = _combination_problem({**options, "n_context": options.get("n_context", options.get("k"))})
        problems += [problem] if problem else []
    return problems


def examples_from_data(data, split: str) -> list[dict]:
    """Examples (``query_id, query, passages``) from a distillation dataset's split (``all``: every split)."""
    from radcot.student.data import load_distillation_data

    _check.choice("split", split, ("all", "train", "dev"))
    if isinstance(data, (str, os.PathLike)):
        dd, _ = load_distillation_data(data)
    else:
        dd = data
    datasets = require("datasets", "distillation data")
    if isinstance(dd, (datasets.DatasetDict, dict)):
        splits = list(dd.keys()) if split == "all" else [split]
        missing = [s for s in splits if s not in dd]
        if missing:
            raise RadcotError(f"distillation data has no split {missing[0]!r} (it has {sorted(dd.keys())})")
        rows = [r for s in splits for r in dd[s]]
    elif isinstance(dd, (datasets.Dataset, list, tuple)):
        rows = list(dd)
    else:
        raise _check.ArgumentTypeError(f"data must be a distillation dataset directory, a DatasetDict, a Dataset or a "
                                       f"list of examples, got {type(dd).__name__}")
    return [{"query_id": r["query_id"], "query": r["query"], "passages": r.get("passages") or []} for r in rows]


def examples_from_queries(queries, retriever, k: int, no_context: bool, batch_size: int) -> list[dict]:
    """Examples (``query_id, query, passages``): each query with its top-``k`` passages from ``retriever``."""
    from radcot.retrieval.base import as_queries, retrieve_passages

    qs = as_queries(queries)
    if no_context:
        return [{"query_id": q.query_id, "query": q.text, "passages": []} for q in qs]
    if retriever is None:
        raise RadcotError("this student reads retrieved passages: pass a retriever or index (--index) with the "
                          "queries, or use --data with a distillation dataset")
    if isinstance(retriever, (str, os.PathLike)):
        from radcot.retrieval import load_retriever

        retriever = load_retriever(retriever)
    passages = retrieve_passages(retriever, qs, k, batch_size=batch_size)
    return [{"query_id": q.query_id, "query": q.text, "passages": passages[q.query_id]} for q in qs]


_DEFAULTS = GenerateOptions()


def generate_cots(
    student,
    out_path: str | os.PathLike,
    *,
    data: Any = None,
    split: str = "all",
    queries: Iterable[Query] | str | os.PathLike | None = None,
    retriever: Any = None,
    n_context: int | None = _DEFAULTS.n_context,
    k: int | None = None,
    template: str | None = _DEFAULTS.template,
    max_new_tokens: int | None = _DEFAULTS.max_new_tokens,
    batch_size: int = _DEFAULTS.batch_size,
    num_beams: int | None = _DEFAULTS.num_beams,
    do_sample: bool = _DEFAULTS.do_sample,
    temperature: float = _DEFAULTS.temperature,
    top_p: float = _DEFAULTS.top_p,
    num_return_sequences: int = _DEFAULTS.num_return_sequences,
    no_repeat_ngram_size: int | None = _DEFAULTS.no_repeat_ngram_size,
    repetition_penalty: float | None = _DEFAULTS.repetition_penalty,
    seed: int = _DEFAULTS.seed,
    device: str = _DEFAULTS.device,
    overwrite: bool = _DEFAULTS.overwrite,
    limit: int | None = _DEFAULTS.limit,
    force_index: bool = _DEFAULTS.force_index,
    on_train_overlap: str = _DEFAULTS.on_train_overlap,
    show_progress: bool | None = None,
) -> Path:
    """Generate a CoT per query with a FiD student and append teacher-format records to ``out_path``.

    Args:
        student: a student directory (``RUN_DIR``, ``RUN_DIR/best``, a pipeline row's profile directory) or a
            :class:`~radcot.student.model.FiDStudent` (its profile is read from the directory it was loaded from).
        out_path: the JSONL to write (resumed if it exists).
        data: a distillation dataset (dir or ``DatasetDict``): its stored passages are used.
        split: the split of ``data`` (``train``, ``dev``, or ``all``).
        queries: queries (objects or a file); their passages come from ``retriever``.
        retriever: ``None`` (the student's recorded index), an index directory, ``{"bm25": DIR, "dense": DIR}``
            (a fused student), or a retriever object (``batch_search``, ``doc``). Checked against the student's
            recorded retriever (kind and collection) unless ``force_index``.
        n_context: passages per query at generation (default: the student's inference ``n_context``).
        k: the older name of ``n_context``.
        template, max_new_tokens, num_beams, no_repeat_ngram_size, repetition_penalty, batch_size, do_sample,
            temperature, top_p, num_return_sequences, seed, device, limit, overwrite, force_index,
            on_train_overlap: see :class:`GenerateOptions` (their defaults are stated there). With
            ``num_return_sequences > 1`` a record's ``text`` is the first sequence and ``texts`` all.
        show_progress: progress bar, or log lines when stderr is not a terminal (default: from the log level).

    Returns:
        ``Path(out_path)``; read it with :func:`radcot.teacher.runner.read_teacher_output`.

    Raises:
        ArgumentTypeError, ArgumentValueError: an option of the wrong type or range (see :func:`check_generate_options`).
        ProfileError: no index recorded or given for a student that reads passages; a given index of another kind
            or collection than the student's (unless ``force_index``).
        TrainTestOverlapError: ``queries`` include the student's training queries and ``on_train_overlap="error"``.
        GenerationConfigMismatch: ``out_path`` was produced with another student/parameters (use ``overwrite``).
        OutputLockedError: another process is writing ``out_path``.
        RadcotError: there are no queries to generate for.
    """
    values = dict(locals())
    options = GenerateOptions(**{f.name: values[f.name] for f in dataclasses.fields(GenerateOptions)
                                 if f.name != "n_context"}, n_context=_n_context_arg(n_context, k))
    if (data is None) == (queries is None):
        raise ValueError("pass exactly one of data= (a distillation dataset) or queries= (with retriever=)")
    _check.path("out_path", out_path, "the output JSONL")
    if queries is not None:  # read before the model loads: a wrong path fails at once
        from radcot.retrieval.base import as_queries
        from radcot.student.data import _QUERIES

        queries = as_queries(_check.collection("queries", queries, _QUERIES))
    from radcot.locks import output_lock

    out = Path(out_path)
    student, profile, name, dev = _load_student(student, options.device)
    run = _plan(student, profile, options)
    with output_lock(out, "student output", inherit=True):  # radcot generate already holds it: no gap
        examples, passages = _examples(run, profile, options, data, split, queries, retriever)
        if not examples:
            raise RadcotError("no queries to generate CoTs for: the queries (or the data split) are empty")
        if queries is not None:
            check_overlap(profile.checkpoint, [ex["query_id"] for ex in examples], options.on_train_overlap)
        config = run.config(name, student, passages)
        done = _prepare_output(out, config, options.overwrite)
        todo = [ex for ex in examples if ex["query_id"] not in done]
        logger.info("generate: %d queries (%d already done), %d passages each -> %s", len(examples),
                    len(examples) - len(todo), run.n_context, out)
        _generate_all(student, todo, run, config, dev, out, show_progress)
    return out


def _examples(run: "_Run", profile: StudentProfile, options: GenerateOptions, data: Any, split: str,
              queries: list[Query] | None, retriever: Any) -> tuple[list[dict], dict]:
    """The run's examples (the first ``limit``) and what ``OUT.config.json`` records about their passages."""
    if data is not None:
        examples = examples_from_data(data, split)[:options.limit]
        return examples, {"data": _data_name(data), "split": split}
    retr = _passage_retriever(profile, retriever, options.force_index, run.no_context)
    examples = examples_from_queries(queries[:options.limit], retr, run.n_context, run.no_context,
                                     max(run.decoding.batch_size, 64))
    return examples, {"retriever": _retriever_record(retr)}


def _n_context_arg(n_context: Any, k: Any) -> Any:
    """``n_context``, or ``k`` (its older name) when only that is given."""
    if k is not None and n_context is not None and k != n_context:
        raise _check.ArgumentValueError(f"k and n_context are the same option (k is its older name), given {k!r} "
                                        f"and {n_context!r}: give one")
    return n_context if n_context is not None else k


def _data_name(data: Any) -> str:
    return str(Path(data).resolve()) if isinstance(data, (str, os.PathLike)) else type(data).__name__


# ------------------------------------------------------------------------------------------------ the run


class _Decoding:
    """The decoding settings of a run, resolved (given options over the student's recorded ones): what is
    recorded and what ``generate`` gets."""

    def __init__(self, options: GenerateOptions, recorded: Decoding):
        def pick(name):
            given = getattr(options, name)
            return getattr(recorded, name) if given is None else given

        self.max_new_tokens, self.num_beams = pick("max_new_tokens"), pick("num_beams")
        self.no_repeat_ngram_size, self.repetition_penalty = pick("no_repeat_ngram_size"), pick("repetition_penalty")
        self.batch_size, self.do_sample = options.batch_size, options.do_sample
        self.temperature, self.top_p, self.n_seq = options.temperature, options.top_p, options.num_return_sequences
        self.seed = options.seed
        problem = _combination_problem({"do_sample": self.do_sample, "num_beams": self.num_beams,
                                        "num_return_sequences": self.n_seq})
        if problem:
            raise _check.ArgumentValueError(f"{problem} (num_beams={self.num_beams} is the student's recorded "
                                            f"setting unless given)" if options.num_beams is None else problem)

    def params(self, k: int) -> dict[str, Any]:
        """What ``OUT.config.json`` records (options at their off value are left out, so older outputs resume)."""
        p = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": self.do_sample,
             "num_return_sequences": self.n_seq, "seed": self.seed, "k": k}
        if self.do_sample:
            p.update(temperature=self.temperature, top_p=self.top_p, sampling_seed="per-query")
        if self.no_repeat_ngram_size:
            p["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            p["repetition_penalty"] = self.repetition_penalty
        return p

    def generate_kwargs(self) -> dict[str, Any]:
        """``generate()`` keyword arguments. Sampling is done by :class:`_SeededSampler` (a logits processor
        added per batch), so ``generate()``'s own sampling gets neutral settings and can only pick its draw."""
        kw: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                  do_sample=self.do_sample, num_return_sequences=self.n_seq, use_cache=True)
        if self.do_sample:
            kw.update(temperature=1.0, top_p=1.0, top_k=0)
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw


@dataclasses.dataclass
class _Run:
    """What one :func:`generate_cots` run feeds the student: passages per query, input template, decoding."""

    n_context: int
    template: str
    no_context: bool
    decoding: _Decoding
    collator: Any

    def config(self, name: str, student, passages: dict) -> dict[str, Any]:
        """``OUT.config.json``: the student, its training config, what this run used (inputs, passages, decoding)."""
        return {"student": name, "fid_config": student.fid_config.to_dict(), "template": self.template,
                "passages": passages, "params": self.decoding.params(0 if self.no_context else self.n_context)}


def _plan(student, profile: StudentProfile, options: GenerateOptions) -> _Run:
    """The run's settings: given options over the student's profile over its ``fid_config.json``."""
    from radcot.student.data import FiDCollator, resolve_template

    fid = student.fid_config
    recorded = profile.inference if profile.recorded else Inference(fid.n_context)
    n_context = 1 if fid.no_context else (options.n_context or recorded.n_context)
    template = fid.template if options.template is None else resolve_template(options.template)
    if ("{passage}" in template) == fid.no_context:
        raise _check.ArgumentValueError(
            f"template {template!r:.80} {'reads passages' if fid.no_context else 'has no {passage}'}, but the student "
            f"{'was trained without' if fid.no_context else 'reads'} passages: give a template with {{query}}"
            f"{'' if fid.no_context else ' and {passage}'}, or leave it to the student's")
    collator = student.collator if template == fid.template else FiDCollator(
        student.tokenizer, n_context=n_context, text_maxlength=fid.text_maxlength,
        target_maxlength=fid.target_maxlength, template=template)
    if n_context != fid.n_context and not fid.no_context:
        logger.info("generate: %d passages per query (the student trained with %d)", n_context, fid.n_context)
    return _Run(n_context, template, fid.no_context, _Decoding(options, recorded.decoding), collator)


def _load_student(student, device: str):
    """The student (loaded from its directory if a path), its profile, its recorded name, and the resolved device."""
    torch = require("torch", "student generation")
    from radcot.student.model import FiDStudent

    if isinstance(student, (str, os.PathLike)):
        profile = StudentProfile.load(student)
        name = str(profile.directory.resolve())
        student = FiDStudent.from_pretrained(profile.checkpoint)
    elif isinstance(student, FiDStudent):
        source = getattr(student, "name_or_path", None)
        profile = _profile_of(student, source)
        name = str(Path(source).resolve()) if source and os.path.exists(source) else (source or "FiDStudent")
    else:
        raise _check.ArgumentTypeError(f"student must be a student directory or a FiDStudent, got "
                                       f"{student!r:.80} ({type(student).__name__})")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    student.to(device).eval()
    return student, profile, name, device


def _profile_of(student, source: str | None) -> StudentProfile:
    """The profile of a loaded student: from the directory it came from, else its fid_config (unrecorded)."""
    if source and Path(source).is_dir():
        return StudentProfile.load(source)
    here = Path(source or ".")
    return StudentProfile(here, here, None, Inference(student.fid_config.n_context), recorded=False)


def _passage_retriever(profile: StudentProfile, retriever: Any, force: bool, no_context: bool):
    """The retriever of the run's passages: the given one checked against the student's record, or the recorded one.

    Raises:
        ProfileError: nothing recorded or given; a recorded index that is gone; a mismatch (unless ``force``).
    """
    if no_context:
        if retriever is not None:
            logger.info("generate: the student was trained without passages; the retriever given is not used")
        return None
    if profile.retriever is None and isinstance(retriever, Mapping) and len(retriever) > 1:
        return _fused(retriever)
    opened = profile.open_retriever(retriever, force=force)
    if opened is None:
        raise ProfileError(f"the student in {profile.directory} reads retrieved passages but records no retriever "
                           f"(trained by radcot <= 0.2, or its {'profile' if profile.recorded else 'radcot_student.json'}"
                           f" names none): pass the index it was trained with (--index DIR, retriever=DIR)")
    return opened


def _fused(indexes: Mapping[str, Any]):
    """RRF of a BM25 and a dense index given as ``{"bm25": DIR, "dense": DIR}`` (a student without a profile)."""
    from radcot.retrieval import load_retriever

    try:
        from radcot.retrieval.fusion import FusedRetriever
    except ImportError:  # radcot <= 0.2 kept it beside the student's data
        from radcot.retrieval.fusion import FusedRetriever
    bad = sorted(set(indexes) - {"bm25", "dense"})
    if bad:
        raise ProfileError(f"index mapping keys must be 'bm25' and 'dense', got {bad}")
    return FusedRetriever([load_retriever(indexes["bm25"]), load_retriever(indexes["dense"])])


def _retriever_record(retriever) -> dict[str, Any] | None:
    """What ``OUT.config.json`` records about the passages' retriever (its indexes and their identity)."""
    if retriever is None:
        return None
    try:
        return RetrieverRecord.of(retriever).to_dict()
    except ProfileError:
        return {"class": type(retriever).__name__}


def _prepare_output(out: Path, config: dict, overwrite: bool) -> set[str]:
    """Start over (``overwrite``) or check the recorded config; returns the query ids already done."""
    if overwrite:
        remove_outputs(out)
    if out.exists():
        check_config(out, config, error=GenerationConfigMismatch)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(config_path(out), config)
    return done_ids(out, repair=True)


def _generate_all(student, todo: list[dict], run: _Run, config: dict, device: str, out: Path,
                  show_progress: bool | None) -> None:
    """Generate batch by batch, appending and fsync-ing each batch's records."""
    bar = progress(total=len(todo), desc="generating", unit="q", show_progress=show_progress)
    with CoTWriter(out) as writer, bar:
        for i in range(0, len(todo), run.decoding.batch_size):
            chunk = [dict(ex, passages=list(ex["passages"])[:run.n_context])
                     for ex in todo[i:i + run.decoding.batch_size]]
            writer.write(_generate_batch(student, chunk, run, config, device))
            bar.update(len(chunk))


def _generate_batch(student, chunk: list[dict], run: _Run, config: dict, device: str) -> list[CoTRecord]:
    """One generation batch -> one record per example (``text`` the first sequence, ``texts`` all of them)."""
    t0 = time.time()
    decoding = run.decoding
    input_ids, attention_mask, passage_mask = run.collator.encode_inputs(chunk, run.n_context)
    kwargs = decoding.generate_kwargs()
    if decoding.do_sample:
        seeds = [query_seed(decoding.seed, ex["query_id"], j) for ex in chunk for j in range(decoding.n_seq)]
        transformers = require("transformers", "student generation")
        kwargs["logits_processor"] = transformers.LogitsProcessorList(
            [_SeededSampler(seeds, decoding.temperature, decoding.top_p)])
    ids = student.generate(input_ids.to(device), attention_mask.to(device), passage_mask.to(device),
                           **kwargs).cpu()  # (B * num_return_sequences, T)
    texts = student.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    elapsed = (time.time() - t0) / len(chunk)
    eos = student.t5.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = student.tokenizer.pad_token_id
    n = decoding.n_seq
    records = []
    for b, ex in enumerate(chunk):
        first = ids[b * n].tolist()[1:]  # drop the decoder start token
        seqs = [" ".join(texts[r].split()) for r in range(b * n, (b + 1) * n)]
        extra: dict[str, Any] = {"doc_ids": [p.get("doc_id") for p in ex["passages"]]}
        if n > 1:
            extra["texts"] = seqs
        records.append(CoTRecord(
            ex["query_id"], ex["query"], seqs[0], prompt_name="fid-student", model=config["student"],
            params=config["params"], finish_reason="stop" if any(t in eos for t in first) else "length", attempts=1,
            elapsed_s=round(elapsed, 4), error=None, prompt_tokens=int(attention_mask[b].sum()),
            completion_tokens=len([t for t in first if t != pad]), extra=extra))
    return records


# ------------------------------------------------------------------------------------------------ sampling


def query_seed(seed: int, query_id: str, sample: int = 0) -> int:
    """The sampling seed of one query's ``sample``-th sequence: a function of ``seed`` and the query id only, so a
    query samples the same CoT whatever else is in its batch, its run, or how often the run was resumed."""
    digest = hashlib.sha256(f"{seed}\t{query_id}\t{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class _SeededSampler:
    """A logits processor that samples each row's next token from the row's own ``torch.Generator``.

    Applied after ``generate()``'s processors (repetition penalty, n-gram ban...), it applies temperature and
    top-p itself (transformers' warpers), draws one token per row, and returns scores that are ``-inf`` except
    at the drawn token, so ``generate()``'s own (global-RNG) draw can only pick it. Rows are ``generate()``'s:
    example ``b``'s ``j``-th sequence is row ``b * num_return_sequences + j``, as ``seeds`` are ordered.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float):
        self.seeds, self.temperature, self.top_p = list(seeds), temperature, top_p
        self.generators = None

    def __call__(self, input_ids, scores):
        torch = require("torch", "student generation")
        transformers = require("transformers", "student generation")
        if self.generators is None:
            if scores.shape[0] != len(self.seeds):
                raise RuntimeError(f"sampler: {scores.shape[0]} rows for {len(self.seeds)} seeds")
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        if self.temperature != 1.0:
            scores = transformers.TemperatureLogitsWarper(self.temperature)(input_ids, scores)
        if self.top_p < 1.0:
            scores = transformers.TopPLogitsWarper(self.top_p)(input_ids, scores)
        probs = torch.softmax(scores.float(), dim=-1)  # (rows, V)
        picks = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self.generators)])
        drawn = torch.full_like(scores, float("-inf"))
        return drawn.scatter_(1, picks[:, None], 0.0)


# ------------------------------------------------------------------------------------------------ baselines


def naive_generate(student, examples: Sequence[Mapping[str, Any]], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                   use_cache: bool = False) -> list[list[int]]:
    """Baselines for ``bench/``: one example at a time.

    ``use_cache=False``: the cache-less loop (:meth:`FiDStudent.naive_greedy`, re-encoding every step);
    ``use_cache=True``: the stock ``generate()`` called per example.

    Returns:
        token ids per example (decoder start token first).
    """
    torch = require("torch", "student generation")
    out = []
    dev = student.device
    for ex in examples:
        ii, am, pm = (t.to(dev) for t in student.collator.encode_inputs([ex]))
        if use_cache:
            ids = student.generate(ii, am, pm, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
            out.append(_strip_pad(ids[0].tolist(), student))
        else:
            with torch.no_grad():
                out.extend(student.naive_greedy(ii, am, pm, max_new_tokens=max_new_tokens))
    return out


def _strip_pad(seq: list[int], student) -> list[int]:
    """Drop trailing padding that batched generation adds after ``</s>``."""
    pad = student.tokenizer.pad_token_id
    while len(seq) > 1 and seq[-1] == pad:
        seq.pop()
    return seq
