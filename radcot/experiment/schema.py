"""The pipeline config schema: pydantic models of every key, checked before any stage runs.

:func:`validate_config` reports every problem of a config at once, each with its YAML path: unknown keys
with a "did you mean" (``rows[0].K1: unknown key; did you mean 'k1'?``), wrong types with the expected
type (``evaluation.k: Input should be a valid integer ... (got 'ten')``), unknown metric names (parsed by
ir-measures). The free-form mappings are checked against what consumes them, derived from the code and
never copied: ``teacher.args`` against the backend class's ``__init__``, ``teacher.params`` against
:class:`~radcot.teacher.base.GenerationParams`, ``student.train`` against
:class:`~radcot.student.train.TrainConfig`'s fields, ``student.generate`` against
:func:`~radcot.student.generate.generate_cots`' keyword arguments.

The models document the config: :func:`reference_markdown` renders the README's config reference
(``radcot run --schema``).

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
import typing
from typing import Any, Callable, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from radcot.experiment.config import PipelineError

#: params the pipeline itself reads (any other params entry is a free ${name} variable)
RESERVED_PARAMS = {"models_dir": "a directory tree of downloaded models: hub names map to <models_dir>/<org>/<name>"}

NonNegFloat = typing.Annotated[float, Field(ge=0)]
PosInt = typing.Annotated[int, Field(ge=1)]


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
    """``retriever``: BM25 over the dataset's index."""

    k1: NonNegFloat = Field(0.9, description="BM25 k1")
    b: float = Field(0.4, ge=0, le=1, description="BM25 b")
    threads: PosInt = Field(2, description="search and indexing threads")
    heap: Optional[str] = Field(None, description="JVM heap (-Xmx), e.g. 8g")


class TeacherSection(_Section):
    """``teacher`` / ``teacher_eval``: the LLM that writes CoTs."""

    backend: str = Field("replay", description="openai, hf, replay or kb")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the backend class "
                                 "(checked against its __init__)")
    prompt: str = Field("radcot", description="prompt template name or text")
    params: dict[str, Any] = Field(default_factory=dict, description="GenerationParams: max_tokens, temperature, "
                                   "top_p, stop, seed")
    concurrency: PosInt = Field(4, description="requests in flight (reaches the backend's connection pool)")
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
    "n_context": "passages per query (FiD)",
    "train": "TrainConfig fields (lr, max_steps, batch_size, precision, ...)",
    "generate": "generate_cots keyword arguments (max_new_tokens, batch_size, num_beams, ...)",
    "context_retriever": "bm25, dense or fused: where the student's passages come from",
    "dense_encoder": "sentence-transformers encoder for dense/fused context",
    "fusion_depth": "fused: depth of each list before reciprocal rank fusion",
}


class StudentSection(_Section):
    """``student``: the distilled model (defaults for every student row)."""

    model: str = Field("tiny-t5", description=_STUDENT_DOC["model"])
    n_context: PosInt = Field(10, description=_STUDENT_DOC["n_context"])
    train: dict[str, Any] = Field(default_factory=dict, description=_STUDENT_DOC["train"])
    generate: dict[str, Any] = Field(default_factory=dict, description=_STUDENT_DOC["generate"])
    context_retriever: Literal["bm25", "dense", "fused"] = Field("bm25", description=_STUDENT_DOC["context_retriever"])
    dense_encoder: Optional[str] = Field(None, description=_STUDENT_DOC["dense_encoder"])
    fusion_depth: Optional[PosInt] = Field(None, description=_STUDENT_DOC["fusion_depth"])


class RowStudent(_Section):
    """``rows[i].student``: overrides of ``student`` for one row, plus ``context``."""

    context: bool = Field(True, description="train and generate with retrieved passages (RADCoT) or without")
    model: Optional[str] = Field(None, description=_STUDENT_DOC["model"])
    n_context: Optional[PosInt] = Field(None, description=_STUDENT_DOC["n_context"])
    train: Optional[dict[str, Any]] = Field(None, description=_STUDENT_DOC["train"])
    generate: Optional[dict[str, Any]] = Field(None, description=_STUDENT_DOC["generate"])
    context_retriever: Optional[Literal["bm25", "dense", "fused"]] = Field(None, description=_STUDENT_DOC["context_retriever"])
    dense_encoder: Optional[str] = Field(None, description=_STUDENT_DOC["dense_encoder"])
    fusion_depth: Optional[PosInt] = Field(None, description=_STUDENT_DOC["fusion_depth"])


class TuneSection(_Section):
    """``rows[i].tune``: an expansion-setting grid chosen on training queries."""

    formula: Optional[list[str]] = Field(None, description="formulas to try")
    max_words: Optional[list[Optional[int]]] = Field(None, description="CoT word limits to try")
    metric: Optional[str] = Field(None, description="the ir-measures metric to select by")
    k: Optional[PosInt] = Field(None, description="search depth while tuning (default 100)")


