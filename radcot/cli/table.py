"""``radcot table runs/<experiment>``: the results table (from the run files on disk) and a report."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="radcot table", description=(
        "Score every row of an experiment from its run files, with deltas and paired t-tests (p < 0.05 marked "
        "†) against a baseline row, the gap closed towards the teacher row, and write a report with PNG plots."))
    ap.add_argument("experiment", help="an experiment directory, e.g. runs/demo")
    ap.add_argument("--baseline", default=None, help="baseline row name (default: the pipeline's, usually bm25)")
    ap.add_argument("--teacher", default=None, help="teacher row for the gap-closed columns (default: "
                    "evaluation.teacher_row, else the row with cots: teacher)")
    ap.add_argument("--metrics", nargs="+", default=None, help="ir-measures names (default: the pipeline's)")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    ap.add_argument("--answers", action="store_true", help="also print how often each row's CoTs contain the "
                    "teacher's answer (needs a teacher output with 'Answer:')")
    ap.add_argument("--world", default=None, help="with --answers: a demo world directory whose fact objects are "
                    "the exact answers (e.g. data/demo)")
    ap.add_argument("--report", choices=("md", "html", "none"), default="md", help="report format (default md)")
    ap.add_argument("--out", default=None, help="report directory (default: EXPERIMENT/report)")
    args = ap.parse_args(argv)

    from radcot.report import format_table, results_table, write_report

    table = results_table(args.experiment, baseline=args.baseline, metrics=args.metrics, teacher=args.teacher)
    print(format_table(table, args.format), end="")
    sections = []
    if args.answers:
        from radcot.demo.answers import experiment_answer_rates, format_answer_rates

        rates = experiment_answer_rates(args.experiment, teacher_row=args.teacher, world=args.world)
        print("\n" + format_answer_rates(rates), end="")
        sections.append("How often each row's CoTs contain the teacher's answer:\n\n" + format_answer_rates(rates))
    if args.report != "none":
        path = write_report(args.experiment, table, fmt=args.report, out_dir=args.out, sections=sections)
        print(f"report: {path}")
    return 0
