"""``radcot cache``: fill, inspect and prune the SQLite expansion cache that ``radcot serve --cache`` reads.

Examples::

    radcot cache warm --cache expansions.sqlite --student runs/demo/students/radcot --log queries.log --top 1000
    radcot cache stats --cache expansions.sqlite
    radcot cache prune --cache expansions.sqlite --keep FINGERPRINT

``warm`` generates the CoTs of the most frequent queries of a query log (one query per line; ``--log``) or
of a queries file (``--queries``: TSV, JSONL, TREC topics, BEIR) with the student exactly as ``radcot serve``
would serve it -- pass the same student flags, or its entries are another student's (the fingerprint
printed by ``warm`` equals the one ``/v1/info`` shows when they match). It is resumable: queries already
cached are skipped, and each batch is stored as it is generated. ``stats`` prints the entries per
fingerprint; ``prune`` deletes the entries of every other fingerprint (and/or the oldest beyond a size).
"""
from __future__ import annotations

import argparse
import collections
import json
import time

from radcot.cli._args import ArgumentParser, positive_int


def build_parser() -> argparse.ArgumentParser:
    from radcot.cli.serve import add_student_arguments

    p = ArgumentParser(prog="radcot cache", description="Fill (warm), inspect (stats) or prune the SQLite "
                       "expansion cache of radcot serve --cache.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    warm = sub.add_parser("warm", help="generate and store the CoTs of a query log's (most frequent) queries")
    warm.add_argument("--cache", required=True, metavar="FILE", help="the SQLite cache file (created if missing)")
    src = warm.add_mutually_exclusive_group(required=True)
    src.add_argument("--log", metavar="FILE", help="a query log: one query per line (repeats count as frequency)")
    src.add_argument("--queries", metavar="FILE", help="queries: TSV, JSONL, TREC topics or a BEIR directory")
    warm.add_argument("--top", type=positive_int, default=None, help="only the N most frequent queries (default: all)")
    warm.add_argument("--batch-size", type=positive_int, default=32, help="queries per generate call (default 32)")
    add_student_arguments(warm)
    stats = sub.add_parser("stats", help="entries per student fingerprint")
    stats.add_argument("--cache", required=True, metavar="FILE")
    prune = sub.add_parser("prune", help="delete other students' entries and/or the oldest ones")
    prune.add_argument("--cache", required=True, metavar="FILE")
    prune.add_argument("--keep", action="append", default=None, metavar="FINGERPRINT",
                       help="keep this student's entries (repeatable; /v1/info or warm prints it); others go")
    prune.add_argument("--max-entries", type=positive_int, default=None, help="then keep at most N, newest first")
    return p


def read_log(path: str, top: int | None) -> list[str]:
    """The distinct normalised queries of a one-query-per-line log, most frequent first (ties: first seen).

    Raises:
        RadcotError: the log holds no query.
    """
    from radcot.data.readers import _open
    from radcot.records import RadcotError
    from radcot.serving.cache import normalize_query

    counts: collections.Counter[str] = collections.Counter()
    with _open(path) as f:
        for line in f:
            q = normalize_query(line)
            if q:
                counts[q] += 1
    if not counts:
        raise RadcotError(f"query log {path} holds no query (expected one query per line)")
    ranked = sorted(counts, key=lambda q: -counts[q])  # stable: ties keep their first-seen order
    return ranked[:top] if top else ranked


def _queries(args) -> list[str]:
    if args.log:
        return read_log(args.log, args.top)
    from radcot.data.readers import read_queries
    from radcot.serving.cache import normalize_query

    distinct = list(dict.fromkeys(normalize_query(q.text) for q in read_queries(args.queries)))
    return distinct[:args.top] if args.top else distinct


def warm(args) -> dict:
    """Generate what is missing, batch by batch (each batch stored before the next)."""
    from radcot.cli.serve import load_expander
    from radcot.serving.cache import SQLiteCache
    from radcot.utils import progress

    queries = _queries(args)
    cache = SQLiteCache(args.cache)
    expander = load_expander(args, cache, args.batch_size)
    todo = [q for q in queries if q not in expander.lookup(queries)]
    t0 = time.perf_counter()
    with progress(total=len(todo), desc="warming", unit="q") as bar:
        for i in range(0, len(todo), args.batch_size):
            chunk = todo[i:i + args.batch_size]
            expander.generate(chunk)
            bar.update(len(chunk))
    return {"cache": str(cache.path), "fingerprint": expander.settings.fingerprint, "queries": len(queries),
            "already_cached": len(queries) - len(todo), "generated": len(todo),
            "seconds": round(time.perf_counter() - t0, 2), "student": expander.settings.summary()}


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.action == "warm":
        from radcot.cli.serve import check_student_arguments

        check_student_arguments(args, p)
        print(json.dumps(warm(args)))
    elif args.action == "stats":
        print(json.dumps(_existing(args.cache, p).stats().to_dict()))
    else:
        if args.keep is None and args.max_entries is None:
            p.error("prune needs --keep FINGERPRINT and/or --max-entries N (otherwise nothing would be deleted)")
        cache = _existing(args.cache, p)
        deleted = cache.prune(keep_students=args.keep, max_entries=args.max_entries)
        print(json.dumps({"deleted": deleted, **cache.stats().to_dict()}))
    return 0


def _existing(path: str, p: argparse.ArgumentParser):
    """An existing cache file (``stats``/``prune`` never create one)."""
    import os

    from radcot.serving.cache import SQLiteCache

    if not os.path.isfile(path):
        p.error(f"--cache {path} does not exist (radcot cache warm or radcot serve --cache create it)")
    return SQLiteCache(path)
