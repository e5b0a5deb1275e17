"""The pipeline config schema: pydantic models of every key, checked before any stage runs.

:func:`validate_config` reports every problem of a config at once, each with its YAML path: unknown keys
with a "did you mean" (``rows[0].K1: unknown key; did you mean 'k1'?``), wrong types with the expected
type (``evaluation.k: Input should be a valid integer ... (got 'ten')``), unknown metric names (parsed by
ir-measures). The free-form mappings are checked against what consumes them, derived from the code and
never copied: ``teacher.args`` against the backend class's ``__init__``, ``teacher.params`` against
:class:`~radcot.teacher.base.GenerationParams`, ``student.train`` against
:class:`~radcot.student.train.TrainConfig`'s fields, ``student.generate`` against
:func:`~radcot.student.generate.generate_cots`' keyword arguments.

:func:`validate_config` returns the validated :class:`PipelineConfig`: the pipeline reads its settings from these
typed objects only, so each default is stated once, in its field here. A field that changes no stage's output
(the JVM heap, labels, the table's metrics) says so in its description (``no stage reruns``); every
other field is part of the key of the stage it configures (``tests/test_pipeline_keys.py`` walks the schema).
Experiment and row names become directory names and are checked as such.

The models document the config: :func:`reference_markdown` renders the config reference of
``docs/pipelines.md`` (``radcot run --schema``).

Example:
    >>> validate_config({"experiment": "x", "retreiver": {}, "dataset": {"path": "d"},
    ...                  "rows": [{"name": "bm25"}]})  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    PipelineError: <config>: 1 problem ... retreiver: unknown key; did you mean 'retriever'?
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any, Callable, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from radcot.expansion import FORMULAS
from radcot.experiment.config import PipelineError

Formula = Literal[tuple(FORMULAS)]  # type: ignore[valid-type] - the expansion registry's names

#: params the pipeline itself reads (any other params entry is a free ${name} variable)
RESERVED_PARAMS = {"models_dir": "a directory tree of downloaded models: hub names map to <models_dir>/<org>/<name>"}

#: experiment and row names become directory names (RUNS_DIR/EXPERIMENT, search-ROW-..., students/ROW)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: the sentence a field's description carries when the field does not change any stage's output
INERT = "no stage reruns"

NonNegFloat = typing.Annotated[float, Field(ge=0)]
PosInt = typing.Annotated[int, Field(ge=1)]


def _inert(description: str) -> Any:
    """A field that changes no stage's output (so it is not in any stage key), documented as such."""
    return {"description": f"{description} ({INERT})", "json_schema_extra": {"keyed": False}}


def check_name(value: str, what: str) -> str:
    """``value`` when it is safe as one directory name; else ValueError saying what is allowed."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ValueError(f"{what} becomes a directory name: use 1-100 letters, digits, '.', '_' or '-', starting "
                         f"with a letter or digit (no '/', '..', spaces or other characters unsafe in a path)")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSection(_Section):
    """``dataset``: what to evaluate on."""

    path: Optional[str] = Field(None, description="a BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    name: Optional[str] = Field(None, description="a named dataset, e.g. msmarco-passage/trec-dl-2019")
    data_dir: Optional[str] = Field(None, description="for named datasets: a directory with their topics and qrels files")
    index: Optional[str] = Field(None, description="an existing index directory or pyserini prebuilt name (skips indexing)")
    limit_queries: Optional[PosInt] = Field(None, description="evaluate on the first N judged queries only")


class RetrieverSection(_Section):
    """``retriever``: BM25 over the dataset's index (also the student's context retriever's BM25)."""

    k1: NonNegFloat = Field(0.9, description="BM25 k1")
    b: float = Field(0.4, ge=0, le=1, description="BM25 b")
    threads: PosInt = Field(2, description="indexing and search threads (part of the index stage's key)")
    heap: Optional[str] = Field(None, pattern=r"^\d+[kKmMgGtT]?$",
                                **_inert("JVM heap (-Xmx) of this process's JVM, e.g. 8g; default $RADCOT_JAVA_HEAP "
                                         "or 2g"))


