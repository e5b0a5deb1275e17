"""``radcot make-world``: generate the synthetic demo collection (BEIR layout + kb.jsonl) deterministically.

Example:
    radcot make-world --out data/demo
    radcot make-world --out /tmp/tiny --scale 0.1 --seed 7
"""
from __future__ import annotations

import json

from radcot.cli._args import ArgumentParser, non_negative_int, positive_float, positive_int


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="radcot make-world",
        description="Generate a synthetic world of invented entities (passages, queries with a vocabulary "
                    "mismatch, graded qrels, knowledge base) in BEIR layout. Same seed and sizes -> same bytes.")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--seed", type=non_negative_int, default=13, help="random seed (default 13, the shipped data/demo)")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply the entity counts (1.0: ~5.4k passages, ~2k train / 200 test queries)")
    parser.add_argument("--n-test", type=positive_int, default=200, help="test queries (one per held-out fact)")
    parser.add_argument("--train-paraphrases", type=positive_int, default=1,
                        help="training queries per non-test fact (distinct wordings)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if an earlier make-world wrote it (other directories are never replaced)")
    parser.add_argument("--no-overwrite", action="store_true", help="fail if --out exists (the default now)")
    args = parser.parse_args(argv)

    from radcot.cli._args import check_output
    from radcot.demo.world import make_world
    from radcot.locks import output_lock

    overwrite = args.overwrite and not args.no_overwrite
    check_output(args.out, overwrite, "world directory", own_files=("MANIFEST.json",))
    with output_lock(args.out, "world directory"):
        manifest = make_world(args.out, seed=args.seed, scale=args.scale, overwrite=True,
                              n_test=args.n_test, train_paraphrases=args.train_paraphrases)
    print(json.dumps({"out": args.out, **manifest["sizes"]}, indent=2))
    return 0
