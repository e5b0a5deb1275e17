"""Tables from real run files on the demo world's qrels: gap closed, LaTeX/CSV, reference rows, plots."""
from __future__ import annotations

import csv
import io
import json
import random
import sys
from pathlib import Path

import pytest

from radcot.data.readers import read_qrels, write_run
from radcot.records import RadcotError
from radcot.report import format_table, gap_closed, load_reference, results_table, write_report

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def _qrels() -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for q in read_qrels(DEMO / "qrels" / "test.tsv"):
        out.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    return out


def _run(qrels, share: float, seed: int) -> dict:
    """A run that ranks the judged passages first for ``share`` of the queries, random passages otherwise."""
    rng = random.Random(seed)
    pool = sorted({d for docs in qrels.values() for d in docs})
    run = {}
    for qid, docs in qrels.items():
        ranked = sorted(docs, key=lambda d: -docs[d]) if rng.random() < share else []
        ranked += [d for d in rng.sample(pool, 30) if d not in ranked]
        run[qid] = {d: 100.0 - i for i, d in enumerate(ranked[:20])}
    return run


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment directory as the pipeline writes it (manifest + TREC runs), with a dataset that has
    reference rows (vaswani) so the tables show them."""
    exp = tmp_path_factory.mktemp("runs") / "demo"
    exp.mkdir()
    qrels = _qrels()
    rows = [("bm25", "BM25", "bm25", 0.2), ("teacher-cot", "teacher", "cots", 0.8),
            ("radcot", "RADCoT", "student", 0.5), ("rm3", "RM3", "bm25", 0.25)]
    manifest_rows = []
    for i, (name, label, kind, share) in enumerate(rows):
        write_run(_run(qrels, share, seed=i), exp / f"{name}.trec", tag=name)
        manifest_rows.append({"name": name, "label": label, "kind": kind, "run": str(exp / f"{name}.trec")})
    config_rows = [{"name": "bm25"}, {"name": "teacher-cot", "cots": "teacher"}, {"name": "radcot", "student": {}},
                   {"name": "rm3", "rm3": True}]
    manifest = {"experiment": "demo", "inputs": {"dataset": "vaswani", "qrels": str(DEMO / "qrels" / "test.tsv")},
                "evaluation": {"metrics": ["nDCG@10", "RR@10", "AP"], "baseline": "bm25"},
                "config": {"rows": config_rows}, "rows": manifest_rows, "stages": {}}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    return exp, qrels


def _ir_measures(qrels, run_file, metric):
    import ir_measures

    from radcot.data.readers import read_run

    return ir_measures.calc_aggregate([ir_measures.parse_measure(metric)], qrels, read_run(run_file))[
        ir_measures.parse_measure(metric)]


def test_gap_closed_matches_ir_measures(experiment):
    exp, qrels = experiment
    table = results_table(exp)
    assert table.teacher == "teacher-cot"
    nd = {n: _ir_measures(qrels, exp / f"{n}.trec", "nDCG@10") for n in ("bm25", "teacher-cot", "radcot")}
    expect = (nd["radcot"] - nd["bm25"]) / (nd["teacher-cot"] - nd["bm25"])
    assert table.row("radcot").gap["nDCG@10"] == pytest.approx(expect, abs=1e-9)
    assert 0.2 < expect < 0.8  # the fixture's student keeps part of the gain
    assert table.row("teacher-cot").gap["nDCG@10"] == pytest.approx(1.0)
    assert table.row("rm3").gap == {} and table.row("bm25").gap == {}  # rows that do not expand queries


def test_gap_closed_function_and_teacher_override(experiment):
    exp, _ = experiment
    assert gap_closed(0.2384, 0.2040, 0.5240) == pytest.approx(0.1075, abs=1e-4)
    assert gap_closed(0.3, 0.2, 0.2) is None
    t = results_table(exp, teacher="radcot")
    assert t.teacher == "radcot" and t.row("radcot").gap["nDCG@10"] == pytest.approx(1.0)
    with pytest.raises(RadcotError, match="teacher row 'nope'"):
        results_table(exp, teacher="nope")


def test_markdown_csv_latex_carry_gaps_and_references(experiment):
    exp, _ = experiment
    table = results_table(exp)
    md = format_table(table, "md")
    assert "gap closed nDCG@10" in md and f"{100 * table.row('radcot').gap['nDCG@10']:.1f}%" in md
    rows = list(csv.DictReader(io.StringIO(format_table(table, "csv"))))
    by = {r["name"]: r for r in rows}
    assert float(by["radcot"]["gap_closed_nDCG@10"]) == pytest.approx(table.row("radcot").gap["nDCG@10"], abs=1e-6)
    assert by["rm3"]["gap_closed_nDCG@10"] == "" and float(by["radcot"]["delta_AP"]) == pytest.approx(
        table.row("radcot").delta["AP"], abs=1e-6)
    latex = format_table(table, "latex")
    assert latex.startswith(r"\begin{tabular}") and r"\end{tabular}" in latex
    body = [line for line in latex.splitlines() if line.endswith(r"\\")]
    ncols = {line.count(" & ") for line in body if "multicolumn" not in line}
    assert ncols == {1 + 2 * len(table.metrics) - 1}  # every row has the same number of cells
    assert f"({table.row('radcot').delta['nDCG@10']:+.4f})" in latex  # deltas kept
    assert "BM25 (shared/data README)" in latex and "Reference" in latex  # reference rows kept
    assert "%" in latex.split("\\bottomrule")[0] and r"\%" in latex


def test_reference_ships_in_package_and_keys_are_metric_names():
    """The reference file is package data, and its metric keys are names ir-measures parses (the tables use them)."""
    import ir_measures
    from importlib import resources

    import yaml

    ref = resources.files("radcot").joinpath("reference.yaml")
    assert ref.is_file()
    data = yaml.safe_load(ref.read_text(encoding="utf-8"))
    pipelines = {}
    for path in (REPO / "pipelines").glob("*.yaml"):
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        pipelines[path.stem] = set((cfg.get("evaluation") or {}).get("metrics") or [])
    used = set().union(*pipelines.values())
    for name, spec in data["datasets"].items():
        assert load_reference(name) == spec["rows"]
        for row in spec["rows"]:
            for key in row["metrics"]:
                ir_measures.parse_measure(key)  # raises on a name the tables could not compute
                assert key in used, f"reference key {key} of {name} is a metric no pipeline computes"


def test_report_plots_without_switching_the_global_backend(experiment, tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib

    before = matplotlib.get_backend() if "matplotlib.pyplot" in sys.modules else None
    exp, _ = experiment
    path = write_report(exp, out_dir=tmp_path / "report")
    assert (tmp_path / "report" / "gap-closed.png").stat().st_size > 1000
    assert "gap closed" in path.read_text(encoding="utf-8")
    if before is None:
        assert "matplotlib.pyplot" not in sys.modules  # no pyplot import: no global backend choice
    else:
        assert matplotlib.get_backend() == before


def test_table_cli_formats_and_answers_error(experiment, capsys):
    from radcot.cli import main

    exp, _ = experiment
    assert main(["table", str(exp), "--format", "latex", "--report", "none", "--teacher", "teacher-cot"]) == 0
    assert r"\begin{tabular}" in capsys.readouterr().out
    assert main(["table", str(exp), "--format", "csv", "--report", "none"]) == 0
    assert "gap_closed_nDCG@10" in capsys.readouterr().out
    # the fixture has run files but no CoT files: --answers says so in one line, no traceback
    assert main(["table", str(exp), "--answers", "--report", "none"]) == 1
    err = capsys.readouterr().err
    assert "no teacher row with CoTs" in err and "Traceback" not in err


def test_report_adds_the_sections_its_caller_hands_it_and_knows_no_demo(experiment, tmp_path):
    """`radcot table --answers` computes the demo's answer rates itself and hands the report their text: the
    report module imports no demo/analysis code (the old analysis <-> report import circle)."""
    import ast

    pytest.importorskip("matplotlib")
    exp, _ = experiment
    section = "How often each row's CoTs contain the teacher's answer:\n\n| row | x | y |\n|---|---|---|\n"
    md = write_report(exp, out_dir=tmp_path / "md", sections=[section]).read_text(encoding="utf-8")
    assert section in md and md.index("gap closed") < md.index(section)
    assert "teacher&#x27;s answer" in write_report(exp, fmt="html", out_dir=tmp_path / "html",
                                                   sections=[section]).read_text(encoding="utf-8")
    tree = ast.parse((REPO / "radcot" / "report.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m and (m.startswith("radcot.demo") or m == "radcot.analysis")}