class TeacherSection(_Section):
    """``teacher`` / ``teacher_eval``: the LLM that writes CoTs."""

    backend: str = Field("replay", description="openai, hf, replay or kb")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the backend class "
                                 "(checked against its __init__; files named here are keyed by content)")
    prompt: str = Field("radcot", description="prompt template name or text (keyed by its text)")
    params: dict[str, Any] = Field(default_factory=dict, description="GenerationParams: max_tokens, temperature, "
                                   "top_p, stop, seed")
    concurrency: PosInt = Field(4, **_inert("requests in flight (reaches the backend's connection pool)"))
    limit: Optional[PosInt] = Field(None, description="teach only the first N queries")


class TrainingQueriesSection(_Section):
    """``training_queries``: where the student's training queries come from."""

    mode: Literal["split", "kfold", "synthetic"] = Field("split", description="split, kfold or synthetic")
    queries: Optional[str] = Field(None, description="split: a queries file instead of the dataset's training queries")
    folds: int = Field(3, ge=2, description="kfold: number of folds over the evaluation queries")
    limit: Optional[PosInt] = Field(None, description="use the first N training queries")
    passages: PosInt = Field(500, description="synthetic: passages sampled for doc2query-style questions")
    prompt: str = Field("Write a question that the following passage answers.\nPassage: {query}\nQuestion:",
                        description="synthetic: the question-writing prompt")
    max_tokens: PosInt = Field(32, description="synthetic: tokens per question")


_STUDENT_DOC = {
    "model": "tiny-t5[:opts] (offline), a hub name (google/flan-t5-base) or a directory",
    "n_context": "passages per query in the distillation data and in training (the paper: 10)",
    "train": "TrainConfig fields (lr, max_steps, batch_size, precision, template, weight_decay, ...)",
    "generate": "generation: n_context plus generate_cots keyword arguments (max_new_tokens, num_beams, ...)",
    "context_retriever": "bm25, dense or fused: where the student's passages come from",
    "dense_encoder": "dense/fused context: the sentence-transformers encoder of the dense index (default: the "
                     "offline all-MiniLM-L6-v2)",
    "fusion_depth": "fused context: hits taken from each retriever before reciprocal rank fusion",
}


class GenerateSection(BaseModel):
    """``student.generate``: how the student writes the evaluation queries' CoTs. Besides ``n_context``, any
    keyword argument of :func:`~radcot.student.generate.generate_cots` (checked against its signature)."""

    model_config = ConfigDict(extra="allow")

    n_context: Optional[PosInt] = Field(None, description="passages per query at generation (default: "
                                        "student.n_context; the paper: 50)")

    def options(self) -> dict[str, Any]:
        """The ``generate_cots`` keyword arguments (everything but ``n_context``)."""
        return dict(self.model_extra or {})


class StudentSection(_Section):
    """``student``: the distilled model (defaults for every student row)."""

    model: str = Field("tiny-t5", description=_STUDENT_DOC["model"])
    n_context: PosInt = Field(10, description=_STUDENT_DOC["n_context"])
    train: dict[str, Any] = Field(default_factory=dict, description=_STUDENT_DOC["train"])
    generate: GenerateSection = Field(default_factory=GenerateSection, description=_STUDENT_DOC["generate"])
    context_retriever: Literal["bm25", "dense", "fused"] = Field("bm25", description=_STUDENT_DOC["context_retriever"])
    dense_encoder: Optional[str] = Field(None, description=_STUDENT_DOC["dense_encoder"])
    fusion_depth: PosInt = Field(100, description=_STUDENT_DOC["fusion_depth"])


class StudentSpec(StudentSection):
    """One student row's settings: ``student`` with the row's overrides merged in, plus ``context``."""

    context: bool = True

    @property
    def generate_n_context(self) -> int:
        """Passages per query at generation: ``generate.n_context``, else ``n_context``."""
        return self.generate.n_context or self.n_context