class Row(_Section):
    """``rows[i]``: one table row. Plain BM25 unless it has ``cots:`` or ``student:``."""

    name: str = Field(..., description="row id (table, --rows, --set rows.NAME...)")
    label: Optional[str] = Field(None, description="label in the table")
    rm3: bool = Field(False, description="BM25 + RM3 pseudo-relevance feedback")
    rocchio: bool = Field(False, description="BM25 + Rocchio feedback")
    rm3_params: Optional[dict[str, Any]] = Field(None, description="RM3 fb_terms, fb_docs, original_query_weight")
    k1: Optional[NonNegFloat] = Field(None, description="BM25 k1 for this row")
    b: Optional[float] = Field(None, ge=0, le=1, description="BM25 b for this row")
    cots: Optional[str] = Field(None, description="teacher (the teacher_eval/teacher CoTs) or a CoT file")
    student: Optional[RowStudent] = Field(None, description="a student row")
    formula: Optional[Literal["radcot", "query2doc", "dense", "none"]] = Field(None, description="expansion formula")
    samples: Optional[PosInt] = Field(None, description="student rows: CoTs sampled per query (generate: sets how)")
    sample_fusion: Optional[Literal["rrf", "concat"]] = Field(
        None, description="samples > 1: rrf (search each, fuse the runs; default) or concat (one expansion of all)")
    max_words: Optional[PosInt] = Field(None, description="truncate each CoT to this many words")
    max_query_terms: Optional[PosInt] = Field(None, description="cap on the distinct terms of an expanded query")
    tune: Optional[TuneSection] = Field(None, description="expansion-setting grid")


class EvaluationSection(_Section):
    """``evaluation``: the table."""

    metrics: list[str] = Field(["nDCG@10", "RR@10", "R@1000", "AP"], description="ir-measures names")
    k: PosInt = Field(1000, description="run depth")
    baseline: Optional[str] = Field("bm25", description="row the others are tested against")
    teacher_row: Optional[str] = Field(None, description="row whose gap to the baseline the students close")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        import ir_measures

        bad = []
        for name in value:
            try:
                ir_measures.parse_measure(name)
            except Exception as e:  # noqa: BLE001 - ir_measures raises NameError/ValueError/...
                bad.append(f"{name!r} ({e})")
        if bad:
            raise ValueError(f"unknown metric {', '.join(bad)}; use ir-measures names such as nDCG@10, RR@10, "
                             f"AP(rel=2), R@1000")
        return value


class PipelineConfig(_Section):
    """A whole pipeline file, validated after ``include:``, ``--set`` and ``${param}`` substitution."""

    include: Optional[Union[str, list[str]]] = Field(
        None, description="pipeline files merged first (paths relative to this file; mappings merge key by key, this "
                          "file wins, lists are replaced); resolved when the file is read")
    experiment: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="run name: the runs go to RUNS_DIR/EXPERIMENT")
    seed: int = Field(13, description="seed of splits, training and sampling")
    params: dict[str, Any] = Field(default_factory=dict, description="variables for ${name}; models_dir maps hub "
                                   "model names to MODELS_DIR/ORG/NAME")
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
    backend = t.get("backend", "replay")
    if backend not in BACKENDS:
        return [unknown_key(f"{path}.backend", backend, list(BACKENDS)).replace("unknown key", f"unknown backend {backend!r}")]
    cls = backend_class(backend)
    args = t.get("args") or {}
    if isinstance(args, Mapping):
        problems += _kwargs_problems(f"{path}.args", args, cls.__init__, set(), f"the {backend} backend")
    params = t.get("params") or {}
    if isinstance(params, Mapping):
        problems += _dataclass_problems(f"{path}.params", params, GenerationParams, {})
    return problems


def _student_problems(path: str, s: Mapping[str, Any]) -> list[str]:
    from radcot.student.generate import generate_cots
    from radcot.student.train import TrainConfig

    problems = []
    if isinstance(s.get("train"), Mapping):
        fixed = {"data": "DATA", "model": "MODEL", "out": "OUT", "seed": 0}
        if s["train"].get("select_by") == "retrieval":  # the pipeline fills in its index and training qrels
            fixed.update({k: "PIPELINE" for k in ("select_index", "select_qrels") if not s["train"].get(k)})
        problems += _dataclass_problems(f"{path}.train", s["train"], TrainConfig, fixed)
    if isinstance(s.get("generate"), Mapping):
        problems += _kwargs_problems(f"{path}.generate", s["generate"], generate_cots,
                                     {"student", "out_path", "queries", "retriever", "k", "show_progress", "data",
                                      "split"}, "generate_cots")
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
    ev = config.get("evaluation") or {}
    for key in ("baseline", "teacher_row"):
        if isinstance(ev, Mapping) and ev.get(key) and ev[key] not in seen:
            problems.append(f"evaluation.{key}: {ev[key]!r} is not a row name (rows: {sorted(map(str, seen))})")
    return problems


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


def validate_config(config: Mapping[str, Any], source: str = "<config>") -> None:
    """Raise :class:`PipelineError` listing every problem of ``config`` (one per line) if there are any."""
    problems = config_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise PipelineError(f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in the config "
                            f"(fix them, or the --set that caused them):\n{lines}")


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
    sections += [("rows[i].student", RowStudent), ("rows[i].tune", TuneSection)]
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


README_MARKER = "This reference is generated from the schema (`radcot run --schema`):\n\n"


def update_readme(path: str = "README.md") -> None:
    """Rewrite the generated part of the README's "Pipeline config reference" (up to the next ``## `` heading)."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    start = text.index(README_MARKER) + len(README_MARKER)
    end = text.index("\n## ", start) + 1
    Path(path).write_text(text[:start] + reference_markdown().strip() + "\n\n" + text[end:], encoding="utf-8")


if __name__ == "__main__":  # python -m radcot.experiment.schema [README.md]: regenerate the README's reference
    import sys

    update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
