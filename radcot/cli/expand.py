"""``radcot expand``: expand queries with CoTs (a file, a teacher or a trained student) into a TSV.

Examples:
    radcot expand --cots runs/kb-cots.jsonl --queries data/demo/queries.test.tsv --out expanded.tsv
    radcot expand --student runs/demo/students/radcot --queries Q --out expanded.tsv   # its recorded index, decoding
    radcot expand --teacher kb --world data/demo --queries Q --out expanded.tsv --formula query2doc

The output (``qid \\t expanded text``) is what ``radcot search --expansions`` reads. With ``--samples m``
it writes ``m`` files, ``OUT`` for the first sample and ``OUT.sample2.tsv``... for the others.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from radcot.cli._args import ArgumentParser, check_output, fraction, mark_output, positive_int
from radcot.expansion import FORMULAS

logger = logging.getLogger("radcot.expand")


def _kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            from radcot.records import RadcotError

            raise RadcotError(f"--teacher-option {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        prog="radcot expand",
        description="Expand queries with chains of thought using the radcot/query2doc/dense formulas; "
                    "queries with no usable CoT keep their text (the count is logged).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--cots", nargs="+", metavar="FILE",
                     help="CoT file(s): radcot teacher/student JSONL, 'qid<TAB>text' TSV or the official davinci "
                          "TSV; several files = several samples per query")
    src.add_argument("--student", metavar="RUN_DIR",
                     help="a trained student run directory (RUN_DIR or RUN_DIR/best; RADCoT students need --index)")
    src.add_argument("--teacher", metavar="BACKEND", help="a teacher backend name (kb, openai, hf, replay)")
    parser.add_argument("--queries", required=True, help="queries: BEIR dir, queries.jsonl, qid<TAB>text or TREC topics")
    parser.add_argument("--out", required=True, help="output TSV: qid<TAB>expanded text")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if an earlier radcot expand wrote it")
    parser.add_argument("--formula", default=None, choices=list(FORMULAS),
                        help="expansion formula (default: a student's recorded one, else radcot: "
                             "(q+' ')*max(5,len(cot)//len(q)) + ' ' + cot)")
    parser.add_argument("--samples", type=positive_int, default=1, help="CoT samples per query (default 1)")
    parser.add_argument("--index", help="index of the student's passages (default: the one its profile records; "
                                         "another kind or collection is refused unless --force-index)")
    parser.add_argument("--force-index", action="store_true",
                        help="use --index even when it is not the index the student was trained on")
    parser.add_argument("--k", type=positive_int, default=None, help="passages per query for the student (default: its config)")
    parser.add_argument("--world", help="world directory for --teacher kb")
    parser.add_argument("--teacher-option", action="append", default=[], metavar="KEY=VALUE",
                        help="extra teacher backend argument (repeatable), e.g. base_url=http://127.0.0.1:8000/v1")
    parser.add_argument("--prompt", default="radcot", help="teacher prompt name or template (default radcot)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, help="student/teacher generation length")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="student generation batch size")
    parser.add_argument("--max-unexpanded-fraction", type=fraction, default=0.5,
                        help="fail (exit 1, nothing written) when more than this share of the queries gets no "
                             "usable CoT (default 0.5; 1.0 never fails unless none at all is expanded)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    paths = [out] + [out.with_name(f"{out.stem}.sample{i + 1}{out.suffix or '.tsv'}") for i in range(1, args.samples)]
    for p in paths:
        check_output(p, args.overwrite, "expansions file")
    from radcot.locks import output_lock

    with output_lock(out, "expansions file"):
        sets, n_queries, n_missing = _expand(args)
        for p, expanded in zip(paths, sets):
            write_expansions(p, expanded)
    print(json.dumps({"queries": n_queries, "expanded": n_queries - n_missing, "unexpanded": n_missing,
                      "formula": args.formula, "out": [str(p) for p in paths[:len(sets)]]}))
    return 0


def write_expansions(path: Path, expanded: dict) -> None:
    from radcot.expansion import write_expansions as write

    write(expanded, path)
    mark_output(path, "expand")


def _source(args):
    """What the expander reads CoTs from (a file, a student run or a teacher backend) and its options."""
    retriever = None
    gen_kwargs: dict = {}
    params = None
    if args.student:
        from radcot.student.profile import StudentProfile

        # the recorded index, or --index checked against it; None for a no-context student (or one that
        # records none: generation then says that it needs --index)
        retriever = StudentProfile.load(args.student).open_retriever(args.index, force=args.force_index)
        if args.k is not None:
            gen_kwargs["k"] = args.k
        if args.max_new_tokens is not None:
            gen_kwargs["max_new_tokens"] = args.max_new_tokens
        if args.batch_size is not None:
            gen_kwargs["batch_size"] = args.batch_size
        source = args.student
    elif args.teacher:
        from radcot.teacher import get_backend
        from radcot.teacher.base import GenerationParams

        opts = _kv(args.teacher_option)
        if args.world:
            opts["world"] = args.world
        source = get_backend(args.teacher, **opts)
        if args.max_new_tokens is not None:
            params = GenerationParams(max_tokens=args.max_new_tokens)
    else:
        source = args.cots if len(args.cots) > 1 else args.cots[0]
    return source, retriever, gen_kwargs, params


def _expand(args) -> tuple[list[dict], int, int]:
    """The expansion sets, the number of queries and of queries left unexpanded (too many is an error)."""
    from radcot.data.readers import read_queries
    from radcot.expansion import QueryExpander
    from radcot.records import RadcotError

    queries = read_queries(args.queries)
    if not queries:
        raise RadcotError(f"{args.queries} holds no queries; nothing to expand")
    source, retriever, gen_kwargs, params = _source(args)
    if args.formula is None:
        args.formula = "radcot"
        if args.student:
            from radcot.student.profile import StudentProfile

            args.formula = StudentProfile.load(args.student).inference.formula
    expander = QueryExpander(source, formula=args.formula, samples=args.samples, prompt=args.prompt,
                             params=params, retriever=retriever, generate_kwargs=gen_kwargs)
    try:
        sets = expander.expand_samples(queries)
    finally:
        if expander.backend is not None:
            expander.backend.close()
    n_missing = len(expander.last_missing)
    too_many = n_missing == len(queries) or n_missing > args.max_unexpanded_fraction * len(queries)
    if args.formula != "none" and too_many:
        raise RadcotError(f"{n_missing} of {len(queries)} queries got no usable CoT from {_describe(args)} (more "
                          f"than --max-unexpanded-fraction {args.max_unexpanded_fraction}); {args.out} not written. "
                          f"Check that the CoTs cover these queries (same query ids), or pass "
                          f"--max-unexpanded-fraction 1.0")
    return sets, len(queries), n_missing


def _describe(args) -> str:
    if args.cots:
        return " ".join(args.cots)
    return f"student {args.student}" if args.student else f"teacher {args.teacher}"
