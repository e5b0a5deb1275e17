"""``radcot search``: search queries (optionally replaced by expanded texts) and write a TREC run.

Example:
    radcot search --index runs/vaswani-bm25 --queries ../shared/data/vaswani --run runs/vaswani.trec --k 1000
    radcot search --index runs/dl19-bm25 --queries topics.tsv --expansions expanded.tsv --run runs/q2d.trec
"""
from __future__ import annotations

import argparse
import logging
import sys

from radcot.cli._args import (
    ArgumentParser,
    check_output,
    fraction,
    heap_size,
    mark_output,
    non_negative_float,
    positive_int,
    token,
)

logger = logging.getLogger("radcot.cli.search")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="radcot search",
                                description="Search queries against a BM25 or dense index and write a TREC run.")
    p.add_argument("--index", required=True, help="index directory (from `radcot index`, or any Lucene index)")
    p.add_argument("--queries", required=True,
                   help="queries: BEIR dir / queries.jsonl, qid<TAB>text TSV, or TREC <top> topics")
    p.add_argument("--run", required=True, help="output TREC run file (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --run if an earlier radcot search wrote it")
    p.add_argument("--k", type=positive_int, default=1000, help="hits per query (default 1000)")
    p.add_argument("--expansions", default=None,
                   help="qid<TAB>expanded-query TSV whose text replaces each query's text (e.g. from `radcot expand`)")
    p.add_argument("--keep-unexpanded", action="store_true",
                   help="with --expansions, search queries missing from it with their original text instead of failing")
    p.add_argument("--bm25-k1", type=non_negative_float, default=0.9, help="BM25 k1 (default 0.9)")
    p.add_argument("--bm25-b", type=fraction, default=0.4, help="BM25 b (default 0.4)")
    p.add_argument("--rm3", action="store_true", help="BM25 + RM3 pseudo-relevance feedback")
    p.add_argument("--rm3-fb-terms", type=positive_int, default=10, help="RM3 expansion terms (default 10)")
    p.add_argument("--rm3-fb-docs", type=positive_int, default=10, help="RM3 feedback documents (default 10)")
    p.add_argument("--rm3-weight", type=fraction, default=0.5, help="RM3 original-query weight (default 0.5)")
    p.add_argument("--rocchio", action="store_true", help="BM25 + Rocchio pseudo-relevance feedback")
    p.add_argument("--max-query-terms", type=positive_int, default=None,
                   help="truncate longer queries (with a warning) instead of hitting Lucene's clause limit "
                        "(default 8192)")
    p.add_argument("--threads", type=positive_int, default=2, help="search threads (default 2)")
    p.add_argument("--heap", type=heap_size, default=None, help="JVM heap, e.g. 4g (default $RADCOT_JAVA_HEAP or 2g)")
    p.add_argument("--tag", type=token, default=None, help="run tag in the TREC file (default radcot-bm25 / radcot-dense)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.rm3 and args.rocchio:
        p.error("choose one of --rm3 and --rocchio")

    check_output(args.run, args.overwrite, "run file")
    from radcot.locks import output_lock

    with output_lock(args.run, "run file"):
        return _search(p, args)


def _queries(args):
    """The queries to search, their text replaced by ``--expansions`` when given."""
    from radcot.data.readers import read_queries
    from radcot.records import Query, RadcotError

    queries = read_queries(args.queries)
    if not queries:
        raise RadcotError(f"{args.queries} holds no queries; nothing to search")
    if not args.expansions:
        return queries
    from radcot.expansion import read_expansions

    expanded = read_expansions(args.expansions)
    missing = [q.query_id for q in queries if q.query_id not in expanded]
    if missing and not args.keep_unexpanded:
        raise RadcotError(f"{len(missing)} of {len(queries)} queries have no line in {args.expansions} "
                          f"(e.g. {missing[:5]}); add them or pass --keep-unexpanded to search them unexpanded")
    if missing:
        logger.warning("%d queries have no expansion in %s; searching their original text", len(missing),
                       args.expansions)
    unknown = set(expanded) - {q.query_id for q in queries}
    if unknown:
        logger.warning("%d query ids in %s are not among the queries of %s (ignored), e.g. %s", len(unknown),
                       args.expansions, args.queries, sorted(unknown)[:5])
    return [Query(q.query_id, expanded.get(q.query_id, q.text)) for q in queries]


def _search(p: argparse.ArgumentParser, args) -> int:
    from radcot.data.readers import write_run
    from radcot.records import RadcotError
    from radcot.retrieval import index_kind

    queries = _queries(args)
    kind = index_kind(args.index)
    progress = False if args.no_progress else None
    if kind == "dense":
        if args.rm3 or args.rocchio:
            p.error("--rm3/--rocchio apply to BM25 indexes only")
        from radcot.retrieval.dense import DenseRetriever

        retriever = DenseRetriever(args.index)
        run = retriever.run(queries, k=args.k, threads=args.threads, show_progress=progress)
        tag = args.tag or "radcot-dense"
    else:
        from radcot.retrieval.bm25 import DEFAULT_MAX_QUERY_TERMS, BM25Retriever

        retriever = BM25Retriever(args.index, k1=args.bm25_k1, b=args.bm25_b, rm3=args.rm3, rocchio=args.rocchio,
                                  rm3_params={"fb_terms": args.rm3_fb_terms, "fb_docs": args.rm3_fb_docs,
                                              "original_query_weight": args.rm3_weight},
                                  max_query_terms=args.max_query_terms or DEFAULT_MAX_QUERY_TERMS, heap=args.heap)
        run = retriever.run(queries, k=args.k, threads=args.threads, show_progress=progress)
        tag = args.tag or ("radcot-bm25-rm3" if args.rm3 else "radcot-bm25-rocchio" if args.rocchio else "radcot-bm25")
    n_hits = sum(len(v) for v in run.values())
    if n_hits == 0:
        raise RadcotError(f"no hits for any of the {len(queries)} queries in {args.index} (is the index empty, or "
                          f"the queries in another language?); {args.run} not written")
    write_run(run, args.run, tag=tag)
    mark_output(args.run, "search")
    print(f"wrote {args.run}: {len(run)} queries, {n_hits} hits", file=sys.stderr)
    return 0
