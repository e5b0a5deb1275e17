"""Benchmark: batched encoder-once + KV-cache FiD generation vs one-query-at-a-time loops.

Same model, same inputs (Cranfield queries, each with its k judged passages, as FiD inputs):

- ``batched``: :func:`FiDStudent.generate` on batches (encoder states computed once per example, stock
  ``generate()`` with the KV cache) -- what ``radcot generate`` does;
- ``per-query generate``: the same ``generate()`` called for one query at a time;
- ``naive``: one query at a time, greedy, no cache: every new token re-runs encoder and decoder.

Greedy outputs of all three are asserted identical (token ids). Usage::

    python bench/student_generation.py [--model DIR] [--queries 32] [--k 10] [--max-new-tokens 64]

Without ``--model`` it builds the offline tiny T5 (d_model 128, 2 layers; random weights, so every
query decodes to the full ``max-new-tokens``). Needs the Cranfield folder (``$RADCOT_TEST_DATA``).
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_inputs(cranfield: Path, n: int, k: int) -> tuple[list[dict], list[str]]:
    from radcot.data.readers import read_corpus, read_qrels, read_queries

    docs = {d.doc_id: d for d in read_corpus(cranfield)}
    qrels = collections.defaultdict(list)
    for r in read_qrels(cranfield, split="test"):
        qrels[r.query_id].append((-r.relevance, r.doc_id))
    queries = read_queries(cranfield)[:n]
    ids = sorted(docs)
    examples = []
    for i, q in enumerate(queries):
        rel = [d for _, d in sorted(qrels[q.query_id])][:k]
        rel += [ids[(i * 7 + j) % len(ids)] for j in range(k - len(rel))]  # top up to k passages
        examples.append({"query_id": q.query_id, "query": q.text,
                         "passages": [{"title": docs[d].title, "text": docs[d].text} for d in rel]})
    return examples, [f"{d.title} {d.text}" for d in docs.values()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="a student/T5 directory (default: build the offline tiny T5)")
    p.add_argument("--data", default=os.environ.get("RADCOT_TEST_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--text-maxlength", type=int, default=128)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--naive-queries", type=int, default=None, help="queries timed in the cache-less loop (default all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch

    from radcot.student.generate import naive_generate
    from radcot.student.model import FiDStudent
    from radcot.demo.tiny import build_tiny_t5

    if args.threads:
        torch.set_num_threads(args.threads)
    cranfield = Path(args.data) / "cranfield"
    examples, texts = load_inputs(cranfield, args.queries, args.k)
    model_dir = args.model
    if model_dir is None:
        model_dir = Path(tempfile.mkdtemp(prefix="radcot-bench-")) / "tiny-t5"
        build_tiny_t5(texts, model_dir, vocab_size=2000, d_model=128, layers=2, heads=4, d_ff=512)
    student = FiDStudent.from_pretrained(model_dir, n_context=args.k, text_maxlength=args.text_maxlength).eval()
    pad = student.tokenizer.pad_token_id

    def strip(seq):
        seq = list(seq)
        while len(seq) > 1 and seq[-1] == pad:
            seq.pop()
        return seq

    n_tok = args.max_new_tokens
    t0 = time.perf_counter()
    batched = []
    for i in range(0, len(examples), args.batch_size):
        ii, am, pm = student.collator.encode_inputs(examples[i:i + args.batch_size])
        out = student.generate(ii, am, pm, max_new_tokens=n_tok, num_beams=1, do_sample=False)
        batched.extend(strip(r) for r in out.tolist())
    t_batched = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_query = naive_generate(student, examples, max_new_tokens=n_tok, use_cache=True)
    t_per_query = time.perf_counter() - t0

    m = args.naive_queries or len(examples)
    t0 = time.perf_counter()
    naive = naive_generate(student, examples[:m], max_new_tokens=n_tok, use_cache=False)
    t_naive = (time.perf_counter() - t0) * len(examples) / m

    assert batched == per_query, "batched and per-query generate() differ"
    assert batched[:m] == naive, "batched generate() and the cache-less greedy loop differ"
    gen_tokens = sum(len(s) - 1 for s in batched)
    print(f"model {model_dir}: {sum(p.numel() for p in student.parameters()):,} params; {len(examples)} queries x "
          f"k={args.k} passages x {args.text_maxlength} tokens; {gen_tokens} tokens generated; "
          f"torch threads {torch.get_num_threads()}")
    print("greedy outputs identical across the three paths: yes")
    print(f"batched (bs={args.batch_size}, encoder once, KV cache): {t_batched:8.2f} s  "
          f"{len(examples) / t_batched:7.2f} q/s")
    print(f"per-query generate() (KV cache):            {t_per_query:8.2f} s  x{t_per_query / t_batched:.1f} slower")
    print(f"naive per-query loop (no cache{', extrapolated from %d' % m if m < len(examples) else ''}):"
          f"{'':>6}{t_naive:8.2f} s  x{t_naive / t_batched:.1f} slower")
    print(f"speed-up of the batched path: {t_naive / t_batched:.1f}x over naive, {t_per_query / t_batched:.1f}x over "
          f"per-query generate()")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
