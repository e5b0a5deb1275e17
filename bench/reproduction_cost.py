"""Measured rates behind docs/pipelines.md's "Cost of a full reproduction" sheet (CPU; no GPU needed).

1. BM25 at k=1000 with the paper's long expanded queries: MS MARCO dev-subset queries expanded with the
   official davinci-003 CoTs by the official formula (``radcot``), searched against Vaswani indexes of
   25%, 50% and 100% of its 11,429 passages. Reports q/s plain vs expanded per size and the exponent ``a``
   of ``seconds/query ~ passages^a`` fitted over the three sizes, and extrapolates to MS MARCO's 8,841,823
   passages (an extrapolation: the sheet says so).
2. Teacher over HTTP: ``radcot teach`` (openai backend, the real client) against ``radcot teacher-serve
   --backend kb`` at a given concurrency: the client + server overhead per query, i.e. the ceiling an
   OpenAI-compatible server's own latency adds to.

Usage::

    python bench/reproduction_cost.py --n 300 --concurrency 16 --out runs/bench/reproduction_cost.json
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MSMARCO_PASSAGES = 8_841_823


def _expanded_queries(data: Path, n: int):
    from radcot.expansion import expand_queries
    from radcot.records import Query

    rows = [line.rstrip("\n").split("\t") for line in
            (data / "msmarco-passage" / "teacher-cot-davinci003" / "dev-subset.tsv").open(encoding="utf-8")][:n]
    plain = [Query(r[0], r[1]) for r in rows]
    expanded = expand_queries(plain, {r[0]: r[2] for r in rows}, "radcot")
    return plain, [Query(q.query_id, expanded[q.query_id]) for q in plain]


def _subset_indexes(data: Path, tmp: Path) -> list[tuple[int, Path]]:
    from radcot.data.readers import read_corpus
    from radcot.retrieval.bm25 import BM25Retriever

    docs = list(read_corpus(data / "vaswani"))
    out = []
    for frac in (0.25, 0.5, 1.0):
        part = docs[: int(len(docs) * frac)]
        idx = tmp / f"vaswani-{frac}"
        BM25Retriever.build(part, idx, threads=2, show_progress=False)
        out.append((len(part), idx))
    return out


def _rate(index: Path, queries, k: int, threads: int) -> float:
    from radcot.retrieval.bm25 import BM25Retriever

    bm25 = BM25Retriever(index)
    bm25.run(queries[:20], k=k, threads=threads, show_progress=False)  # warm-up (JIT, caches)
    t0 = time.perf_counter()
    bm25.run(queries, k=k, threads=threads, show_progress=False)
    return len(queries) / (time.perf_counter() - t0)


def bench_bm25(data: Path, n: int, k: int, threads: int) -> dict:
    plain, expanded = _expanded_queries(data, n)
    words = sum(len(q.text.split()) for q in expanded) / len(expanded)
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_docs, idx in _subset_indexes(data, Path(tmp)):
            sizes.append({"passages": n_docs, "plain_qps": round(_rate(idx, plain, k, threads), 1),
                          "expanded_qps": round(_rate(idx, expanded, k, threads), 1)})
    xs = [math.log(s["passages"]) for s in sizes]
    ys = [math.log(1 / s["expanded_qps"]) for s in sizes]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    a = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    last = sizes[-1]
    sec_lin = (1 / last["expanded_qps"]) * MSMARCO_PASSAGES / last["passages"]
    sec_fit = (1 / last["expanded_qps"]) * (MSMARCO_PASSAGES / last["passages"]) ** a
    return {"queries": n, "k": k, "threads": threads, "mean_expanded_words": round(words, 1), "sizes": sizes,
            "fitted_exponent": round(a, 3),
            "msmarco_dev_minutes_linear": round(6980 * sec_lin / 60, 1),
            "msmarco_dev_minutes_fitted": round(6980 * sec_fit / 60, 1)}


def bench_teacher(n: int, concurrency: int, runs: Path) -> dict:
    from radcot.data.readers import read_queries
    from radcot.rehearse import _env, make_miniature, teacher_server
    from radcot.teacher import GenerationParams, get_backend, teach

    mini = make_miniature(runs)
    queries = read_queries(mini.msmarco_dir / "queries.train.tsv")[:n]
    with teacher_server(mini.world) as (url, model), _env("OPENAI_BASE_URL", url):
        backend = get_backend("openai", model=model, concurrency=concurrency)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            teach(backend, queries, Path(tmp) / "cot.jsonl", params=GenerationParams(max_tokens=150),
                  concurrency=concurrency, show_progress=False)
            dt = time.perf_counter() - t0
        backend.close()
    return {"queries": len(queries), "concurrency": concurrency, "seconds": round(dt, 2),
            "queries_per_hour": round(len(queries) / dt * 3600)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.environ.get("RADCOT_TEST_DATA", str(REPO.parent / "shared" / "data")))
    p.add_argument("--n", type=int, default=300, help="queries per measurement (default 300)")
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--runs-dir", default=os.environ.get("RADCOT_RUNS_DIR", "runs"))
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    result = {"bm25": bench_bm25(Path(args.data), args.n, args.k, args.threads),
              "teacher_http": bench_teacher(args.n, args.concurrency, Path(args.runs_dir)),
              "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
