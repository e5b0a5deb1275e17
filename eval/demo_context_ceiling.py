"""The ceiling of a retrieval-augmented student on the demo world: answer-bearing passage recall of its context.

For a held-out dev split of the TRAINING queries (never the test queries), the share of queries with a passage
stating the fact (qrels relevance 2; also >= 1) among the top k passages of each context retriever: BM25,
dense (FAISS + the offline all-MiniLM-L6-v2) and their reciprocal rank fusion. Usage::

    python eval/demo_context_ceiling.py --bm25-index runs/demo/index-*/index --dense-index /tmp/demo-dense

Builds the indexes that do not exist yet. Prints one line per retriever, k and relevance level.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dev_queries(world: Path, n: int, seed: int):
    """``(queries, qrels)`` of ``n`` training queries drawn with ``random.Random(seed)``."""
    from radcot.data.readers import read_qrels
    from radcot.records import Query
    from radcot.utils import read_jsonl

    train = [q for q in read_jsonl(world / "queries.jsonl") if q["metadata"]["split"] == "train"]
    ids = [q["_id"] for q in train]
    random.Random(seed).shuffle(ids)
    dev = set(ids[:n])
    qrels: dict[str, dict[str, int]] = {}
    for r in read_qrels(world / "qrels" / "train.tsv"):
        if r.query_id in dev:
            qrels.setdefault(r.query_id, {})[r.doc_id] = r.relevance
    return [Query(q["_id"], q["text"]) for q in train if q["_id"] in dev], qrels


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default=str(REPO / "data" / "demo"))
    p.add_argument("--bm25-index", required=True, help="BM25 index of the world's corpus (built if missing)")
    p.add_argument("--dense-index", required=True, help="dense index of the world's corpus (built if missing)")
    p.add_argument("--dev", type=int, default=200, help="dev queries drawn from the training queries")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    args = p.parse_args(argv)

    from radcot.demo.answers import context_recall
    from radcot.retrieval.bm25 import BM25Retriever
    from radcot.retrieval.dense import DenseRetriever
    from radcot.retrieval.fusion import FusedRetriever

    world = Path(args.world)
    if not Path(args.bm25_index).exists():
        BM25Retriever.build(world / "corpus.jsonl", args.bm25_index)
    if not Path(args.dense_index).exists():
        DenseRetriever.build(world / "corpus.jsonl", args.dense_index)
    bm25, dense = BM25Retriever(args.bm25_index, k1=0.9, b=0.4), DenseRetriever(args.dense_index)
    queries, qrels = dev_queries(world, args.dev, args.seed)
    depth = max(args.k)
    for name, retr in (("bm25", bm25), ("dense", dense), ("fused", FusedRetriever([bm25, dense]))):
        hits = retr.batch_search(queries, depth)
        for k in args.k:
            cells = [f"rel>={rel}: {context_recall(hits, qrels, k, rel):.3f}" for rel in (2, 1)]
            print(f"{name:6s} k={k:<3d} " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
