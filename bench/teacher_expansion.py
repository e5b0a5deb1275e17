"""BM25 with SmolLM2-135M CoT expansion (query2doc formula) vs plain BM25, on classic collections.

For each collection: the ``hf`` teacher (SmolLM2-135M-Instruct, offline) writes a CoT per query with the
paper's prompt (resumable: rerun to continue), then BM25 (k1=0.9, b=0.4) is run with the original
queries and with ``(q + " ") * 5 + cot``; nDCG@10 and AP are reported as JSON.

Usage::

    python bench/teacher_expansion.py --collections vaswani cranfield --work runs/teacher-expansion \\
        --max-tokens 150 --batch-size 8
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("RADCOT_TEST_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--collections", nargs="+", default=["vaswani", "cranfield"])
    p.add_argument("--work", default=str(REPO / "runs" / "teacher-expansion"))
    p.add_argument("--max-tokens", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="only the first N queries (teaching)")
    p.add_argument("--skip-teach", action="store_true", help="evaluate with the CoTs already written")
    args = p.parse_args(argv)

    from radcot.data.readers import read_qrels, read_queries
    from radcot.evaluation import evaluate
    from radcot.expansion import expand_queries
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.teacher import GenerationParams, is_usable, read_teacher_output, teach

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backend = None
    results = {}
    for name in args.collections:
        coll = Path(args.data) / name
        queries = read_queries(coll)
        cots_path = work / f"{name}.smollm2.cots.jsonl"
        if not args.skip_teach:
            if backend is None:
                from radcot.teacher.hf import HFBackend

                backend = HFBackend(batch_size=args.batch_size, threads=args.threads)
            t = time.perf_counter()
            s = teach(backend, queries, cots_path, params=GenerationParams(max_tokens=args.max_tokens),
                      limit=args.limit, show_progress=False)
            print(f"{name}: {s} ({time.perf_counter() - t:.0f}s)", file=sys.stderr, flush=True)
        recs = read_teacher_output(cots_path)
        cots = {q: r["text"] for q, r in recs.items() if is_usable(r)}
        qs = [q for q in queries if q.query_id in cots]  # evaluate on the queries that have a CoT
        index = work / f"{name}-bm25"
        bm25 = BM25Retriever(index) if index.exists() else BM25Retriever.build(coll, index, show_progress=False)
        keep = {q.query_id for q in qs}
        qrels = [r for r in read_qrels(coll) if r.query_id in keep]
        plain = bm25.run(qs, k=1000)
        expanded = expand_queries(qs, cots, formula="query2doc")
        exp_run = bm25.run({qid: text for qid, text in expanded.items()}, k=1000)
        metrics = ("nDCG@10", "AP", "R@1000")
        results[name] = {
            "queries": len(qs), "of": len(queries),
            "bm25": {k: round(v, 4) for k, v in evaluate(qrels, plain, metrics).items()},
            "bm25+smollm2-cot(query2doc)": {k: round(v, 4) for k, v in evaluate(qrels, exp_run, metrics).items()},
            "mean_cot_words": round(sum(len(cots[q.query_id].split()) for q in qs) / max(1, len(qs)), 1),
        }
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    (work / "results.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