class RowStudent(_Section):
    """``rows[i].student``: overrides of ``student`` for one row, plus ``context``."""

    context: bool = Field(True, description="train and generate with retrieved passages (RADCoT) or without")
    model: Optional[str] = Field(None, description=_STUDENT_DOC["model"])
    n_context: Optional[PosInt] = Field(None, description=_STUDENT_DOC["n_context"])
    train: Optional[dict[str, Any]] = Field(None, description=_STUDENT_DOC["train"])
    generate: Optional[GenerateSection] = Field(None, description=_STUDENT_DOC["generate"])
    context_retriever: Optional[Literal["bm25", "dense", "fused"]] = Field(None, description=_STUDENT_DOC["context_retriever"])
    dense_encoder: Optional[str] = Field(None, description=_STUDENT_DOC["dense_encoder"])
    fusion_depth: Optional[PosInt] = Field(None, description=_STUDENT_DOC["fusion_depth"])


def _canonical_metrics(names: list[str]) -> list[str]:
    """The canonical ir-measures names (``MRR@10`` -> ``RR@10``: results are keyed by them everywhere)."""
    from radcot.evaluation import MetricError, canonical_measure

    out, bad = [], []
    for name in names:
        try:
            out.append(canonical_measure(name))
        except (MetricError, TypeError) as e:
            bad.append(f"{name!r} ({e})")
    if bad:
        raise ValueError(f"unknown metric {', '.join(bad)}; use ir-measures names such as nDCG@10, RR@10, "
                         f"AP(rel=2), R@1000")
    return out


class TuneSection(_Section):
    """``rows[i].tune``: an expansion-setting grid chosen on training queries (defaults: radcot.tuning)."""

    formula: Optional[list[str]] = Field(None, description="formulas to try")
    max_words: Optional[list[Optional[int]]] = Field(None, description="CoT word limits to try")
    metric: Optional[str] = Field(None, description="the ir-measures metric to select by")
    k: Optional[PosInt] = Field(None, description="search depth while tuning (default 100)")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str | None) -> str | None:
        return None if value is None else _canonical_metrics([value])[0]


class Row(_Section):
    """``rows[i]``: one table row. Plain BM25 unless it has ``cots:`` or ``student:``."""

    name: str = Field(..., **_inert("row id (table, --rows, --set rows.NAME...); names the row's stage directories "
                                    "and students/NAME: letters, digits, '.', '_', '-'"))
    label: Optional[str] = Field(None, **_inert("label in the table"))
    rm3: bool = Field(False, description="BM25 + RM3 pseudo-relevance feedback")
    rocchio: bool = Field(False, description="BM25 + Rocchio feedback")
    rm3_params: Optional[dict[str, Any]] = Field(None, description="RM3 fb_terms, fb_docs, original_query_weight")
    k1: Optional[NonNegFloat] = Field(None, description="BM25 k1 for this row's search (default: retriever.k1)")
    b: Optional[float] = Field(None, ge=0, le=1, description="BM25 b for this row's search (default: retriever.b)")
    cots: Optional[str] = Field(None, description="teacher (the teacher_eval/teacher CoTs) or a CoT file")
    student: Optional[RowStudent] = Field(None, description="a student row")
    formula: Formula = Field(
        "radcot", description="expansion formula of cots:/student: rows")
    samples: PosInt = Field(1, description="student rows: CoTs sampled per query (generate: sets how)")
    sample_fusion: Literal["rrf", "concat"] = Field(
        "rrf", description="samples > 1: rrf (search each, fuse the runs) or concat (one expansion of all)")
    max_words: Optional[PosInt] = Field(None, description="truncate each CoT to this many words")
    max_query_terms: Optional[PosInt] = Field(None, description="cap on the distinct terms of an expanded query")
    tune: Optional[TuneSection] = Field(None, description="expansion-setting grid")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "a row name")

    @property
    def kind(self) -> str:
        """``student``, ``cots`` or ``bm25`` (no CoTs)."""
        return "student" if self.student is not None else "cots" if self.cots is not None else "bm25"

    @property
    def title(self) -> str:
        """The label, else the name."""
        return self.label or self.name


