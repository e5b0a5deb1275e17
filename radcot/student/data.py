"""Distillation data: (query, top-k passages, teacher CoT) as an HF ``datasets`` DatasetDict, and its collator.

:func:`build_distillation_data` joins each query with its top-``k`` retrieved passages and its teacher
chain of thought and saves a ``DatasetDict`` (``train`` / ``dev``) with ``save_to_disk`` (Arrow). Next
to it, ``radcot_data.json`` records the retriever config, ``k``, the split and the teacher output it came
from, and ``excluded.tsv`` lists every query left out (teacher failed, empty CoT, no teacher output) with
the reason -- nothing is dropped silently.

Columns: ``query_id`` (str), ``query`` (str), ``target`` (the teacher CoT), ``passages`` (list of
``{doc_id, title, text, score}``, best first; empty for the no-context ablation).

:class:`FiDCollator` turns examples into the student's inputs: ``input_ids``/``attention_mask`` of shape
``(B, N, L)`` (one row per (query, passage) pair, ``N = n_context``), ``passage_mask`` ``(B, N)`` (0 for
slots with no passage: those are ignored by the decoder) and ``labels`` ``(B, T)`` (-100 at padding).
Long passages are cut so that the question and the instruction after the passage survive truncation.

Example:
    >>> from radcot.student.data import build_distillation_data
    >>> build_distillation_data("queries.tsv", "cots.jsonl", "indexes/bm25", k=10,
    ...                         out_dir="data/distill")  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from radcot._deps import require
from radcot.records import DataFormatError, Query, RadcotError
from radcot.student import _check
from radcot.retrieval.base import as_queries, retrieve_passages
from radcot.utils import atomic_dir, interactive_progress, progress, sha256_file, write_json

logger = logging.getLogger("radcot.student")

#: the official RADCoT per-passage input (ZIZUN/RADCoT src/data.py: question + " " + " {text} " +
#: "\nGive the rationale before answering :"), whitespace-normalised: T5's tokenizer reads the newlines as spaces
OFFICIAL_TEMPLATE = ('Answer the following question "{query}" based on the given passage. {passage} '
                     'Give the rationale before answering :')
#: radcot <= 0.2's default per-passage input (a ``Passage:`` marker before the passage); students trained with it
#: record it in their fid_config.json and keep reading it
PASSAGE_PREFIX_TEMPLATE = ('Answer the following question "{query}" based on the given passage. '
                           'Passage: {passage} Give the rationale before answering :')
#: the default per-passage student input: the official one
PASSAGE_TEMPLATE = OFFICIAL_TEMPLATE
#: the no-context ablation's single input ("distillation without retrieval"), radcot's default for it
NO_CONTEXT_TEMPLATE = 'Answer the following question "{query}". Give the rationale before answering :'
#: what the official code feeds with ``--n_context 0``: the question line alone (no passage, no instruction)
OFFICIAL_NO_CONTEXT_TEMPLATE = 'Answer the following question "{query}" based on the given passage.'
#: templates by name (``--template official``); any other value is a template text with ``{query}``
TEMPLATES = {"official": OFFICIAL_TEMPLATE, "passage-prefix": PASSAGE_PREFIX_TEMPLATE,
             "no-context": NO_CONTEXT_TEMPLATE, "official-no-context": OFFICIAL_NO_CONTEXT_TEMPLATE}

META_FILE = "radcot_data.json"
EXCLUDED_FILE = "excluded.tsv"
DATA_FORMAT_VERSION = 1


class DistillationDataError(RadcotError, ValueError):
    """The distillation data cannot be built or read (no usable examples, a bad split, a missing file)."""


def resolve_template(template: str) -> str:
    """A student input template from its name in :data:`TEMPLATES` or its text (returned as given).

    Raises:
        ArgumentTypeError: ``template`` is not a string.
        ArgumentValueError: a text without ``{query}`` (e.g. a misspelt name).

    Example:
        >>> resolve_template("passage-prefix") == PASSAGE_PREFIX_TEMPLATE
        True
    """
    _check.text("template", template)
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{query}" not in template:
        raise _check.ArgumentValueError(
            f"template {template!r:.80} is neither a template name ({', '.join(sorted(TEMPLATES))}) nor a template "
            f"text with {{query}} (and {{passage}} for a student that reads passages)")
    return template


def _features():
    datasets = require("datasets", "distillation data")
    return datasets.Features({
        "query_id": datasets.Value("string"),
        "query": datasets.Value("string"),
        "target": datasets.Value("string"),
        "passages": datasets.List({
            "doc_id": datasets.Value("string"), "title": datasets.Value("string"),
            "text": datasets.Value("string"), "score": datasets.Value("float32"),
        }),
    })


def _as_teacher(teacher_out) -> tuple[dict[str, dict], dict]:
    info: dict[str, Any] = {}
    if isinstance(teacher_out, (str, os.PathLike)):
        from radcot.teacher.runner import read_teacher_output

        path = Path(teacher_out)
        info = {"path": str(path.resolve()), "sha256": sha256_file(path) if path.is_file() else None}
        records = read_teacher_output(path)
    else:
        records = dict(teacher_out)
    return records, info


def _retriever_info(retriever, index: str | None) -> dict:
    info: dict[str, Any] = {"class": type(retriever).__name__}
    if index is not None:
        info["index"] = str(Path(index).resolve())
    for attr in ("config", "params", "index_dir", "name"):
        value = getattr(retriever, attr, None)
        if value is None or callable(value):
            continue
        if hasattr(value, "to_dict"):
            value = value.to_dict()
        elif hasattr(value, "__dataclass_fields__"):
            import dataclasses

            value = dataclasses.asdict(value)
        info[attr] = value if isinstance(value, (dict, list, int, float, bool)) else str(value)
    return info


def _dev_ids(path_or_ids) -> set[str]:
    if isinstance(path_or_ids, (str, os.PathLike)):
        return {q.query_id for q in as_queries(path_or_ids)}
    return {str(x.query_id if isinstance(x, Query) else x) for x in path_or_ids}


_QUERIES = "Query records, (query_id, text) pairs, a {query_id: text} mapping or a queries file"
_TEACHER = "a teacher output (radcot teach JSONL, or a TSV) or a {query_id: record} mapping"


def _check_args(queries, teacher_out, k, out_dir, no_context, dev_fraction, dev_queries, seed, batch_size) -> None:
    """Types and ranges of :func:`build_distillation_data`'s arguments (nothing is read or opened here)."""
    _check.collection("queries", queries, _QUERIES)
    if not isinstance(teacher_out, Mapping):
        _check.path("teacher_out", teacher_out, _TEACHER)
    _check.integer("k", k, lo=1)
    _check.path("out_dir", out_dir, "the output directory")
    _check.boolean("no_context", no_context)
    _check.number("dev_fraction", dev_fraction, 0.0, 1.0, hi_open=True)
    if dev_queries is not None:
        _check.collection("dev_queries", dev_queries, "a queries file, Query records or query ids")
    _check.integer("seed", seed)
    _check.integer("batch_size", batch_size, lo=1)


