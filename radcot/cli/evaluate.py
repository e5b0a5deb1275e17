"""``radcot evaluate``: score a TREC run against qrels (ir-measures)."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="radcot evaluate", description="Score a TREC run with ir-measures.")
    p.add_argument("--qrels", required=True, help="TREC/BEIR qrels file, or a BEIR directory (qrels/test.tsv)")
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--metrics", nargs="+", default=["nDCG@10", "RR@10", "R@1000", "AP"],
                   help="ir-measures names (default: nDCG@10 RR@10 R@1000 AP)")
    p.add_argument("--per-query", action="store_true", help="also print per-query values (TSV, or in JSON)")
    p.add_argument("--compare", metavar="RUN_B", help="paired t-test of RUN_B against --run")
    p.add_argument("--json", action="store_true", help="print one JSON object {metric: value} on stdout")
    args = p.parse_args(argv)

    from radcot.evaluation import compare_runs, evaluate

    if args.compare:
        tests = compare_runs(args.qrels, args.run, args.compare, args.metrics)
        if args.json:
            print(json.dumps({m: r._asdict() for m, r in tests.items()}))
        else:
            print("metric\trun\tcompare\tdelta\tp")
            for m, r in tests.items():
                print(f"{m}\t{r.mean_a:.4f}\t{r.mean_b:.4f}\t{r.delta:+.4f}\t{r.p_value:.4g}")
        return 0
    if args.per_query:
        agg, pq = evaluate(args.qrels, args.run, args.metrics, per_query=True)
    else:
        agg, pq = evaluate(args.qrels, args.run, args.metrics), None
    if args.json:
        out = dict(agg)
        if pq is not None:
            out = {"aggregate": agg, "per_query": pq}
        json.dump(out, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if pq is not None:
        for m, values in pq.items():
            for q, v in values.items():
                print(f"{m}\t{q}\t{v:.4f}")
    for m, v in agg.items():
        print(f"{m}\tall\t{v:.4f}")
    return 0
