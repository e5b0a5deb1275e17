"""Expansion-time inference: a trained student writes a CoT per query, in the teacher's JSONL format.

:func:`generate_cots` batches queries, computes each example's encoder states once (``B x N`` passages
in one encoder call), and decodes with the stock ``generate()`` and its KV cache (greedy, beam search
or sampling). The output is a teacher-format JSONL (``query_id, query, text, model, params, ...``), so
everything that reads teacher CoTs (``read_teacher_output``, ``QueryExpander``) reads student CoTs.

Output is resumable and safe to kill: records (:class:`radcot.cot.CoTRecord`) are appended and fsync'd
batch by batch, a torn last line is cut off on the next run, queries already done are skipped, and
``OUT.config.json`` records the student and the generation parameters (a different config refuses to
resume unless ``overwrite``). One writer per output: a second run on the same ``OUT`` fails at once
(:func:`radcot.locks.output_lock`).

``max_new_tokens`` defaults to 150, the teacher's length (davinci-003 ``max_tokens=150``). The original
RADCoT code capped students at 50 tokens, well below the teacher's ~55 words; pass 50 to reproduce it.

Example:
    >>> from radcot.student.generate import generate_cots
    >>> generate_cots("runs/student/best", "student-cots.jsonl", queries="topics.dl19.txt",
    ...               retriever="indexes/msmarco-bm25", k=10)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from radcot._deps import require
from radcot.cot import CoTRecord, CoTWriter, check_config, config_path, done_ids, remove_outputs
from radcot.records import Query, RadcotError
from radcot.utils import progress, write_json

logger = logging.getLogger("radcot.student")

#: the teacher's length (davinci-003 max_tokens=150); the original RADCoT student used 50
DEFAULT_MAX_NEW_TOKENS = 150


class GenerationConfigMismatch(RadcotError, ValueError):
    """An existing output was produced by another student or with other generation parameters."""


def examples_from_data(data, split: str) -> list[dict]:
    """Examples (``query_id, query, passages``) from a distillation dataset's split (``all``: every split)."""
    from radcot.student.data import load_distillation_data

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
    else:  # a single Dataset or a list of dicts
        rows = list(dd)
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


def generate_cots(
    student,
    out_path: str | os.PathLike,
    *,
    data: Any = None,
    split: str = "all",
    queries: Iterable[Query] | str | os.PathLike | None = None,
    retriever: Any = None,
    k: int | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 16,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    limit: int | None = None,
    show_progress: bool | None = None,
) -> Path:
    """Generate a CoT per query with a FiD student and append teacher-format records to ``out_path``.

    Args:
        student: a :class:`~radcot.student.model.FiDStudent` or its directory (``RUN_DIR/best``).
        out_path: the JSONL to write (resumed if it exists).
        data: a distillation dataset (dir or ``DatasetDict``): its stored passages are used.
        split: the split of ``data`` (``train``, ``dev``, or ``all``).
        queries: queries (objects or a file) -- with ``retriever`` unless the student is no-context.
        retriever: a retriever object (``batch_search``, ``doc``) or an index directory.
        k: passages per query (default: the student's ``n_context``).
        max_new_tokens: generated tokens per CoT (default 150, the teacher's length; the original used 50).
        batch_size: queries per generation batch.
        num_beams, do_sample, temperature, top_p, num_return_sequences: decoding (greedy by default).
            With ``num_return_sequences > 1`` a record's ``text`` is the first sequence and ``texts`` all.
        no_repeat_ngram_size, repetition_penalty: transformers' guards against the loops small students
            fall into ("draws draws draws"); 0 / 1.0 (default) = off.
        seed: sampling seed (reset per batch, so resumed runs sample the same).
        device: ``auto``, ``cpu``, ``cuda``...
        overwrite: start the output again instead of resuming.
        limit: only the first ``limit`` queries.
        show_progress: progress bar, or log lines when stderr is not a terminal (default: from the log level).

    Returns:
        ``Path(out_path)``; read it with :func:`radcot.teacher.runner.read_teacher_output`.

    Raises:
        GenerationConfigMismatch: ``out_path`` was produced with another student/parameters (use ``overwrite``).
        OutputLockedError: another process is writing ``out_path``.
        RadcotError: there are no queries to generate for.
    """
    from radcot.locks import output_lock

    decoding = _Decoding(max_new_tokens, batch_size, num_beams, do_sample, temperature, top_p, num_return_sequences,
                         no_repeat_ngram_size, repetition_penalty, seed)
    if (data is None) == (queries is None):
        raise ValueError("pass exactly one of data= (a distillation dataset) or queries= (with retriever=)")
    out = Path(out_path)
    student, student_name, device = _load_student(student, device)
    k = student.fid_config.n_context if k is None else k
    config = {"student": student_name, "fid_config": student.fid_config.to_dict(),
              "params": decoding.params(0 if student.fid_config.no_context else k)}
    with output_lock(out, "student output", inherit=True):  # radcot generate already holds it: no gap
        done = _prepare_output(out, config, overwrite)
        if data is not None:
            examples = examples_from_data(data, split)
        else:
            examples = examples_from_queries(queries, retriever, k, student.fid_config.no_context,
                                             max(batch_size, 64))
        examples = examples[:limit] if limit is not None else examples
        if not examples:
            raise RadcotError("no queries to generate CoTs for: the queries (or the data split) are empty")
        todo = [ex for ex in examples if ex["query_id"] not in done]
        logger.info("generate: %d queries (%d already done) -> %s", len(examples), len(examples) - len(todo), out)
        _generate_all(student, todo, k, decoding, config, device, out, show_progress)
    return out


