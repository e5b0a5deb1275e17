"""``radcot build-data``: join queries, their top-k passages and teacher CoTs into a distillation dataset."""
from __future__ import annotations

from radcot.cli._args import ArgumentParser, check_output, in_range, non_negative_int, positive_int


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="radcot build-data",
        description="Join each query with its top-k retrieved passages and its teacher CoT into an HF dataset "
                    "(train/dev, Arrow) for student training. Queries whose teacher output failed or is empty "
                    "are excluded and listed in OUT/excluded.tsv.")
    p.add_argument("--queries", required=True, help="training queries: BEIR dir, queries.jsonl, qid<TAB>text TSV or TREC topics")
    p.add_argument("--teacher-out", required=True, metavar="COT.jsonl",
                   help="teacher output (radcot teach JSONL, or qid<TAB>[query<TAB>]cot TSV)")
    p.add_argument("--index", help="BM25 or dense index directory (radcot index); not needed with --no-context")
    p.add_argument("--k", type=positive_int, default=10, help="passages per query (default 10)")
    p.add_argument("--out", required=True, help="output directory (written atomically)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if an earlier radcot build-data wrote it (a directory radcot did not write is "
                        "never replaced)")
    p.add_argument("--no-context", action="store_true",
                   help="ablation: distillation without retrieval (the student sees only the query)")
    p.add_argument("--dev-fraction", type=in_range(0.0, 1.0, hi_open=True), default=0.1,
                   help="share of queries held out as the dev split (default 0.1; 0: no dev split, training "
                        "then keeps its final checkpoint)")
    p.add_argument("--dev-queries", help="queries file whose ids form the dev split (instead of --dev-fraction); "
                                         "they must be among --queries")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the dev split (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if not args.no_context and not args.index:
        p.error("--index is required (or pass --no-context for the ablation without retrieval)")

    from radcot.locks import output_lock
    from radcot.student.data import EXCLUDED_FILE, META_FILE, build_distillation_data, load_distillation_data

    check_output(args.out, args.overwrite, "distillation data directory", own_files=(META_FILE, EXCLUDED_FILE))
    with output_lock(args.out, "distillation data directory"):
        out = build_distillation_data(args.queries, args.teacher_out, retriever=None if args.no_context else args.index,
                                      k=args.k, out_dir=args.out, no_context=args.no_context,
                                      dev_fraction=args.dev_fraction, dev_queries=args.dev_queries, seed=args.seed,
                                      show_progress=False if args.no_progress else None)
    _, meta = load_distillation_data(out)
    print(f"{out}: {meta['n_train']} train / {meta['n_dev']} dev examples, k={meta['k']}"
          f"{' (no context)' if meta['no_context'] else ''}; excluded {meta['n_excluded']} "
          f"{meta['excluded_by_reason'] or ''}")
    return 0