def _open_retriever(retriever, no_context: bool) -> tuple[Any, str | None]:
    """The retriever (opened when an index directory) and its directory; ``(None, None)`` for no-context data."""
    if no_context:
        return None, None
    if retriever is None:
        raise DistillationDataError("build_distillation_data needs a retriever (or index dir) unless no_context=True")
    if isinstance(retriever, (str, os.PathLike)):
        from radcot.retrieval import load_retriever

        return load_retriever(retriever), str(retriever)
    if not (callable(getattr(retriever, "batch_search", None)) and callable(getattr(retriever, "doc", None))):
        raise _check.ArgumentTypeError(
            f"retriever must be an index directory or a retriever with batch_search() and doc() (BM25Retriever, "
            f"DenseRetriever, FusedRetriever), got {retriever!r:.80} ({type(retriever).__name__})")
    return retriever, None


def _student_retriever(retriever) -> dict | None:
    """What a student trained on this data records as its retriever (:class:`~radcot.student.profile.RetrieverRecord`
    as a dict); None, with a warning, for a retriever radcot cannot reopen by itself."""
    from radcot.student.profile import ProfileError, RetrieverRecord

    try:
        return RetrieverRecord.of(retriever).to_dict()
    except ProfileError as e:
        logger.warning("build-data: %s. Students trained on this data will not know their retriever: give "
                       "radcot generate / radcot serve the index explicitly", e)
        return None


