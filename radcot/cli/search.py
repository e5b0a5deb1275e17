"""``radcot search``: search queries (optionally replaced by expanded texts) and write a TREC run.

Example:
    radcot search --index runs/vaswani-bm25 --queries ../shared/data/vaswani --run runs/vaswani.trec --k 1000
    radcot search --index runs/dl19-bm25 --queries topics.tsv --expansions expanded.tsv --run runs/q2d.trec
"""
from __future__ import annotations

import argparse
import logging
import sys

from radcot.cli._args import (ArgumentParser, check_output, fraction, heap_size, mark_output, non_negative_float,
                              positive_int, token)

logger = logging.getLogger("radcot.cli.search")


#: options that only BM25 (Lucene) indexes take, and only dense (FAISS) ones, as argparse dests -> flags
BM25_OPTIONS = {"bm25_k1": "--bm25-k1", "bm25_b": "--bm25-b", "rm3": "--rm3", "rm3_fb_terms": "--rm3-fb-terms",
                "rm3_fb_docs": "--rm3-fb-docs", "rm3_weight": "--rm3-weight", "rocchio": "--rocchio",
                "max_query_terms": "--max-query-terms", "heap": "--heap"}
DENSE_OPTIONS = {"device": "--device", "batch_size": "--batch-size", "ef_search": "--ef-search"}
_RM3_TUNING = {"rm3_fb_terms": "--rm3-fb-terms", "rm3_fb_docs": "--rm3-fb-docs", "rm3_weight": "--rm3-weight"}


