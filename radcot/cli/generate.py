"""``radcot generate``: write CoTs with a trained student (teacher-format JSONL, resumable).

By default the student runs as it was evaluated: its recorded index, passages per query, decoding and template
(see :mod:`radcot.student.generate`); flags given here override them.
"""
from __future__ import annotations

from radcot.cli._args import (
    ArgumentParser,
    check_resumable,
    in_range,
    non_negative_int,
    positive_float,
    positive_int,
)
from radcot.cli._removed import add_removed

_top_p = in_range(0.0, 1.0, lo_open=True)
_STUDENT = " (default: the student's)"


def _preset_names() -> list[str]:
    from radcot.demo.preset import PRESETS

    return sorted(PRESETS)


def _apply_preset(p, argv) -> None:
    """Make ``--preset NAME``'s decoding settings the defaults of their flags (flags given still win)."""
    known, _ = p.parse_known_args(argv)
    if known.preset:
        from radcot.demo.preset import get_preset

        p.set_defaults(**get_preset(known.preset).generate)


def _parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="radcot generate",
        description="Generate a chain of thought per query with a FiD student; writes the teacher's JSONL format "
                    "(query_id, query, text, ...), which radcot expand reads. Resumes an interrupted output. The "
                    "student's recorded index, passages per query, decoding and input template are used unless "
                    "given here.")
    p.add_argument("--student", required=True, help="the student: a radcot train --out directory (its best/ is used), "
                                                     "a checkpoint, or a pipeline row's student directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a distillation dataset (its stored passages are used)")
    src.add_argument("--queries", help="queries file (BEIR dir, jsonl, TSV, TREC topics)")
    p.add_argument("--split", default="all", choices=["all", "train", "dev"], help="split of --data (default all)")
    p.add_argument("--index", help="the BM25/dense index for --queries' passages (default: the index the student "
                                   "records; another kind or collection is refused unless --force-index)")
    p.add_argument("--dense-index", help="a fused (BM25 + dense) student's dense index, with --index as its BM25 one")
    p.add_argument("--force-index", action="store_true",
                   help="use --index even if it is not the kind or collection the student was trained on")
    p.add_argument("--n-context", type=positive_int, metavar="N",
                   help="passages per query (default: the student's inference n_context, else its training one)")
    p.add_argument("--k", type=positive_int, dest="k_alias", metavar="N", help="older name of --n-context")
    p.add_argument("--template", help="input template name or text" + _STUDENT)
    p.add_argument("--out", required=True, metavar="COT.jsonl", help="output JSONL")
    p.add_argument("--max-new-tokens", type=positive_int,
                   help="tokens per CoT (default: the student's, else 150, the teacher's length; the original RADCoT "
                        "used 50)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="queries per batch (default 16)")
    p.add_argument("--num-beams", type=positive_int, help="beam size (default: the student's, else 1: greedy)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding (each query "
                                                            "from its own seed: resumed runs sample the same)")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (with --do-sample)")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling p (with --do-sample)")
    p.add_argument("--num-return-sequences", type=positive_int, default=1,
                   help="sequences per query (record 'texts'; 'text' is the first)")
    p.add_argument("--no-repeat-ngram-size", type=non_negative_int,
                   help="forbid repeating any n-gram of this size (0: off; 3 stops tiny students looping)" + _STUDENT)
    p.add_argument("--repetition-penalty", type=positive_float,
                   help="transformers' repetition penalty (1.0: off)" + _STUDENT)
    add_removed(p, "--copy-bias", "the copy-bias decoding lever was measured and dropped (it lowered nDCG@10 "
                "on held-out training queries, eval/demo-ablations.md); students that must copy get a copy "
                "mechanism in their model class instead (radcot.student.hooks)")
    p.add_argument("--preset", choices=_preset_names(), default=None,
                   help="decoding settings of a named student preset (demo: --max-new-tokens 64 --batch-size 32 "
                        "--no-repeat-ngram-size 3, as pipelines/demo.yaml); flags given override them")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--limit", type=positive_int, help="only the first N queries")
    p.add_argument("--on-train-overlap", choices=["warn", "error"], default="warn",
                   help="when --queries include the student's training or dev queries: warn (default) or refuse")
    p.add_argument("--overwrite", action="store_true", help="start --out again instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    _apply_preset(p, argv)
    args = p.parse_args(argv)
    if args.k_alias is not None and args.n_context is not None and args.k_alias != args.n_context:
        p.error(f"--k is the older name of --n-context: give one (got --k {args.k_alias}, --n-context {args.n_context})")
    if args.data and (args.index or args.dense_index):
        p.error("--index/--dense-index retrieve passages for --queries; --data brings its own passages")
    if args.dense_index and not args.index:
        p.error("--dense-index needs --index (the fused student's BM25 index)")
    from radcot.student.generate import check_generate_options  # light: no torch

    given = {"do_sample": args.do_sample, "num_return_sequences": args.num_return_sequences,
             "num_beams": args.num_beams}
    for problem in check_generate_options({k: v for k, v in given.items() if v is not None})[:1]:
        p.error(problem.replace("num_beams", "--num-beams").replace("num_return_sequences", "--num-return-sequences")
                .replace("do_sample", "--do-sample"))
    check_resumable(args.out, "student output")  # resumed, or replaced with --overwrite, only if radcot wrote it
    from radcot.locks import output_lock

    # fail at once if busy, before loading the student, and hold the lock until generate_cots is done (it
    # inherits it): released in between, a second process could take the output between the check and the run
    with output_lock(args.out, "student output", inherit=True):
        return _run(args)


def _run(args) -> int:
    from radcot.student.generate import generate_cots

    index = {"bm25": args.index, "dense": args.dense_index} if args.dense_index else args.index
    out = generate_cots(args.student, args.out, data=args.data, split=args.split, queries=args.queries,
                        retriever=index, n_context=args.n_context or args.k_alias, template=args.template,
                        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, num_beams=args.num_beams,
                        do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                        num_return_sequences=args.num_return_sequences,
                        no_repeat_ngram_size=args.no_repeat_ngram_size, repetition_penalty=args.repetition_penalty,
                        seed=args.seed, device=args.device, overwrite=args.overwrite,
                        limit=args.limit, force_index=args.force_index, on_train_overlap=args.on_train_overlap,
                        show_progress=False if args.no_progress else None)
    print(out)
    return 0