def query_ids_digest(query_ids: Iterable[str]) -> str:
    """sha256 of a set of query ids (sorted, one per line): the identity of a split, as ``radcot_data.json`` records."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(query_ids)).encode("utf-8")).hexdigest()


def _usable_queries(queries: list[Query], records: Mapping[str, dict], out_dir) -> tuple[list[Query], list[tuple]]:
    """The queries with a usable teacher CoT, and ``(qid, reason, detail)`` for every other one."""
    excluded: list[tuple[str, str, str]] = []
    usable: list[Query] = []
    seen: set[str] = set()
    for q in queries:
        if q.query_id in seen:
            raise DistillationDataError(f"query id {q.query_id!r} appears twice in the queries")
        seen.add(q.query_id)
        rec = records.get(q.query_id)
        if rec is None:
            excluded.append((q.query_id, "no_teacher_output", "query id not in the teacher output"))
        elif rec.get("error") is not None:
            excluded.append((q.query_id, "teacher_error", str(rec.get("error"))[:300].replace("\t", " ").replace("\n", " ")))
        elif not str(rec.get("text") or "").strip():
            excluded.append((q.query_id, "empty_output", f"finish_reason={rec.get('finish_reason')}"))
        else:
            usable.append(q)
    counts = Counter(reason for _, reason, _ in excluded)
    if excluded:
        logger.warning("build-data: excluded %d of %d queries (%s); see %s", len(excluded), len(queries),
                       ", ".join(f"{n} {r}" for r, n in sorted(counts.items())), Path(out_dir) / EXCLUDED_FILE)
    if not usable:
        raise DistillationDataError(
            f"none of the {len(queries)} queries has a usable teacher CoT ({dict(counts)}); check that the teacher "
            f"output matches the queries (same query ids) and that `radcot teach` finished")
    return usable, excluded


def _retrieve(queries: Sequence[Query], retriever, k: int, batch_size: int = 256,
              show_progress: bool | None = None) -> dict[str, list[dict]]:
    """``{qid: [{doc_id, title, text, score}, ...]}``: each query's top-``k`` passages, best first, with a
    progress bar; queries with fewer than ``k`` passages are logged (their empty slots are masked)."""
    bar = progress(total=len(queries), desc="retrieving", unit="q", show_progress=show_progress)
    try:
        passages = retrieve_passages(retriever, queries, k, batch_size=batch_size, error=DistillationDataError,
                                     on_batch=bar.update)
    finally:
        bar.close()
    n_short = sum(len(ps) < k for ps in passages.values())
    if n_short:
        logger.warning("build-data: %d queries have fewer than k=%d passages (their empty slots are masked)", n_short, k)
    return passages


def _dev_split(usable: list[Query], dev_queries, dev_fraction: float, seed: int) -> tuple[set[str], dict]:
    """The dev query ids (given, or a seeded share of ``usable``) and a description for the metadata.

    Raises:
        DistillationDataError: ``dev_queries`` given, but none of them is a usable query.
    """
    if dev_queries is not None:
        return _given_dev_split(usable, dev_queries)
    order = [q.query_id for q in usable]
    random.Random(seed).shuffle(order)
    n_dev = int(round(dev_fraction * len(order)))
    if dev_fraction > 0 and n_dev == 0 and len(order) > 1:
        n_dev = 1
    if n_dev == 0:
        logger.warning("build-data: the dev split is empty (dev_fraction=%g, %d usable queries): training keeps its "
                       "final checkpoint (nothing to select on)", dev_fraction, len(order))
    return set(order[:n_dev]), {"dev_fraction": dev_fraction, "seed": seed}


def _given_dev_split(usable: list[Query], dev_queries) -> tuple[set[str], dict]:
    """The dev ids of ``dev_queries`` among the ``usable`` queries (the others are logged; none at all is an error)."""
    where = str(dev_queries) if isinstance(dev_queries, (str, os.PathLike)) else None
    dev_ids = _dev_ids(dev_queries)
    usable_ids = {q.query_id for q in usable}
    matched = dev_ids & usable_ids
    if not matched:
        raise DistillationDataError(
            f"none of the {len(dev_ids)} dev queries {f'in {where} ' if where else ''}is among the {len(usable)} "
            f"training queries with a usable teacher CoT (dev ids such as {sorted(dev_ids)[:3]}, training ids such as "
            f"{sorted(usable_ids)[:3]}): the dev split is drawn from --queries, so pass dev queries whose ids occur "
            f"there, or use --dev-fraction instead")
    unknown = dev_ids - usable_ids
    if unknown:
        logger.warning("build-data: %d of the %d dev query ids are not among the usable queries (ignored), e.g. %s",
                       len(unknown), len(dev_ids), sorted(unknown)[:5])
    return matched, {"dev_queries": where or f"{len(dev_ids)} ids"}


def _dataset_dict(usable: list[Query], records: Mapping[str, dict], passages: Mapping[str, list], dev_ids: set[str]):
    """The ``train``/``dev`` DatasetDict."""
    datasets = require("datasets", "distillation data")

    def rows(select):
        out = {"query_id": [], "query": [], "target": [], "passages": []}
        for q in usable:
            if select(q.query_id):
                out["query_id"].append(q.query_id)
                out["query"].append(q.text)
                out["target"].append(" ".join(str(records[q.query_id]["text"]).split()))
                out["passages"].append(passages.get(q.query_id) or [])
        return out

    feats = _features()
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(rows(lambda i: i not in dev_ids), features=feats),
        "dev": datasets.Dataset.from_dict(rows(lambda i: i in dev_ids), features=feats),
    })
    if len(dd["train"]) == 0:
        raise DistillationDataError("the train split is empty (all usable queries went to dev); lower --dev-fraction")
    return dd


def _save(dd, meta: dict, excluded: list[tuple], out_dir, show_progress: bool | None) -> None:
    """Write the dataset, its metadata and ``excluded.tsv`` atomically."""
    datasets = require("datasets", "distillation data")
    with atomic_dir(out_dir) as tmp:
        bars = datasets.is_progress_bar_enabled()
        if not interactive_progress(show_progress):  # datasets draws tqdm bars: only on a terminal
            datasets.disable_progress_bars()
        try:  # an empty split gets one (empty) shard: with none, datasets cannot load it back
            dd.save_to_disk(str(tmp), num_shards={name: 1 for name, ds in dd.items() if len(ds) == 0} or None)
        finally:
            if bars:
                datasets.enable_progress_bars()
        write_json(Path(tmp) / META_FILE, meta)
        with open(Path(tmp) / EXCLUDED_FILE, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["query_id", "reason", "detail"])
            w.writerows(excluded)


def build_distillation_data(
    queries: Iterable[Query] | str | os.PathLike,
    teacher_out: str | os.PathLike | Mapping[str, dict],
    retriever: Any = None,
    k: int = 10,
    out_dir: str | os.PathLike = "distill-data",
    no_context: bool = False,
    dev_fraction: float = 0.1,
    dev_queries: Iterable | str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int = 256,
    show_progress: bool | None = None,
) -> Path:
    """Join queries, their top-``k`` passages and teacher CoTs into a saved ``DatasetDict`` (train/dev).

    Args:
        queries: :class:`~radcot.records.Query` objects or a queries file/dir (any format ``read_queries`` reads).
        teacher_out: a teacher output JSONL (``radcot teach``) or TSV, or a ``{qid: record}`` mapping.
            A record is used iff ``record["error"] is None`` and its text is not blank.
        retriever: an object with ``batch_search(queries, k)`` and ``doc(doc_id)`` (BM25Retriever,
            DenseRetriever, :class:`FusedRetriever`), or an index directory (loaded with
            ``radcot.retrieval.load_retriever``). Not needed when ``no_context``.
        k: passages per query.
        out_dir: output directory (written atomically).
        no_context: build the "distillation without retrieval" ablation (no passages).
        dev_fraction: share of the usable queries held out as ``dev`` (seeded shuffle), if ``dev_queries`` is None.
        dev_queries: queries (file, Query objects or ids) that form the dev split instead.
        seed: seed of the dev split.
        batch_size: queries per ``batch_search`` call.
        show_progress: draw a progress bar (default: from the log level).

    Returns:
        ``out_dir``. Load it with :func:`load_distillation_data`.

    Raises:
        DistillationDataError: no query has a usable teacher CoT, or bad split arguments.
    """
    _check_args(queries, teacher_out, k, out_dir, no_context, dev_fraction, dev_queries, seed, batch_size)
    retriever, index_path = _open_retriever(retriever, no_context)
    queries = as_queries(queries)
    records, teacher_info = _as_teacher(teacher_out)
    usable, excluded = _usable_queries(queries, records, out_dir)
    passages = {} if no_context else _retrieve(usable, retriever, k, batch_size, show_progress)
    dev_ids, split_desc = _dev_split(usable, dev_queries, dev_fraction, seed)
    dd = _dataset_dict(usable, records, passages, dev_ids)
    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "k": k,
        "no_context": no_context,
        "retriever": None if no_context else _retriever_info(retriever, index_path),
        "student_retriever": None if no_context else _student_retriever(retriever),
        "teacher": teacher_info,
        "split": split_desc,
        **_counts(queries, usable, excluded, dd),
    }
    _save(dd, meta, excluded, out_dir, show_progress)
    logger.info("build-data: %d train / %d dev examples (k=%d%s) -> %s", meta["n_train"], meta["n_dev"], k,
                ", no context" if no_context else "", out_dir)
    return Path(out_dir)


def _counts(queries: list[Query], usable: list[Query], excluded: list[tuple], dd) -> dict[str, Any]:
    """The metadata's counts: queries, exclusions by reason, split sizes and identities, target lengths."""
    target_words = sorted(len(t.split()) for t in dd["train"]["target"])
    return {
        "n_queries": len(queries),
        "n_usable": len(usable),
        "n_excluded": len(excluded),
        "excluded_by_reason": dict(Counter(reason for _, reason, _ in excluded)),
        "n_train": len(dd["train"]),
        "n_dev": len(dd["dev"]),
        "query_ids_sha256": {name: query_ids_digest(ds["query_id"]) for name, ds in dd.items()},
        "target_words": {"median": target_words[len(target_words) // 2], "max": target_words[-1]},
    }


def load_distillation_data(path: str | os.PathLike):
    """Load a dataset built by :func:`build_distillation_data`: returns ``(DatasetDict, metadata dict)``.

    An empty split is an empty ``Dataset`` (also in directories written by radcot <= 0.2, whose empty splits
    ``datasets`` itself cannot load).

    Raises:
        ArgumentTypeError: ``path`` is not a path.
        DistillationDataError: ``path`` holds no distillation dataset.
        DataFormatError: its metadata or columns are malformed.
    """
    import json

    path = Path(_check.path("path", path, "a distillation dataset directory (radcot build-data --out)"))
    if not (path / "dataset_dict.json").is_file():
        raise DistillationDataError(
            f"{path} is not a distillation dataset (no dataset_dict.json); build one with `radcot build-data`")
    meta = {}
    if (path / META_FILE).is_file():
        try:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(path / META_FILE, None, "the JSON radcot build-data writes", str(e),
                                  "rebuild the data with radcot build-data --overwrite") from None
    dd = _load_splits(path)
    for split in ("train", "dev"):
        if split in dd:
            missing = {"query_id", "query", "target", "passages"} - set(dd[split].column_names)
            if missing:
                raise DataFormatError(path / split, None, "columns query_id, query, target, passages",
                                      f"missing {sorted(missing)}")
    return dd, meta


def _load_splits(path: Path):
    """``datasets.load_from_disk``, with a split saved without any shard read as an empty split."""
    import json

    datasets = require("datasets", "distillation data")
    splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
    empty = [s for s in splits if (path / s / "state.json").is_file()
             and not json.loads((path / s / "state.json").read_text(encoding="utf-8")).get("_data_files")]
    if not empty:
        return datasets.load_from_disk(str(path))
    return datasets.DatasetDict({
        s: datasets.Dataset.from_dict({name: [] for name in _features()}, features=_features()) if s in empty
        else datasets.Dataset.load_from_disk(str(path / s)) for s in splits})


# ------------------------------------------------------------------------------------------- collation


def passage_text(p: Mapping[str, Any]) -> str:
    """A passage as the student reads it: ``title text`` (title omitted when empty; the official code reads the
    text only, and MS MARCO passages have no title, so the paper's inputs are the same)."""
    title = " ".join(str(p.get("title") or "").split())
    text = " ".join(str(p.get("text") or "").split())
    return f"{title} {text}" if title else text


def _check_examples(examples: Any) -> list[Mapping[str, Any]]:
    """``examples`` as a list of mappings with a string ``query`` and a list of passage mappings."""
    if isinstance(examples, Mapping):
        raise _check.ArgumentTypeError("examples must be a list of examples, got one example (a mapping): wrap it in "
                                       "a list, [example]")
    if isinstance(examples, (str, bytes)) or not isinstance(examples, Iterable):
        raise _check.ArgumentTypeError(f"examples must be a list of {{'query', 'passages'}} mappings, got "
                                       f"{examples!r:.80} ({type(examples).__name__})")
    examples = list(examples)
    if not examples:
        raise _check.ArgumentValueError("examples is empty: pass at least one {'query', 'passages'} mapping")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping) or not isinstance(ex.get("query"), str):
            raise _check.ArgumentTypeError(f"examples[{i}] must be a mapping with a string 'query' (and a list of "
                                           f"'passages'), got {ex!r:.80}")
        ps = ex.get("passages")
        if ps is not None and (isinstance(ps, (str, Mapping)) or not all(isinstance(x, Mapping) for x in ps)):
            raise _check.ArgumentTypeError(f"examples[{i}]['passages'] must be a list of {{'title', 'text'}} "
                                           f"mappings, got {ps!r:.80}")
    return examples


class FiDCollator:
    """Tokenise examples into FiD inputs.

    One input per (query, passage): the template with ``{query}`` and ``{passage}`` (``title text``) filled in,
    followed by ``</s>``. A passage too long for ``text_maxlength`` is cut so that the question before it and
    the instruction after it survive (the official code cuts the end of the whole input, instruction included;
    the two agree whenever the input fits).

    Args:
        tokenizer: a T5 tokenizer (appends ``</s>``).
        n_context: passages per query ``N`` by default (the training ``N``; :meth:`encode_inputs` takes another
            one for inference); the no-context template uses ``N = 1``.
        text_maxlength: max tokens of one (query, passage) input ``L``; passages are cut, not the question.
        target_maxlength: max target tokens (``</s>`` included).
        template: a name in :data:`TEMPLATES` or an input template with ``{query}`` and (unless no-context)
            ``{passage}``; default: the official RADCoT input.

    Example:
        >>> col = FiDCollator(tok, n_context=5)  # doctest: +SKIP
        >>> batch = col([{"query": "q", "passages": [...], "target": "because ..."}])  # doctest: +SKIP
        >>> batch["input_ids"].shape  # (B, N, L)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, n_context: int, text_maxlength: int = 300, target_maxlength: int = 200,
                 template: str = PASSAGE_TEMPLATE):
        self.tokenizer = _check.not_none("tokenizer", tokenizer, "the student's (T5) tokenizer")
        self.template = resolve_template(template)
        self.with_passages = "{passage}" in self.template
        self.n_context = _check.integer("n_context", n_context, lo=1) if self.with_passages else 1
        self.text_maxlength = _check.integer("text_maxlength", text_maxlength, lo=8)
        self.target_maxlength = _check.integer("target_maxlength", target_maxlength, lo=2)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id
        self._pre, _, self._post = self.template.partition("{passage}")

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def input_texts(self, example: Mapping[str, Any], n_context: int | None = None) -> list[str]:
        """The texts of one example's inputs as the student reads them (before tokenisation and truncation)."""
        q = " ".join(example["query"].split())
        if not self.with_passages:
            return [self.template.replace("{query}", q)]
        ps = list(example.get("passages") or [])[:n_context or self.n_context]
        pre, post = self._pre.replace("{query}", q).strip(), self._post.replace("{query}", q).strip()
        return [" ".join(x for x in (pre, passage_text(p), post) if x) for p in ps]

    def encode_inputs(self, examples: Sequence[Mapping[str, Any]], n_context: int | None = None):
        """Tokenise a batch of examples (``{"query", "passages"}``, passages best first).

        Args:
            examples: the batch.
            n_context: passages per query ``N`` for this batch (default: the collator's); the first ``N`` of each
                example's passages are read, missing ones are masked slots.

        Returns:
            ``(input_ids (B, N, L), attention_mask (B, N, L), passage_mask (B, N))`` as torch tensors.
        """
        import torch

        examples = _check_examples(examples)
        N = 1 if not self.with_passages else _check.integer("n_context", n_context or self.n_context, lo=1)
        present = torch.zeros(len(examples), N, dtype=torch.long)
        if not self.with_passages:
            seqs = [ids[:self.text_maxlength - 1] + [self.eos_id] for ids in
                    self._ids([self.input_texts(ex)[0] for ex in examples])]
            present[:, 0] = 1
        else:
            seqs = self._passage_inputs(examples, N, present)
        return self._pad(seqs, len(examples), N) + (present,)

    def _passage_inputs(self, examples: list[Mapping[str, Any]], N: int, present) -> list[list[int]]:
        """Token ids of the ``B * N`` (query, passage) inputs; fills ``present`` ``(B, N)``. Each input is the
        question, the passage cut to what fits, the instruction, ``</s>``; an empty slot is question + instruction."""
        qs = [" ".join(ex["query"].split()) for ex in examples]
        pre_ids = self._ids([self._pre.replace("{query}", q).strip() for q in qs])
        post_ids = self._ids([self._post.replace("{query}", q).strip() for q in qs])
        texts, slots = [], []
        for b, ex in enumerate(examples):
            for j, p in enumerate(list(ex.get("passages") or [])[:N]):
                texts.append(passage_text(p))
                slots.append((b, j))
                present[b, j] = 1
        passage_ids = dict(zip(slots, self._ids(texts)))
        seqs = []
        for b in range(len(examples)):
            for j in range(N):
                pid = passage_ids.get((b, j), [])
                budget = self.text_maxlength - 1 - len(pre_ids[b]) - len(post_ids[b])
                if budget >= 0:
                    ids = pre_ids[b] + pid[:budget] + post_ids[b]
                else:  # question + instruction alone exceed L: cut from the end
                    ids = (pre_ids[b] + post_ids[b])[:self.text_maxlength - 1]
                seqs.append(ids + [self.eos_id])
        return seqs

    def _pad(self, seqs: list[list[int]], B: int, N: int):
        """``(input_ids, attention_mask)`` ``(B, N, Lb)``, right-padded to the longest input ``Lb``."""
        import torch

        Lb = max(len(s) for s in seqs)
        input_ids = torch.full((B * N, Lb), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B * N, Lb), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, :len(s)] = 1
        # (B * N, L) -> (B, N, L)
        return input_ids.view(B, N, Lb), attention_mask.view(B, N, Lb)

    def encode_targets(self, targets: Sequence[str]):
        """Returns ``labels (B, T)`` with ``-100`` at padding."""
        import torch

        ids = [s[:self.target_maxlength - 1] + [self.eos_id] for s in self._ids([" ".join(str(t).split()) for t in targets])]
        T = max(len(s) for s in ids)
        labels = torch.full((len(ids), T), -100, dtype=torch.long)
        for i, s in enumerate(ids):
            labels[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return labels

    def __call__(self, examples: Sequence[Mapping[str, Any]], n_context: int | None = None) -> dict:
        examples = _check_examples(examples)
        input_ids, attention_mask, passage_mask = self.encode_inputs(examples, n_context)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "passage_mask": passage_mask}
        if "target" in examples[0] and examples[0]["target"] is not None:
            batch["labels"] = self.encode_targets([ex["target"] for ex in examples])
        return batch
