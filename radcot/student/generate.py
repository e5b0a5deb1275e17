"""Expansion-time inference: a trained student writes a CoT per query, in the teacher's JSONL format.

:func:`generate_cots` batches queries, computes each example's encoder states once (``B x N`` passages
in one encoder call), and decodes with the stock ``generate()`` and its KV cache (greedy, beam search
or sampling). The output is a teacher-format JSONL (``query_id, query, text, model, params, ...``), so
everything that reads teacher CoTs (``read_teacher_output``, ``QueryExpander``) reads student CoTs.

Output is resumable and safe to kill: records are appended and fsync'd batch by batch, a torn last
line is cut off on the next run, queries already done are skipped, and ``OUT.config.json`` records the
student and the generation parameters (a different config refuses to resume unless ``overwrite``).

``max_new_tokens`` defaults to 150, the teacher's length (davinci-003 ``max_tokens=150``). The original
RADCoT code capped students at 50 tokens, well below the teacher's ~55 words; pass 50 to reproduce it.

Example:
    >>> from radcot.student.generate import generate_cots
    >>> generate_cots("runs/student/best", "student-cots.jsonl", queries="topics.dl19.txt",
    ...               retriever="indexes/msmarco-bm25", k=10)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from radcot._deps import require
from radcot.records import Query, RadcotError
from radcot.utils import progress_enabled, write_json

logger = logging.getLogger("radcot.student")

#: the teacher's length (davinci-003 max_tokens=150); the original RADCoT student used 50
DEFAULT_MAX_NEW_TOKENS = 150


class GenerationConfigMismatch(RadcotError, ValueError):
    """An existing output was produced by another student or with other generation parameters."""


def _config_path(out: Path) -> Path:
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    return out.with_name(stem.name + ".config.json")


def _scan_done(path: Path) -> set[str]:
    """Query ids already written; a torn last line (killed run) is cut off the file."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    done, pos, good_end, lineno = set(), 0, 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        lineno += 1
        raw = data[pos:end]
        if raw.strip():
            try:
                obj = json.loads(raw.decode("utf-8"))
                ok = isinstance(obj, dict) and "query_id" in obj and nl >= 0
            except (UnicodeDecodeError, json.JSONDecodeError):
                ok = False
            if not ok:
                if end >= len(data):
                    logger.warning("%s: line %d is incomplete (interrupted write); it will be redone", path, lineno)
                    break
                from radcot.records import DataFormatError

                raise DataFormatError(path, lineno, "one JSON record per line (with query_id)", repr(raw[:80]),
                                      "the file is corrupt in the middle; delete it or pass overwrite=True")
            done.add(str(obj["query_id"]))
        good_end = end
        pos = end
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return done


def _examples_from_data(data, split: str) -> list[dict]:
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