def _parser() -> argparse.ArgumentParser:
    from radcot.retrieval.bm25 import DEFAULT_B, DEFAULT_K1, DEFAULT_MAX_QUERY_TERMS, RM3_DEFAULTS
    from radcot.retrieval.dense import DEFAULT_BATCH_SIZE, DEFAULT_EF_SEARCH

    p = ArgumentParser(prog="radcot search",
                       description="Search queries against a BM25 or dense index and write a TREC run. Options "
                                   "for the other kind of index are refused, not ignored.")
    p.add_argument("--index", required=True, help="index directory (from `radcot index`, or any Lucene index)")
    p.add_argument("--queries", required=True,
                   help="queries: BEIR dir / queries.jsonl, qid<TAB>text TSV, TREC <top> or XML <topic> topics")
    p.add_argument("--run", required=True, help="output TREC run file (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --run if an earlier radcot search wrote it")
    p.add_argument("--k", type=positive_int, default=1000, help="hits per query (default 1000)")
    p.add_argument("--expansions", default=None,
                   help="qid<TAB>expanded-query TSV whose text replaces each query's text (e.g. from `radcot expand`)")
    p.add_argument("--keep-unexpanded", action="store_true",
                   help="with --expansions, search queries missing from it with their original text instead of failing")
    p.add_argument("--threads", type=positive_int, default=2, help="search threads (default 2)")
    p.add_argument("--tag", type=token, default=None, help="run tag in the TREC file (default radcot-bm25 / radcot-dense)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    bm25 = p.add_argument_group("BM25 indexes only")
    bm25.add_argument("--bm25-k1", type=non_negative_float, default=None, help=f"BM25 k1 (default {DEFAULT_K1})")
    bm25.add_argument("--bm25-b", type=fraction, default=None, help=f"BM25 b (default {DEFAULT_B})")
    bm25.add_argument("--rm3", action="store_true", default=None, help="BM25 + RM3 pseudo-relevance feedback")
    bm25.add_argument("--rm3-fb-terms", type=positive_int, default=None,
                      help=f"RM3 expansion terms (default {RM3_DEFAULTS['fb_terms']})")
    bm25.add_argument("--rm3-fb-docs", type=positive_int, default=None,
                      help=f"RM3 feedback documents (default {RM3_DEFAULTS['fb_docs']})")
    bm25.add_argument("--rm3-weight", type=fraction, default=None,
                      help=f"RM3 original-query weight (default {RM3_DEFAULTS['original_query_weight']})")
    bm25.add_argument("--rocchio", action="store_true", default=None, help="BM25 + Rocchio pseudo-relevance feedback")
    bm25.add_argument("--max-query-terms", type=positive_int, default=None,
                      help="truncate longer queries (with a warning) instead of hitting Lucene's clause limit "
                           f"(default {DEFAULT_MAX_QUERY_TERMS})")
    bm25.add_argument("--heap", type=heap_size, default=None,
                      help="JVM heap, e.g. 4g (default $RADCOT_JAVA_HEAP or 2g)")
    dense = p.add_argument_group("dense indexes only")
    dense.add_argument("--device", default=None, help="torch device for encoding queries (default cpu)")
    dense.add_argument("--batch-size", type=positive_int, default=None,
                       help=f"query-encoding batch size (default {DEFAULT_BATCH_SIZE})")
    dense.add_argument("--ef-search", type=positive_int, default=None,
                       help=f"HNSW search breadth (default {DEFAULT_EF_SEARCH}; flat indexes are exact)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.rm3 and args.rocchio:
        p.error("choose one of --rm3 and --rocchio")
    tuning = [flag for dest, flag in _RM3_TUNING.items() if getattr(args, dest) is not None]
    if tuning and not args.rm3:
        p.error(f"{', '.join(tuning)} tune RM3: add --rm3 (or drop them)")
    from radcot.retrieval import index_kind

    queries = _queries(args)  # input errors first, each naming its file and line
    check_output(args.run, args.overwrite, "run file")
    kind = index_kind(args.index)
    _refuse_other_kind(p, args, kind)
    from radcot.locks import output_lock

    with output_lock(args.run, "run file"):
        return _search(args, kind, queries)


def _refuse_other_kind(p: argparse.ArgumentParser, args, kind: str) -> None:
    """Options for the other kind of index are a usage error (exit 2), never silently ignored."""
    other = BM25_OPTIONS if kind == "dense" else DENSE_OPTIONS
    given = [flag for dest, flag in other.items() if getattr(args, dest) is not None]
    if given:
        what = "BM25 (Lucene)" if kind == "dense" else "dense (FAISS)"
        p.error(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to {what} indexes only; {args.index} is a "
                f"{'dense (FAISS)' if kind == 'dense' else 'BM25 (Lucene)'} index")


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


def _given(args, names: dict[str, str]) -> dict:
    """``{parameter: value}`` of the options the user gave (the library's defaults apply to the others)."""
    return {param: getattr(args, dest) for dest, param in names.items() if getattr(args, dest) is not None}


def _retriever(args, kind: str):
    if kind == "dense":
        from radcot.retrieval.dense import DenseRetriever

        return DenseRetriever(args.index, **_given(args, {"device": "device", "batch_size": "batch_size",
                                                           "ef_search": "ef_search"}))
    from radcot.retrieval.bm25 import BM25Retriever

    params = _given(args, {"bm25_k1": "k1", "bm25_b": "b", "rm3": "rm3", "rocchio": "rocchio",
                           "max_query_terms": "max_query_terms", "heap": "heap"})
    rm3 = _given(args, {"rm3_fb_terms": "fb_terms", "rm3_fb_docs": "fb_docs", "rm3_weight": "original_query_weight"})
    return BM25Retriever(args.index, rm3_params=rm3 or None, **params)


def _search(args, kind: str, queries) -> int:
    from radcot.data.readers import write_run
    from radcot.records import RadcotError

    retriever = _retriever(args, kind)
    run = retriever.run(queries, k=args.k, threads=args.threads, show_progress=False if args.no_progress else None)
    tag = args.tag or ("radcot-dense" if kind == "dense" else "radcot-bm25-rm3" if args.rm3 else
                       "radcot-bm25-rocchio" if args.rocchio else "radcot-bm25")
    n_hits = sum(len(v) for v in run.values())
    if n_hits == 0:
        raise RadcotError(f"no hits for any of the {len(queries)} queries in {args.index} (is the index empty, or "
                          f"the queries in another language?); {args.run} not written")
    write_run(run, args.run, tag=tag)
    mark_output(args.run, "search")
    print(f"wrote {args.run}: {len(run)} queries, {n_hits} hits", file=sys.stderr)
    return 0
