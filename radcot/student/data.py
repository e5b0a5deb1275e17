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
from radcot.retrieval.base import as_queries, retrieve_passages
from radcot.retrieval.fusion import FusedRetriever  # noqa: F401 - moved to radcot.retrieval; still importable here
from radcot.utils import atomic_dir, interactive_progress, progress, sha256_file, write_json

logger = logging.getLogger("radcot.student")

#: the paper's per-passage student input
PASSAGE_TEMPLATE = ('Answer the following question "{query}" based on the given passage. '
                    'Passage: {passage} Give the rationale before answering :')
#: the no-context ablation's single input ("distillation without retrieval")
NO_CONTEXT_TEMPLATE = 'Answer the following question "{query}". Give the rationale before answering :'

META_FILE = "radcot_data.json"
EXCLUDED_FILE = "excluded.tsv"
DATA_FORMAT_VERSION = 1


class DistillationDataError(RadcotError, ValueError):
    """The distillation data cannot be built or read (no usable examples, a bad split, a missing file)."""


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


def _check_args(k: int, dev_fraction: float, no_context: bool, retriever) -> tuple[Any, str | None]:
    """Validate the arguments; open ``retriever`` when it is an index directory. Returns ``(retriever, index)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1), got {dev_fraction}")
    if no_context:
        return retriever, None
    if retriever is None:
        raise DistillationDataError("build_distillation_data needs a retriever (or index dir) unless no_context=True")
    if isinstance(retriever, (str, os.PathLike)):
        from radcot.retrieval import load_retriever

        return load_retriever(retriever), str(retriever)
    return retriever, None


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
    """The dev query ids (given, or a seeded share of ``usable``) and a description for the metadata."""
    if dev_queries is not None:
        dev_ids = _dev_ids(dev_queries)
        unknown = dev_ids - {q.query_id for q in usable}
        if unknown:
            logger.warning("build-data: %d dev query ids are not among the usable queries (ignored), e.g. %s",
                           len(unknown), sorted(unknown)[:5])
        return dev_ids, {"dev_queries": str(dev_queries) if isinstance(dev_queries, (str, os.PathLike))
                         else f"{len(dev_ids)} ids"}
    order = [q.query_id for q in usable]
    random.Random(seed).shuffle(order)
    n_dev = int(round(dev_fraction * len(order)))
    if dev_fraction > 0 and n_dev == 0 and len(order) > 1:
        n_dev = 1
    return set(order[:n_dev]), {"dev_fraction": dev_fraction, "seed": seed}


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
        try:
            dd.save_to_disk(str(tmp))
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
    retriever, index_path = _check_args(k, dev_fraction, no_context, retriever)
    queries = as_queries(queries)
    records, teacher_info = _as_teacher(teacher_out)
    usable, excluded = _usable_queries(queries, records, out_dir)
    passages = {} if no_context else _retrieve(usable, retriever, k, batch_size, show_progress)
    dev_ids, split_desc = _dev_split(usable, dev_queries, dev_fraction, seed)
    dd = _dataset_dict(usable, records, passages, dev_ids)
    target_words = sorted(len(t.split()) for t in dd["train"]["target"])
    meta = {
        "format_version": DATA_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "k": k,
        "no_context": no_context,
        "retriever": None if no_context else _retriever_info(retriever, index_path),
        "teacher": teacher_info,
        "split": split_desc,
        "n_queries": len(queries),
        "n_usable": len(usable),
        "n_excluded": len(excluded),
        "excluded_by_reason": dict(Counter(reason for _, reason, _ in excluded)),
        "n_train": len(dd["train"]),
        "n_dev": len(dd["dev"]),
        "target_words": {"median": target_words[len(target_words) // 2], "max": target_words[-1]},
    }
    _save(dd, meta, excluded, out_dir, show_progress)
    logger.info("build-data: %d train / %d dev examples (k=%d%s) -> %s", meta["n_train"], meta["n_dev"], k,
                ", no context" if no_context else "", out_dir)
    return Path(out_dir)


def load_distillation_data(path: str | os.PathLike):
    """Load a dataset built by :func:`build_distillation_data`: returns ``(DatasetDict, metadata dict)``."""
    datasets = require("datasets", "distillation data")
    import json

    path = Path(path)
    if not (path / "dataset_dict.json").is_file():
        raise DistillationDataError(
            f"{path} is not a distillation dataset (no dataset_dict.json); build one with `radcot build-data`")
    meta = {}
    if (path / META_FILE).is_file():
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    dd = datasets.load_from_disk(str(path))
    for split in ("train", "dev"):
        if split in dd:
            missing = {"query_id", "query", "target", "passages"} - set(dd[split].column_names)
            if missing:
                raise DataFormatError(path / split, None, "columns query_id, query, target, passages",
                                      f"missing {sorted(missing)}")
    return dd, meta


# ------------------------------------------------------------------------------------------- collation


def passage_text(p: Mapping[str, Any]) -> str:
    """A passage as the student reads it: ``title text`` (title omitted when empty)."""
    title = str(p.get("title") or "").strip()
    text = " ".join(str(p.get("text") or "").split())
    return f"{title} {text}" if title else text


class FiDCollator:
    """Tokenise examples into FiD inputs.

    Args:
        tokenizer: a T5 tokenizer (appends ``</s>``).
        n_context: passages per query ``N``; the no-context template uses ``N = 1``.
        text_maxlength: max tokens of one (query, passage) input ``L``; passages are cut, not the question.
        target_maxlength: max target tokens (``</s>`` included).
        template: input template with ``{query}`` and (unless no-context) ``{passage}``.

    Example:
        >>> col = FiDCollator(tok, n_context=5)  # doctest: +SKIP
        >>> batch = col([{"query": "q", "passages": [...], "target": "because ..."}])  # doctest: +SKIP
        >>> batch["input_ids"].shape  # (B, N, L)  # doctest: +SKIP
    """

    def __init__(self, tokenizer, n_context: int, text_maxlength: int = 300, target_maxlength: int = 200,
                 template: str = PASSAGE_TEMPLATE):
        if "{query}" not in template:
            raise ValueError(f"template must contain {{query}}: {template!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.with_passages = "{passage}" in template
        self.n_context = n_context if self.with_passages else 1
        self.text_maxlength = text_maxlength
        self.target_maxlength = target_maxlength
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_id = tokenizer.eos_token_id
        if self.with_passages:
            pre, _, post = template.partition("{passage}")
            self._pre, self._post = pre, post

    def _ids(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def encode_inputs(self, examples: Sequence[Mapping[str, Any]]):
        """Returns ``(input_ids (B, N, L), attention_mask (B, N, L), passage_mask (B, N))`` as torch tensors."""
        import torch

        B, N = len(examples), self.n_context
        L = self.text_maxlength
        seqs: list[list[int]] = []
        present = torch.zeros(B, N, dtype=torch.long)
        if not self.with_passages:
            texts = [self.template.format(query=" ".join(str(ex["query"]).split())) for ex in examples]
            for ids in self._ids(texts):
                seqs.append(ids[:L - 1] + [self.eos_id])
            present[:, 0] = 1
        else:
            pres, posts, ptexts, where = [], [], [], []
            for b, ex in enumerate(examples):
                q = " ".join(str(ex["query"]).split()).replace("{", "{{").replace("}", "}}")
                pres.append(self._pre.format(query=q).strip())
                posts.append(self._post.format(query=q).strip())
                ps = list(ex.get("passages") or [])[:N]
                for j in range(N):
                    if j < len(ps):
                        ptexts.append(passage_text(ps[j]))
                        present[b, j] = 1
                    else:
                        ptexts.append("")
                    where.append(b)
            pre_ids, post_ids = self._ids(pres), self._ids(posts)
            p_ids = self._ids([t for t in ptexts if t])
            it = iter(p_ids)
            for i, t in enumerate(ptexts):
                b = where[i]
                pid = next(it) if t else []
                budget = L - 1 - len(pre_ids[b]) - len(post_ids[b])
                if budget >= 0:
                    ids = pre_ids[b] + pid[:budget] + post_ids[b]
                else:  # question + instruction alone exceed L: cut from the end
                    ids = (pre_ids[b] + post_ids[b])[:L - 1]
                seqs.append(ids + [self.eos_id])
        Lb = max(len(s) for s in seqs)
        input_ids = torch.full((B * N, Lb), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B * N, Lb), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, :len(s)] = 1
        # (B * N, L) -> (B, N, L)
        return input_ids.view(B, N, Lb), attention_mask.view(B, N, Lb), present

    def encode_targets(self, targets: Sequence[str]):
        """Returns ``labels (B, T)`` with ``-100`` at padding."""
        import torch

        ids = [s[:self.target_maxlength - 1] + [self.eos_id] for s in self._ids([" ".join(str(t).split()) for t in targets])]
        T = max(len(s) for s in ids)
        labels = torch.full((len(ids), T), -100, dtype=torch.long)
        for i, s in enumerate(ids):
            labels[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return labels

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict:
        input_ids, attention_mask, passage_mask = self.encode_inputs(examples)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "passage_mask": passage_mask}
        if examples and "target" in examples[0] and examples[0]["target"] is not None:
            batch["labels"] = self.encode_targets([ex["target"] for ex in examples])
        return batch
