"""``radcot make-world``: generate the synthetic demo collection (BEIR layout + kb.jsonl) deterministically.

Example:
    radcot make-world --out data/demo
    radcot make-world --out /tmp/tiny --scale 0.1 --seed 7
"""
from __future__ import annotations

import argparse
import json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="radcot make-world",
        description="Generate a synthetic world of invented entities (passages, queries with a vocabulary "
                    "mismatch, graded qrels, knowledge base) in BEIR layout. Same seed and sizes -> same bytes.")
    parser.add_argument("--out", required=True, help="output directory (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default 13, the shipped data/demo)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the entity counts (1.0: ~5.4k passages, ~2k train / 200 test queries)")
    parser.add_argument("--n-test", type=int, default=200, help="test queries (one per held-out fact)")
    parser.add_argument("--train-paraphrases", type=int, default=1,
                        help="training queries per non-test fact (distinct wordings)")
    parser.add_argument("--no-overwrite", action="store_true", help="fail if --out exists")
    args = parser.parse_args(argv)

    from radcot.data.world import make_world

    manifest = make_world(args.out, seed=args.seed, scale=args.scale, overwrite=not args.no_overwrite,
                          n_test=args.n_test, train_paraphrases=args.train_paraphrases)
    print(json.dumps({"out": args.out, **manifest["sizes"]}, indent=2))
    return 0
