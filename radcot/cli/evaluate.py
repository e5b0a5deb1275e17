"""``radcot evaluate``: score a TREC run against qrels (ir-measures)."""
from __future__ import annotations

import argparse
import json
import sys

from radcot.cli._args import ArgumentParser


def _metric(name: str) -> str:
    """argparse type: an ir-measures name (an unknown one is a usage error, exit 2)."""
    from radcot.evaluation import _parse
    from radcot.records import RadcotError

    try:
        _parse([name])
    except RadcotError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="radcot evaluate", description="Score a TREC run with ir-measures. Judged "
                       "queries absent from the run score 0 and are reported (a warning; "
                       "\"missing_from_run\" in --json).")
    p.add_argument("--qrels", required=True, help="TREC/BEIR qrels file, or a BEIR directory (qrels/test.tsv)")
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--metrics", nargs="+", type=_metric, default=["nDCG@10", "RR@10", "R@1000", "AP"],
                   help="ir-measures names (default: nDCG@10 RR@10 R@1000 AP; graded: AP(rel=2), R(rel=2)@1000)")
    p.add_argument("--per-query", action="store_true", help="also print per-query values (TSV, or in JSON)")
    p.add_argument("--compare", metavar="RUN_B", help="paired t-test of RUN_B against --run")
    p.add_argument("--all-queries", action="store_true",
                   help="average over every query of the run too (unjudged ones score 0); default: judged only")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {metric: value, \"missing_from_run\": {count, query_ids}} on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from radcot.evaluation import _as_qrels

    qrels = _as_qrels(args.qrels)
    if args.compare:
        return _compare(args, qrels)
    return _evaluate(args, qrels)


def _compare(args, qrels) -> int:
    from radcot.evaluation import compare_runs

    tests = compare_runs(qrels, args.run, args.compare, args.metrics)
    if args.json:
        print(json.dumps({m: r._asdict() for m, r in tests.items()}))
    else:
        print("metric\trun\tcompare\tdelta\tp")
        for m, r in tests.items():
            print(f"{m}\t{r.mean_a:.4f}\t{r.mean_b:.4f}\t{r.delta:+.4f}\t{r.p_value:.4g}")
    return 0


def _evaluate(args, qrels) -> int:
    from radcot.data.readers import read_run
    from radcot.evaluation import evaluate, missing_from_run

    run = read_run(args.run)
    agg, pq = evaluate(qrels, run, args.metrics, per_query=True, judged_only=not args.all_queries)
    missing = missing_from_run(qrels, run)
    if args.json:
        out = {"aggregate": agg, "per_query": pq} if args.per_query else dict(agg)
        out["missing_from_run"] = {"count": len(missing), "query_ids": missing[:10]}
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if args.per_query:
        for m, values in pq.items():
            for q, v in values.items():
                print(f"{m}\t{q}\t{v:.4f}")
    for m, v in agg.items():
        print(f"{m}\tall\t{v:.4f}")
    return 0
