"""Benchmark: BM25 TREC-run generation, pyserini ``LuceneSearcher.batch_search`` vs radcot's fast path.

Same Lucene index, same queries, same BM25 parameters (k1=0.9, b=0.4), same threads. For each k (10 and
1000 by default) it times

- pyserini: ``batch_search(texts, qids, k, threads)`` plus turning the hits into ``{qid: {docid: score}}``
  (what any caller has to do with them), and
- radcot: ``BM25Retriever.run(queries, k, threads)``, which returns that dict directly,

after one untimed warm-up pass of each (JIT), best of ``--trials``; prints queries/second for both, the
ratio, and checks that both rank every query's documents identically (and report the same scores).
Exits non-zero if a ranking differs.

Usage:
    python bench/bm25_run_generation.py                    # vaswani from $RADCOT_TEST_DATA or ../shared/data
    python bench/bm25_run_generation.py --repeat 10 --ks 10 100 1000 --json-out runs/bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _default_collection() -> Path:
    return Path(os.environ.get("RADCOT_TEST_DATA", REPO.parent / "shared" / "data")) / "vaswani"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--collection", type=Path, default=_default_collection(),
                   help="BEIR collection with queries (default: vaswani from $RADCOT_TEST_DATA or ../shared/data)")
    p.add_argument("--index", type=Path, default=REPO / "runs" / "bench" / "vaswani-bm25",
                   help="Lucene index (built from --collection if absent)")
    p.add_argument("--repeat", type=int, default=5, help="repeat the query set this many times (distinct ids)")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 1000], help="depths to time (default 10 1000)")
    p.add_argument("--threads", type=int, default=2, help="search threads for both (default 2)")
    p.add_argument("--trials", type=int, default=2, help="timed trials per method and k; the best counts")
    p.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)

    from radcot.data.readers import read_queries
    from radcot.java import import_pyserini_lucene
    from radcot.records import Query
    from radcot.retrieval.bm25 import BM25Retriever

    if not (args.collection / "corpus.jsonl").is_file() and not args.index.is_dir():
        print(f"collection {args.collection} not found: set RADCOT_TEST_DATA or pass --collection", file=sys.stderr)
        return 2
    if args.index.is_dir():
        bm25 = BM25Retriever(args.index)
    else:
        bm25 = BM25Retriever.build(args.collection, args.index, show_progress=False)
    base = read_queries(args.collection)
    queries = [Query(f"{q.query_id}.{r}", q.text) for r in range(args.repeat) for q in base]

    t = time.perf_counter()
    lucene = import_pyserini_lucene()
    import_s = time.perf_counter() - t
    searcher = lucene.LuceneSearcher(str(args.index))
    searcher.set_bm25(0.9, 0.4)
    texts, qids = [q.text for q in queries], [q.query_id for q in queries]

    def pyserini_run(k: int) -> dict[str, dict[str, float]]:
        hits = searcher.batch_search(texts, qids, k=k, threads=args.threads)
        return {qid: {h.docid: h.score for h in hs} for qid, hs in hits.items()}

    def radcot_run(k: int) -> dict[str, dict[str, float]]:
        return bm25.run(queries, k=k, threads=args.threads, show_progress=False)

    results = []
    ok = True
    for k in args.ks:
        timings = {}
        runs = {}
        for name, fn in (("pyserini", pyserini_run), ("radcot", radcot_run)):
            fn(k)  # warm-up (JIT, caches)
            best = float("inf")
            for _ in range(args.trials):
                t = time.perf_counter()
                runs[name] = fn(k)
                best = min(best, time.perf_counter() - t)
            timings[name] = best
        a, b = runs["pyserini"], runs["radcot"]
        same = set(a) == set(b) and all(list(a[q]) == list(b[q]) for q in a)
        max_diff = max((abs(a[q][d] - b[q][d]) for q in a for d in a[q] if d in b.get(q, {})), default=0.0)
        ok &= same
        row = {"k": k, "queries": len(queries), "threads": args.threads,
               "pyserini_qps": len(queries) / timings["pyserini"], "radcot_qps": len(queries) / timings["radcot"],
               "speedup": timings["pyserini"] / timings["radcot"], "identical_ranking": same,
               "max_score_diff": max_diff, "hits": sum(len(v) for v in b.values())}
        results.append(row)
        print(f"k={k:<5} {len(queries)} queries  pyserini batch_search {row['pyserini_qps']:8.1f} q/s   "
              f"radcot run {row['radcot_qps']:8.1f} q/s   ratio {row['speedup']:5.2f}x   "
              f"identical ranking: {same} (max |score diff| {max_diff:.2g})", flush=True)
    info = {"collection": str(args.collection), "index": str(args.index), "num_docs": bm25.num_docs,
            "pyserini_import_s": round(import_s, 2), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None, "results": results}
    print(f"(pyserini import {import_s:.1f} s, not counted; {os.cpu_count()} CPUs, load average {info['load_avg']})")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(info, indent=2) + "\n")
    if not ok:
        print("RANKINGS DIFFER", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