def _examples_from_queries(queries, retriever, k: int, no_context: bool, batch_size: int) -> list[dict]:
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
        show_progress: progress bar (default: from the log level).

    Returns:
        ``Path(out_path)``; read it with :func:`radcot.teacher.runner.read_teacher_output`.

    Raises:
        GenerationConfigMismatch: ``out_path`` was produced with another student/parameters (use ``overwrite``).
    """
    torch = require("torch", "student generation")
    from tqdm.auto import tqdm

    from radcot.student.model import FiDStudent

    if (data is None) == (queries is None):
        raise ValueError("pass exactly one of data= (a distillation dataset) or queries= (with retriever=)")
    if num_return_sequences < 1 or max_new_tokens < 1 or batch_size < 1 or num_beams < 1:
        raise ValueError("num_return_sequences, max_new_tokens, batch_size and num_beams must be >= 1")
    if no_repeat_ngram_size < 0 or repetition_penalty <= 0:
        raise ValueError(f"no_repeat_ngram_size must be >= 0 and repetition_penalty > 0, got "
                         f"{no_repeat_ngram_size} and {repetition_penalty}")
    if not do_sample and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} needs num_beams >= it or do_sample=True")
    out = Path(out_path)
    student_name = str(student) if isinstance(student, (str, os.PathLike)) else getattr(student, "name_or_path", "FiDStudent")
    if isinstance(student, (str, os.PathLike)):
        student = FiDStudent.from_pretrained(student)
    fid = student.fid_config
    k = fid.n_context if k is None else k
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    student.to(device).eval()

    params = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": do_sample,
              "num_return_sequences": num_return_sequences, "seed": seed, "k": 0 if fid.no_context else k}
    if do_sample:
        params.update(temperature=temperature, top_p=top_p)
    if no_repeat_ngram_size:  # recorded only when used, so outputs written before these options still resume
        params["no_repeat_ngram_size"] = no_repeat_ngram_size
    if repetition_penalty != 1.0:
        params["repetition_penalty"] = repetition_penalty
    config = {"student": str(Path(student_name).resolve()) if os.path.exists(student_name) else student_name,
              "fid_config": fid.to_dict(), "params": params}
    cfg_path = _config_path(out)
    if overwrite:
        for p in (out, cfg_path):
            if p.exists():
                p.unlink()
    if out.exists() and cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(config)):
            diff = sorted(key for key in set(old) | set(config) if old.get(key) != json.loads(json.dumps(config)).get(key))
            raise GenerationConfigMismatch(f"{out} was generated with a different {'/'.join(diff)} ({cfg_path}); "
                                           f"pass overwrite=True (--overwrite) or write to another file")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(cfg_path, config)
    done = _scan_done(out)

    if data is not None:
        examples = _examples_from_data(data, split)
    else:
        examples = _examples_from_queries(queries, retriever, k, fid.no_context, max(batch_size, 64))
    if limit is not None:
        examples = examples[:limit]
    todo = [ex for ex in examples if ex["query_id"] not in done]
    logger.info("generate: %d queries (%d already done) -> %s", len(examples), len(examples) - len(todo), out)
    # the student reads at most n_context passages; k smaller than that leaves empty (masked) slots
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                                      num_return_sequences=num_return_sequences, use_cache=True)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
    if no_repeat_ngram_size:
        gen_kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
    if repetition_penalty != 1.0:
        gen_kwargs["repetition_penalty"] = repetition_penalty
    eos = student.t5.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = student.tokenizer.pad_token_id
    bar = tqdm(total=len(todo), desc="generating", unit="q", disable=not progress_enabled(show_progress))
    with open(out, "a", encoding="utf-8") as f:
        for i in range(0, len(todo), batch_size):
            chunk = [dict(ex, passages=list(ex["passages"])[:k]) for ex in todo[i:i + batch_size]]
            t0 = time.time()
            input_ids, attention_mask, passage_mask = student.collator.encode_inputs(chunk)
            if do_sample:
                torch.manual_seed(seed + i)
            ids = student.generate(input_ids.to(device), attention_mask.to(device), passage_mask.to(device),
                                   **gen_kwargs).cpu()  # (B * num_return_sequences, T)
            texts = student.tokenizer.batch_decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            elapsed = (time.time() - t0) / len(chunk)
            lines = []
            for b, ex in enumerate(chunk):
                rows = range(b * num_return_sequences, (b + 1) * num_return_sequences)
                first = ids[rows[0]].tolist()[1:]  # drop the decoder start token
                n_tok = len([t for t in first if t != pad])
                finished = any(t in eos for t in first)
                seqs = [" ".join(texts[r].split()) for r in rows]
                rec = {
                    "query_id": ex["query_id"], "query": ex["query"], "text": seqs[0], "prompt_name": "fid-student",
                    "model": config["student"], "params": params,
                    "finish_reason": "stop" if finished else "length", "attempts": 1,
                    "elapsed_s": round(elapsed, 4), "error": None, "empty": not seqs[0].strip(),
                    "prompt_tokens": int(attention_mask[b].sum()), "completion_tokens": n_tok,
                    "doc_ids": [p.get("doc_id") for p in ex["passages"]],
                }
                if num_return_sequences > 1:
                    rec["texts"] = seqs
                lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(chunk))
    bar.close()
    return out


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
