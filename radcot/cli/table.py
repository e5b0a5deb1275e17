"""``radcot table runs/<experiment>``: the results table (from the run files on disk) and a report.

stdout carries the table and nothing else (``radcot table E --format csv > table.csv`` is a clean CSV);
the report's path and every note go to stderr.
"""
from __future__ import annotations

import argparse
import sys

from radcot.cli._args import ArgumentParser


def _metric(name: str) -> str:
    """argparse type: an ir-measures name (an unknown one is a usage error, exit 2); kept as spelled, the
    table prints it canonically."""
    from radcot.evaluation import canonical_measure
    from radcot.records import RadcotError

    try:
        canonical_measure(name)
    except RadcotError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="radcot table", description=(
        "Score every row of an experiment from its run files, with deltas and paired t-tests (p < 0.05 marked "
        "†) against a baseline row, the gap closed towards the teacher row, and write a report with PNG plots "
        "and training curves. stdout carries only the table; the report's path goes to stderr."))
    ap.add_argument("experiment", help="an experiment directory, e.g. runs/demo")
    ap.add_argument("--baseline", default=None, help="baseline row name (default: the pipeline's, usually bm25)")
    ap.add_argument("--teacher", default=None, help="teacher row for the gap-closed columns (default: "
                    "evaluation.teacher_row, else the row with cots: teacher)")
    ap.add_argument("--metrics", nargs="+", type=_metric, default=None,
                    help="ir-measures names (default: the pipeline's); aliases such as MRR@10 are printed under "
                         "their canonical name (RR@10)")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="table format on stdout")
    ap.add_argument("--answers", action="store_true", help="also print how often each row's CoTs contain the "
                    "teacher's answer (needs a teacher output with 'Answer:')")
    ap.add_argument("--world", default=None, help="with --answers: a demo world directory whose fact objects are "
                    "the exact answers (e.g. data/demo)")
    ap.add_argument("--report", choices=("md", "html", "none"), default="md", help="report format (default md)")
    ap.add_argument("--out", default=None, help="report directory (default: EXPERIMENT/report); files radcot did "
                    "not write there are never replaced")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.out is not None and args.report == "none":
        ap.error("--out names the report directory, but --report none writes no report: drop one of them")

    from radcot.report import format_table, results_table

    table = results_table(args.experiment, baseline=args.baseline, metrics=args.metrics, teacher=args.teacher)
    print(format_table(table, args.format), end="")
    sections = []
    if args.answers:
        from radcot.demo.answers import experiment_answer_rates, format_answer_rates

        rates = experiment_answer_rates(args.experiment, teacher_row=args.teacher, world=args.world)
        # beside a Markdown table on stdout; with --format csv/latex stdout stays the table alone
        print("\n" + format_answer_rates(rates), end="", file=sys.stdout if args.format == "md" else sys.stderr)
        sections.append("How often each row's CoTs contain the teacher's answer:\n\n" + format_answer_rates(rates))
    if args.report != "none":
        path = _write_report(args, table, sections)
        print(f"report: {path}", file=sys.stderr)
    return 0


def _write_report(args, table, sections):
    """The report, replacing only files radcot marked as its own (or the experiment's own report directory)."""
    from radcot.cli._args import mark_output, written_by_radcot
    from radcot.report import write_report

    return write_report(args.experiment, table, fmt=args.report, out_dir=args.out, sections=sections,
                        may_replace=written_by_radcot,
                        on_written=lambda p: mark_output(p, "table"))
