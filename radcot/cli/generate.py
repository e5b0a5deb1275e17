"""``radcot generate``: write CoTs with a trained student (teacher-format JSONL, resumable)."""
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


def _preset_names() -> list[str]:
    from radcot.demo.preset import PRESETS

    return sorted(PRESETS)


def _apply_preset(p, argv) -> None:
    """Make ``--preset NAME``'s decoding settings the defaults of their flags (flags given still win)."""
    known, _ = p.parse_known_args(argv)
    if known.preset:
        from radcot.demo.preset import get_preset

        p.set_defaults(**get_preset(known.preset).generate)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(
        prog="radcot generate",
        description="Generate a chain of thought per query with a FiD student; writes the teacher's JSONL format "
                    "(query_id, query, text, ...), which radcot expand reads. Resumes an interrupted output.")
    p.add_argument("--student", required=True, help="the student directory (RUN_DIR/best)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="a distillation dataset (its stored passages are used)")
    src.add_argument("--queries", help="queries file (BEIR dir, jsonl, TSV, TREC topics); needs --index unless no-context")
    p.add_argument("--split", default="all", choices=["all", "train", "dev"], help="split of --data (default all)")
    p.add_argument("--index", help="BM25/dense index directory to retrieve passages for --queries")
    p.add_argument("--k", type=positive_int, help="passages per query (default: the student's n_context)")
    p.add_argument("--out", required=True, metavar="COT.jsonl", help="output JSONL")
    p.add_argument("--max-new-tokens", type=positive_int, default=150,
                   help="tokens per CoT (default 150, the teacher's length; the original RADCoT used 50)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="queries per batch (default 16)")
    p.add_argument("--num-beams", type=positive_int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature (with --do-sample)")
    p.add_argument("--top-p", type=_top_p, default=1.0, help="nucleus sampling p (with --do-sample)")
    p.add_argument("--num-return-sequences", type=positive_int, default=1,
                   help="sequences per query (record 'texts'; 'text' is the first)")
    p.add_argument("--no-repeat-ngram-size", type=non_negative_int, default=0,
                   help="forbid repeating any n-gram of this size (default 0: off; 3 stops tiny students looping)")
    p.add_argument("--repetition-penalty", type=positive_float, default=1.0, help="transformers' repetition penalty (1.0: off)")
    add_removed(p, "--copy-bias", "the copy-bias decoding lever was measured and dropped (it lowered nDCG@10 "
                "on held-out training queries, eval/demo-ablations.md); students that must copy get a copy "
                "mechanism in their model class instead (radcot.student.hooks)")
    p.add_argument("--preset", choices=_preset_names(), default=None,
                   help="decoding settings of a named student preset (demo: --max-new-tokens 64 --batch-size 32 "
                        "--no-repeat-ngram-size 3, as pipelines/demo.yaml); flags given override them")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--limit", type=positive_int, help="only the first N queries")
    p.add_argument("--overwrite", action="store_true", help="start --out again instead of resuming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _apply_preset(p, argv)
    args = p.parse_args(argv)
    if not args.do_sample and args.num_return_sequences > args.num_beams:
        p.error(f"--num-return-sequences {args.num_return_sequences} needs --num-beams >= it, or --do-sample")
    check_resumable(args.out, "student output")  # resumed, or replaced with --overwrite, only if radcot wrote it
    from radcot.locks import output_lock

    # fail at once if busy, before loading the student, and hold the lock until generate_cots is done (it
    # inherits it): released in between, a second process could take the output between the check and the run
    with output_lock(args.out, "student output", inherit=True):
        return _run(args, p)


def _run(args, p) -> int:
    from radcot.student.generate import generate_cots
    from radcot.student.model import FiDStudent

    student = FiDStudent.from_pretrained(args.student)
    if args.queries and not student.fid_config.no_context and not args.index:
        p.error("this student reads retrieved passages: --queries needs --index")
    out = generate_cots(student, args.out, data=args.data, split=args.split, queries=args.queries,
                        retriever=args.index, k=args.k, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, num_beams=args.num_beams, do_sample=args.do_sample,
                        temperature=args.temperature, top_p=args.top_p,
                        num_return_sequences=args.num_return_sequences,
                        no_repeat_ngram_size=args.no_repeat_ngram_size,
                        repetition_penalty=args.repetition_penalty, seed=args.seed, device=args.device,
                        overwrite=args.overwrite, limit=args.limit,
                        show_progress=False if args.no_progress else None)
    print(out)
    return 0
