"""``radcot run pipelines/X.yaml``: run an experiment with its stage cache, then print its table."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="radcot run", description=(
        "Run a declarative pipeline: each stage is cached under RUNS_DIR/<experiment>/<stage>-<hash>/ (shared "
        "stages under RUNS_DIR/_shared/), so a re-run redoes only what changed and a crashed run resumes. The "
        "config is validated and a preflight checks models, data and endpoints before any stage runs. Prints "
        "the results table at the end."))
    ap.add_argument("pipeline", nargs="?", help="a pipeline file, e.g. pipelines/demo.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (YAML-parsed), e.g. --set student.train.max_steps=50 "
                         "--set params.data=/data/vaswani --set rows.radcot-small.student.model=DIR (list items "
                         "by index or row name); repeatable")
    ap.add_argument("--runs-dir", default=None, help="parent of the experiment directory (default: runs, or "
                                                     "$RADCOT_RUNS_DIR)")
    ap.add_argument("--rows", nargs="+", default=None, help="run only these rows (the baseline row is added)")
    ap.add_argument("--check", action="store_true", help="only validate the config and run the preflight "
                                                         "(exit 0: ready, 1: problems listed; without --check a "
                                                         "config mistake exits 2)")
    ap.add_argument("--schema", action="store_true", help="print the config reference (Markdown) and exit")
    ap.add_argument("--format", choices=("md", "latex", "csv"), default="md", help="table format")
    ap.add_argument("--no-report", action="store_true", help="skip the Markdown report and its PNG plots")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--rehearse", action="store_true",
                    help="MS MARCO configs: run offline in miniature (stand-in data, teacher server and students; "
                         "each swap logged) to check the whole path before renting a GPU")
    return ap


def _check(pipeline, rows) -> int:
    import time

    from radcot.pipeline import format_problems

    t0 = time.perf_counter()
    problems = pipeline.check(rows)
    if problems:
        print(format_problems(pipeline.source, problems, "preflight"), file=sys.stderr)
        return 1
    print(f"{pipeline.source}: config valid, preflight passed ({time.perf_counter() - t0:.1f} s)")
    return 0


def _run(pipeline, args, rows):
    """Run (or rehearse) the pipeline; returns the experiment directory."""
    if args.rehearse:
        from radcot.rehearse import run_rehearsal

        return run_rehearsal(args.pipeline, args.overrides, runs_dir=args.runs_dir, rows=rows,
                             show_progress=False if args.no_progress else None)
    return pipeline.run(rows=args.rows)


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.schema:
        from radcot.experiment.schema import reference_markdown

        print(reference_markdown())
        return 0
    if not args.pipeline:
        ap.error("the pipeline file is required (e.g. radcot run pipelines/demo.yaml)")

    from radcot.pipeline import Pipeline, PipelineError
    from radcot.report import format_table, results_table, write_report

    try:
        pipeline = Pipeline.from_yaml(args.pipeline, args.overrides, runs_dir=args.runs_dir,
                                      show_progress=False if args.no_progress else None)
    except PipelineError as e:  # a config mistake: exit 2 like any usage error (1 under --check: "problems")
        print(f"radcot run: error: {e}", file=sys.stderr)
        return 1 if args.check else 2
    rows = pipeline.select_rows(args.rows)
    if args.check and not args.rehearse:
        return _check(pipeline, args.rows)
    try:
        exp_dir = _run(pipeline, args, rows)
    except PipelineError as e:  # the preflight's problems, one per line (not folded into one line)
        print(f"radcot run: error: {e}", file=sys.stderr)
        return 1
    table = results_table(exp_dir, rows=rows)
    print(format_table(table, args.format))
    if not args.no_report:
        print(f"report: {write_report(exp_dir, table)}", file=sys.stderr)
    return 0
