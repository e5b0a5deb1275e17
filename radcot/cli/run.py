"""``radcot run pipelines/X.yaml``: run an experiment with its stage cache, then print its table."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="radcot run", description=(
        "Run a declarative pipeline: each stage is cached under RUNS_DIR/<experiment>/<stage>-<hash>/, so a "
        "re-run redoes only what changed and a crashed run resumes. Prints the results table at the end."))
    ap.add_argument("pipeline", help="a pipeline file, e.g. pipelines/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (YAML-parsed), e.g. --set student.train.max_steps=50 "
                         "--set params.data=/data/vaswani; repeatable")
    ap.add_argument("--runs-dir", default=None, help="parent of the experiment directory (default: runs, or "
                                                     "$RADCOT_RUNS_DIR)")
    ap.add_argument("--rows", nargs="+", default=None, help="run only these rows")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="table format")
    ap.add_argument("--no-report", action="store_true", help="skip the Markdown report and its PNG plots")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--rehearse", action="store_true",
                    help="MS MARCO configs: run offline in miniature (stand-in data, teacher server and students; "
                         "each swap logged) to check the whole path before renting a GPU")
    args = ap.parse_args(argv)

    from radcot.pipeline import run_pipeline
    from radcot.report import format_table, results_table, write_report

    if args.rehearse:
        from radcot.rehearse import run_rehearsal as run_pipeline  # noqa: F811 - same signature
    exp_dir = run_pipeline(args.pipeline, args.overrides, runs_dir=args.runs_dir, rows=args.rows,
                           show_progress=False if args.no_progress else None)
    table = results_table(exp_dir, rows=args.rows)
    print(format_table(table, args.format))
    if not args.no_report:
        print(f"report: {write_report(exp_dir, table)}")
    return 0