class _Decoding:
    """The decoding settings of a :func:`generate_cots` run, validated; what is recorded and what ``generate`` gets."""

    def __init__(self, max_new_tokens: int, batch_size: int, num_beams: int, do_sample: bool, temperature: float,
                 top_p: float, num_return_sequences: int, no_repeat_ngram_size: int, repetition_penalty: float,
                 seed: int):
        if num_return_sequences < 1 or max_new_tokens < 1 or batch_size < 1 or num_beams < 1:
            raise ValueError("num_return_sequences, max_new_tokens, batch_size and num_beams must be >= 1")
        if no_repeat_ngram_size < 0 or repetition_penalty <= 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 and repetition_penalty > 0, got "
                             f"{no_repeat_ngram_size} and {repetition_penalty}")
        if not do_sample and num_return_sequences > num_beams:
            raise ValueError(f"num_return_sequences={num_return_sequences} needs num_beams >= it or do_sample=True")
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.num_beams, self.do_sample = num_beams, do_sample
        self.temperature, self.top_p, self.n_seq = temperature, top_p, num_return_sequences
        self.no_repeat_ngram_size, self.repetition_penalty, self.seed = no_repeat_ngram_size, repetition_penalty, seed

    def params(self, k: int) -> dict[str, Any]:
        """What ``OUT.config.json`` records (options at their off value are left out, so older outputs resume)."""
        p = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "do_sample": self.do_sample,
             "num_return_sequences": self.n_seq, "seed": self.seed, "k": k}
        if self.do_sample:
            p.update(temperature=self.temperature, top_p=self.top_p)
        if self.no_repeat_ngram_size:
            p["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            p["repetition_penalty"] = self.repetition_penalty
        return p

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams,
                                  do_sample=self.do_sample, num_return_sequences=self.n_seq, use_cache=True)
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=0)
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        return kw


def _load_student(student, device: str):
    """The student (loaded from its directory if a path), its recorded name, and the resolved device."""
    torch = require("torch", "student generation")
    from radcot.student.model import FiDStudent

    name = str(student) if isinstance(student, (str, os.PathLike)) else getattr(student, "name_or_path", "FiDStudent")
    if isinstance(student, (str, os.PathLike)):
        student = FiDStudent.from_pretrained(student)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    student.to(device).eval()
    return student, str(Path(name).resolve()) if os.path.exists(name) else name, device


def _prepare_output(out: Path, config: dict, overwrite: bool) -> set[str]:
    """Start over (``overwrite``) or check the recorded config; returns the query ids already done."""
    if overwrite:
        remove_outputs(out)
    if out.exists():
        check_config(out, config, error=GenerationConfigMismatch)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(config_path(out), config)
    return done_ids(out, repair=True)


def _generate_all(student, todo: list[dict], k: int, decoding: _Decoding, config: dict, device: str, out: Path,
                  show_progress: bool | None) -> None:
    """Generate batch by batch, appending and fsync-ing each batch's records."""
    bar = progress(total=len(todo), desc="generating", unit="q", show_progress=show_progress)
    with CoTWriter(out) as writer, bar:
        for i in range(0, len(todo), decoding.batch_size):
            chunk = [dict(ex, passages=list(ex["passages"])[:k]) for ex in todo[i:i + decoding.batch_size]]
            writer.write(_generate_batch(student, chunk, decoding, config, device, seed_offset=i))
            bar.update(len(chunk))


def _generate_batch(student, chunk: list[dict], decoding: _Decoding, config: dict, device: str,
                    seed_offset: int) -> list[CoTRecord]:
    """One generation batch -> one record per example (``text`` the first sequence, ``texts`` all of them)."""
    torch = require("torch", "student generation")
    t0 = time.time()
    input_ids, attention_mask, passage_mask = student.collator.encode_inputs(chunk)
    if decoding.do_sample:
        torch.manual_seed(decoding.seed + seed_offset)
    ids = student.generate(input_ids.to(device), attention_mask.to(device), passage_mask.to(device),
                           **decoding.generate_kwargs()).cpu()  # (B * num_return_sequences, T)
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