class EvaluationSection(_Section):
    """``evaluation``: the table."""

    metrics: list[str] = Field(["nDCG@10", "RR@10", "R@1000", "AP"], **_inert("ir-measures names (the table only)"))
    k: PosInt = Field(1000, description="run depth")
    baseline: Optional[str] = Field("bm25", **_inert("row the others are tested against (the table only)"))
    teacher_row: Optional[str] = Field(None, **_inert("row whose gap to the baseline the students close (the table "
                                                      "only)"))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        return _canonical_metrics(value)


class PipelineConfig(_Section):
    """A whole pipeline file, validated after ``include:``, ``--set`` and ``${param}`` substitution."""

    include: Optional[Union[str, list[str]]] = Field(
        None, **_inert("pipeline files merged first (paths relative to this file; mappings merge key by key, this "
                       "file wins, lists are replaced); resolved when the file is read"))
    experiment: str = Field(..., **_inert("run name: the runs go to RUNS_DIR/EXPERIMENT (letters, digits, '.', '_', "
                                          "'-'); experiments share RUNS_DIR/_shared"))
    seed: int = Field(13, description="seed of splits, distillation data, training and sampling")
    params: dict[str, Any] = Field(default_factory=dict, **_inert(
        "variables for ${name} (what they fill in is keyed where it lands); models_dir maps hub model names to "
        "MODELS_DIR/ORG/NAME"))
    dataset: DatasetSection = Field(default_factory=DatasetSection, description="what to evaluate on")
    retriever: RetrieverSection = Field(default_factory=RetrieverSection, description="BM25 settings")
    teacher: TeacherSection = Field(default_factory=TeacherSection, description="the LLM for training queries")
    teacher_eval: Optional[TeacherSection] = Field(None, description="replaces teacher for the evaluation queries")
    training_queries: TrainingQueriesSection = Field(default_factory=TrainingQueriesSection,
                                                     description="the student's training queries")
    student: StudentSection = Field(default_factory=StudentSection, description="the student defaults")
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection, description="the table")
    rows: list[Row] = Field(..., min_length=1, description="the table's rows")

    @field_validator("include")
    @classmethod
    def _include_resolved(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("resolved when a pipeline file is read (radcot run FILE, Pipeline.from_yaml, "
                             "radcot.experiment.config.load_config); a config mapping passed as such cannot include "
                             "files: merge them first")
        return value

    @field_validator("experiment")
    @classmethod
    def _safe_experiment(cls, value: str) -> str:
        return check_name(value, "the experiment name")

    def row(self, name: str) -> Row:
        """The row called ``name`` (KeyError when there is none)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def teacher_for(self, section: str) -> TeacherSection:
        """``teacher``, or for ``teacher_eval`` that section when set (else ``teacher``)."""
        return self.teacher_eval if section == "teacher_eval" and self.teacher_eval is not None else self.teacher

    def student_for(self, row: Row) -> StudentSpec:
        """A student row's settings: ``student`` with the row's ``student:`` merged in (mappings key by key)."""
        from radcot.experiment.config import merge

        over = row.student.model_dump(exclude_none=True) if row.student is not None else {}
        return StudentSpec.model_validate(merge(self.student.model_dump(), over))

    def student_models(self) -> dict[str, str]:
        """``{row name: model}`` of every student row."""
        return {r.name: self.student_for(r).model for r in self.rows if r.kind == "student"}

    def resolved(self) -> dict[str, Any]:
        """The config as plain JSON, every default filled in (what the manifest records)."""
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------- messages
def yaml_path(loc: tuple, config: Mapping | None = None) -> str:
    """``("rows", 0, "K1")`` -> ``rows[0].K1`` (with the row's name when known: ``rows[0](bm25).K1``)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if loc[:i] == ("rows",) and config is not None:
                rows = config.get("rows")
                if isinstance(rows, list) and part < len(rows) and isinstance(rows[part], Mapping) \
                        and rows[part].get("name"):
                    out += f"({rows[part]['name']})"
        else:
            out += f".{part}" if out else str(part)
    return out


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``Optional[...]``/``list[...]``, else the annotation."""
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def model_at(loc: tuple, root: type[BaseModel] = PipelineConfig) -> type[BaseModel] | None:
    """The section model that holds the key at ``loc`` (for "did you mean" suggestions)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[part].annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def unknown_key(path: str, key: str, known: list[str] | set[str], what: str = "") -> str:
    """``path: unknown key; did you mean 'x'? (known keys: ...)``"""
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    close = close or [k for k in known if str(k).lower() == str(key).lower()]
    hint = f"did you mean {close[0]!r}?" if close else f"known keys{what}: {', '.join(sorted(map(str, known)))}"
    return f"{path}: unknown key; {hint}"


def _pydantic_problems(err: ValidationError, config: Mapping) -> list[str]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = yaml_path(loc, config)
        if e["type"] == "extra_forbidden":
            model = model_at(loc)
            problems.append(unknown_key(path, loc[-1], list(model.model_fields) if model else []))
        elif e["type"] == "missing":
            problems.append(f"{path}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = f" (got {e['input']!r})" if not isinstance(e.get("input"), (dict, list)) else ""
            problems.append(f"{path}: {msg}{got}")
    return problems


# ---------------------------------------------------------------------------------------------- free-form
def _value(section: Any, model: type[BaseModel], key: str) -> Any:
    """``section[key]`` of a raw (not yet validated) config section, else the schema's default for it."""
    if isinstance(section, Mapping) and key in section:
        return section[key]
    return model.model_fields[key].get_default(call_default_factory=True)


def _kwargs_problems(path: str, given: Mapping[str, Any], func: Callable, exclude: set[str], what: str) -> list[str]:
    """Check ``given`` keyword arguments against ``func``'s signature (names, and types where annotated)."""
    from pydantic import TypeAdapter

    sig = inspect.signature(func)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return []
    names = [n for n, p in sig.parameters.items() if n not in exclude and n != "self"
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: check names only
        hints = {}
    problems = []
    for key, value in given.items():
        if key in exclude:
            problems.append(f"{path}.{key}: set by the pipeline itself, not in {path}")
        elif key not in names:
            problems.append(unknown_key(f"{path}.{key}", key, names, f" of {what}"))
        elif key in hints:
            try:
                TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as e:
                problems.append(f"{path}.{key}: {e.errors()[0]['msg']} (got {value!r})")
            except Exception:  # noqa: BLE001 - an annotation pydantic cannot build a validator for
                pass
    return problems


def _dataclass_problems(path: str, given: Mapping[str, Any], cls: type, fixed: Mapping[str, Any]) -> list[str]:
    """Check ``given`` against a dataclass: field names, then the dataclass's own ``__post_init__`` checks."""
    assert dataclasses.is_dataclass(cls), cls
    problems = _kwargs_problems(path, given, cls, set(fixed), cls.__name__)
    if not problems:
        try:
            cls(**fixed, **given)
        except (TypeError, ValueError) as e:
            problems.append(f"{path}: {e}")
    return problems


def _teacher_problems(path: str, t: Mapping[str, Any]) -> list[str]:
    from radcot.teacher import BACKENDS, backend_class
    from radcot.teacher.base import GenerationParams

    problems = []
    backend = _value(t, TeacherSection, "backend")
    if backend not in BACKENDS:
        return [unknown_key(f"{path}.backend", backend, list(BACKENDS)).replace("unknown key", f"unknown backend {backend!r}")]
    cls = backend_class(backend)
    args = t.get("args") or {}
    if isinstance(args, Mapping):
        problems += _kwargs_problems(f"{path}.args", args, cls.__init__, set(), f"the {backend} backend")
    params = t.get("params") or {}
    if isinstance(params, Mapping):
        problems += _dataclass_problems(f"{path}.params", params, GenerationParams, {})
    if isinstance(t.get("prompt"), str):
        from radcot.records import RadcotError
        from radcot.teacher.prompts import get_prompt

        try:
            get_prompt(t["prompt"])
        except RadcotError as e:
            problems.append(f"{path}.prompt: {e}")
    return problems


#: generate_cots arguments the pipeline sets itself (not in student.generate)
GENERATE_FIXED = {"student", "out_path", "queries", "retriever", "k", "n_context", "show_progress", "data", "split",
                  "overwrite", "limit"}


def _student_problems(path: str, s: Mapping[str, Any]) -> list[str]:
    from radcot.student.generate import generate_cots
    from radcot.student.train import TrainConfig

    problems = []
    if isinstance(s.get("train"), Mapping):
        fixed = {"data": "DATA", "model": "MODEL", "out": "OUT", "seed": 0}
        if s["train"].get("select_by") == "retrieval":  # the pipeline fills in its index and training qrels
            fixed.update({k: "PIPELINE" for k in ("select_index", "select_qrels") if not s["train"].get(k)})
        problems += _dataclass_problems(f"{path}.train", s["train"], TrainConfig, fixed)
    if isinstance(s.get("generate"), Mapping):  # n_context is the pipeline's own (the schema checks it)
        from radcot.student.generate import check_generate_options

        options = {k: v for k, v in s["generate"].items() if k != "n_context"}
        named = _kwargs_problems(f"{path}.generate", options, generate_cots, GENERATE_FIXED, "generate_cots")
        problems += named
        if not named:  # values and combinations (num_beams: 0, sampling with beams...), as generate_cots checks them
            problems += [f"{path}.generate: {p}" for p in check_generate_options(options)]
    return problems


def _rows_problems(config: Mapping) -> list[str]:
    rows = [r for r in config.get("rows") or [] if isinstance(r, Mapping)]
    problems, seen = [], set()
    for i, r in enumerate(rows):
        where = yaml_path(("rows", i), config)
        if r.get("name") in seen:
            problems.append(f"{where}: duplicate row name {r['name']!r}")
        seen.add(r.get("name"))
        if r.get("cots") is not None and r.get("student") is not None:
            problems.append(f"{where}: a row takes either cots: or student:, not both")
        if (r.get("samples") or 1) > 1 and r.get("student") is None:
            problems.append(f"{where}.samples: only student rows sample CoTs (a cots: row has one per query); "
                            f"remove samples: or make it a student: row")
        if isinstance(r.get("student"), Mapping):
            problems += _student_problems(f"{where}.student", r["student"])
        if r.get("tune") is not None:
            problems += _tune_problems(where, r, config)
    for key in ("baseline", "teacher_row"):
        value = _value(config.get("evaluation"), EvaluationSection, key)
        if value and value not in seen:
            problems.append(f"evaluation.{key}: {value!r} is not a row name (rows: {sorted(map(str, seen))})")
    return problems


def _tune_problems(where: str, row: Mapping[str, Any], config: Mapping) -> list[str]:
    """``tune:`` needs a ``cots: teacher`` row and training queries with qrels whose CoTs come from the teacher the
    choice is applied to: kfold (each fold tunes on the row's own CoTs of the other folds' queries), or split
    without ``teacher_eval`` (the training queries' CoTs and the row's come from ``teacher``)."""
    mode = _value(config.get("training_queries"), TrainingQueriesSection, "mode")
    if row.get("cots") != "teacher":
        return [f"{where}.tune: tuning is implemented for cots: teacher rows (their training-query CoTs exist); "
                f"remove tune: or set formula:/max_words: by hand"]
    if mode == "synthetic":
        return [f"{where}.tune: synthetic training queries have no qrels to tune on; use training_queries.mode: "
                f"split (with qrels/train.tsv) or kfold, or set formula:/max_words: by hand"]
    if mode == "split" and config.get("teacher_eval") is not None:
        return [f"{where}.tune: in split mode the tuning CoTs (training queries) come from teacher, but this row's "
                f"CoTs come from teacher_eval: a choice tuned on one teacher's CoTs would be applied to another's. "
                f"Use training_queries.mode: kfold (tunes on the row's own CoTs), remove teacher_eval, or remove "
                f"tune: and set formula:/max_words: by hand"]
    return []


def _free_form_problems(config: Mapping) -> list[str]:
    problems = []
    for section in ("teacher", "teacher_eval"):
        if isinstance(config.get(section), Mapping):
            problems += _teacher_problems(section, config[section])
    if isinstance(config.get("student"), Mapping):
        problems += _student_problems("student", config["student"])
    ds = config.get("dataset") or {}
    if isinstance(ds, Mapping) and not (ds.get("path") or ds.get("name")):
        problems.append("dataset: needs path: (a BEIR directory) or name: (e.g. msmarco-passage/trec-dl-2019)")
    return problems + _rows_problems(config)


def _section_order(problem: str) -> int:
    """Sort key: unknown top-level keys first, then the sections in the schema's order."""
    head = problem.split(":", 1)[0].split(".", 1)[0].split("[", 1)[0]
    order = list(PipelineConfig.model_fields)
    return order.index(head) if head in order else -1


def config_problems(config: Mapping[str, Any]) -> list[str]:
    """Every problem of a resolved config, each with its YAML path (empty list: valid)."""
    problems: list[str] = []
    try:
        PipelineConfig.model_validate(config)
    except ValidationError as e:
        problems += _pydantic_problems(e, config)
    return sorted(problems + _free_form_problems(config), key=_section_order)


def validate_config(config: Mapping[str, Any], source: str = "<config>") -> PipelineConfig:
    """The validated config; raises :class:`PipelineError` listing every problem (one per line) if there are any."""
    problems = config_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PipelineError(f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the config "
                            f"(fix them, or the --set that caused them):\n{lines}")
    return PipelineConfig.model_validate(config)


# ---------------------------------------------------------------------------------------------- reference
def _type_name(annotation: Any) -> str:
    """A short type for the reference: ``int | null``, ``list[str]``, ``bm25 | dense``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " or ".join(map(str, args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def reference_markdown() -> str:
    """The config reference as Markdown tables, one per section (generated from the models)."""
    sections: list[tuple[str, type[BaseModel]]] = [("(top level)", PipelineConfig)]
    for name, field in PipelineConfig.model_fields.items():
        inner = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and inner not in dict(sections).values():
            sections.append((name if name != "rows" else "rows[i]", inner))
    sections += [("student.generate", GenerateSection), ("rows[i].student", RowStudent), ("rows[i].tune", TuneSection)]
    out = []
    for title, model in sections:
        out += [f"#### `{title}`", "", (model.__doc__ or "").strip(), "", "| key | type | default | meaning |",
                "|---|---|---|---|"]
        for key, f in model.model_fields.items():
            default = "(required)" if f.is_required() else f.get_default(call_default_factory=True)
            if isinstance(default, (BaseModel, list)) and key != "metrics":
                default = "(see below)"
            default = default if isinstance(default, str) and default.startswith("(") else repr(default)
            default = default.replace("\n", "\\n").replace("|", "\\|")
            out.append(f"| `{key}` | `{_type_name(f.annotation)}` | `{default}` | {f.description or ''} |")
        out.append("")
    return "\n".join(out)


REFERENCE_MARKER = "This reference is generated from the schema (`radcot run --schema`):\n\n"


def update_reference(path: str = "docs/pipelines.md") -> None:
    """Rewrite the generated config reference in ``path``: from :data:`REFERENCE_MARKER` up to the next ``## ``
    heading (or the end of the file)."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    start = text.index(REFERENCE_MARKER) + len(REFERENCE_MARKER)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end + 1
    Path(path).write_text(text[:start] + reference_markdown().strip() + "\n\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m radcot.experiment.schema [docs/pipelines.md]: regenerate the reference
    import sys

    update_reference(sys.argv[1] if len(sys.argv) > 1 else "docs/pipelines.md")
