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


def _noisy(run: dict, seed: int, share: float = 0.5) -> dict:
    """``run`` with two neighbouring passages among the top 6 swapped for ``share`` of the queries: noise."""
    rng = random.Random(seed)
    out = {}
    for qid, docs in run.items():
        ranked = sorted(docs, key=lambda d: -docs[d])
        if rng.random() < share:
            i = rng.randrange(0, 5)
            ranked[i], ranked[i + 1] = ranked[i + 1], ranked[i]
        out[qid] = {d: 100.0 - i for i, d in enumerate(ranked)}
    return out


CONFIG_ROWS = {"bm25": {"name": "bm25"}, "teacher-cot": {"name": "teacher-cot", "cots": "teacher"},
               "radcot": {"name": "radcot", "student": {}}, "rm3": {"name": "rm3", "rm3": True}}


def write_experiment(exp: Path, runs: list[tuple[str, str, str, dict]], dataset: str = "vaswani",
                     metrics: list[str] | None = None) -> Path:
    """An experiment directory as the pipeline writes it: TREC runs and a manifest over the demo qrels."""
    exp.mkdir(parents=True)
    manifest_rows = []
    for name, label, kind, run in runs:
        write_run(run, exp / f"{name}.trec", tag=name)
        manifest_rows.append({"name": name, "label": label, "kind": kind, "run": str(exp / f"{name}.trec")})
    manifest = {"experiment": exp.name, "inputs": {"dataset": dataset, "qrels": str(DEMO / "qrels" / "test.tsv")},
                "evaluation": {"metrics": metrics or ["nDCG@10", "RR@10", "AP"], "baseline": "bm25"},
                "config": {"rows": [CONFIG_ROWS[name] for name, *_ in runs]}, "rows": manifest_rows, "stages": {}}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    return exp


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """An experiment directory as the pipeline writes it (manifest + TREC runs), with a dataset that has
    reference rows (vaswani) so the tables show them."""
    qrels = _qrels()
    rows = [("bm25", "BM25", "bm25", 0.2), ("teacher-cot", "teacher", "cots", 0.8),
            ("radcot", "RADCoT", "student", 0.5), ("rm3", "RM3", "bm25", 0.25)]
    runs = [(name, label, kind, _run(qrels, share, seed=i)) for i, (name, label, kind, share) in enumerate(rows)]
    exp = write_experiment(tmp_path_factory.mktemp("runs") / "demo", runs)
    return exp, qrels


def _ir_measures(qrels, run_file, metric):
    import ir_measures

    from radcot.data.readers import read_run

    return ir_measures.calc_aggregate([ir_measures.parse_measure(metric)], qrels, read_run(run_file))[
        ir_measures.parse_measure(metric)]


@pytest.mark.fast
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


@pytest.mark.fast
def test_gap_closed_function_and_teacher_override(experiment):
    exp, _ = experiment
    assert gap_closed(0.2384, 0.2040, 0.5240) == pytest.approx(0.1075, abs=1e-4)
    assert gap_closed(0.3, 0.2, 0.2) is None
    t = results_table(exp, teacher="radcot")
    assert t.teacher == "radcot" and t.row("radcot").gap["nDCG@10"] == pytest.approx(1.0)
    with pytest.raises(RadcotError, match="teacher row 'nope'"):
        results_table(exp, teacher="nope")


@pytest.mark.fast
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
    assert "BM25 (radcot, pyserini 1.6.0, k1=0.9 b=0.4)" in latex and "Reference" in latex  # reference rows kept
    assert "%" in latex.split("\\bottomrule")[0] and r"\%" in latex


@pytest.mark.fast
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
        assert [r.label for r in load_reference(name)] == [r["label"] for r in spec["rows"]]
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


@pytest.mark.fast
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


# ------------------------------------------------------------------ canonical metric names (issue 22)

@pytest.mark.fast
def test_metric_aliases_work_end_to_end_and_print_canonically(experiment):
    """MRR@10, NDCG@10 and map are results_table's RR@10, nDCG@10 and AP: no KeyError, values as ir-measures
    computes them, each metric once, and the tables say which spelling became which."""
    exp, qrels = experiment
    table = results_table(exp, metrics=["NDCG@10", "MRR@10", "RR@10", "map"])
    assert table.metrics == ["nDCG@10", "RR@10", "AP"]
    assert table.aliases == {"NDCG@10": "nDCG@10", "MRR@10": "RR@10", "map": "AP"}
    for name in ("bm25", "radcot"):
        assert table.row(name).metrics["RR@10"] == pytest.approx(_ir_measures(qrels, exp / f"{name}.trec", "RR@10"))
    assert table.row("radcot").gap["RR@10"] is not None and "RR@10" in table.row("radcot").p_value
    md = format_table(table, "md")
    assert "| run | nDCG@10 | RR@10 | AP |" in md and "MRR@10 = RR@10" in md
    assert "RR@10" in format_table(table, "latex") and "gap_closed_RR@10" in format_table(table, "csv")


@pytest.mark.fast
def test_pipeline_metric_aliases_from_the_manifest(tmp_path):
    """A pipeline's evaluation.metrics: [NDCG@10, Recall@1000] (valid for the schema) make a table."""
    qrels = _qrels()
    exp = write_experiment(tmp_path / "aliases", [("bm25", "BM25", "bm25", _run(qrels, 0.2, 0)),
                                                  ("radcot", "RADCoT", "student", _run(qrels, 0.5, 1))],
                           metrics=["NDCG@10", "Recall@1000"])
    table = results_table(exp)
    assert table.metrics == ["nDCG@10", "R@1000"]
    assert table.row("radcot").metrics["R@1000"] == pytest.approx(_ir_measures(qrels, exp / "radcot.trec", "R@1000"))
    assert table.row("radcot").delta["nDCG@10"] > 0


@pytest.mark.fast
def test_table_cli_metric_aliases_and_unknown_metric(experiment, capsys):
    from radcot.cli import main

    exp, _ = experiment
    assert main(["table", str(exp), "--metrics", "MRR@10", "Recall@1000", "--format", "csv", "--report", "none"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[2:4] == ["RR@10", "R@1000"]
    with pytest.raises(SystemExit) as e:  # a usage error before any file is read, with a suggested spelling
        main(["table", str(exp), "--metrics", "ndcg@10"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown metric 'ndcg@10'" in err and "Did you mean 'nDCG@10'?" in err


# --------------------------------------------------------- gap closed of a teacher gain that is noise (#26)

@pytest.fixture(scope="module")
def noisy_teacher(tmp_path_factory):
    """The teacher row is the baseline plus noise (neighbouring passages swapped): its nDCG@10 is 0.0007
    below BM25 and its AP 0.0001 above (p = 0.77); the student is far above both."""
    qrels = _qrels()
    base = _run(qrels, 0.2, seed=0)
    runs = [("bm25", "BM25", "bm25", base), ("teacher-cot", "teacher", "cots", _noisy(base, seed=0)),
            ("radcot", "RADCoT", "student", _run(qrels, 0.5, seed=2)), ("rm3", "RM3", "bm25", _run(qrels, 0.25, 3))]
    return write_experiment(tmp_path_factory.mktemp("runs") / "noisy", runs, metrics=["nDCG@10", "AP"])


@pytest.mark.fast
def test_gap_closed_undefined_when_the_teacher_gain_is_noise(noisy_teacher):
    table = results_table(noisy_teacher)
    teacher = table.row("teacher-cot")
    assert teacher.delta["nDCG@10"] < 0 and 0 < teacher.delta["AP"] < 0.005 and teacher.p_value["AP"] > 0.5
    assert table.row("radcot").gap == {"nDCG@10": None, "AP": None} and teacher.gap == {"nDCG@10": None, "AP": None}
    assert table.gap_undefined["nDCG@10"].startswith("teacher-cot is not above bm25 (Δ -0.0007")
    assert table.gap_undefined["AP"] == (f"teacher-cot is not significantly above bm25 (Δ +0.0001, paired t-test "
                                         f"p = {teacher.p_value['AP']:.2f})")
    md = format_table(table, "md")
    assert "| RADCoT | " in md and "%" not in md.split("| RADCoT |")[1].splitlines()[0]  # no percentage printed
    assert "(gap closed AP: – because teacher-cot is not significantly above bm25" in md
    assert "gap closed undefined" in md
    latex = format_table(table, "latex")
    assert r"\%" not in latex and "not significantly above bm25" in latex
    by = {r["name"]: r for r in csv.DictReader(io.StringIO(format_table(table, "csv")))}
    assert by["radcot"]["gap_closed_AP"] == "" and "not significantly above" in by["radcot"]["gap_closed_undefined_AP"]
    assert by["teacher-cot"]["gap_closed_undefined_nDCG@10"].startswith("teacher-cot is not above")
    assert by["rm3"]["gap_closed_undefined_AP"] == "" and by["bm25"]["gap_closed_undefined_AP"] == ""
    data = table.to_dict()
    radcot = next(r for r in data["rows"] if r["name"] == "radcot")
    assert radcot["gap_closed"] == {"nDCG@10": None, "AP": None} and set(data["gap_closed_undefined"]) == {"nDCG@10", "AP"}


@pytest.mark.fast
def test_gap_undefined_reasons():
    from radcot.report import GAP_MIN_GAIN, gap_undefined_reason

    assert gap_undefined_reason(0.2, 0.001) is None
    assert gap_undefined_reason(-0.0007, 0.01, "t", "b") == "t is not above b (Δ -0.0007)"
    assert gap_undefined_reason(0.0, None, "t", "b") == "t is not above b (Δ +0.0000)"
    assert "p = 0.05" in gap_undefined_reason(0.3, 0.05)  # p must be below ALPHA
    assert gap_undefined_reason(GAP_MIN_GAIN / 2, 1e-9, "t", "b") == (
        f"t's gain over b is below the floor of {GAP_MIN_GAIN} (Δ +{GAP_MIN_GAIN / 2:.4f})")


def test_report_json_and_plots_of_an_undefined_gap(noisy_teacher, tmp_path):
    pytest.importorskip("matplotlib")
    path = write_report(noisy_teacher, out_dir=tmp_path / "r")
    data = json.loads((tmp_path / "r" / "results.json").read_text())
    assert next(r for r in data["rows"] if r["name"] == "radcot")["gap_closed"]["AP"] is None
    assert "not significantly above" in data["gap_closed_undefined"]["AP"]
    assert not (tmp_path / "r" / "gap-closed.png").exists()  # nothing to plot: no bar of a meaningless share
    assert "gap closed undefined" in path.read_text()


# ------------------------------------------------------------------ stdout carries only the table (#23)

@pytest.mark.parametrize("fmt", ["csv", "latex"])
def test_stdout_carries_only_the_table(experiment, tmp_path, capsys, fmt):
    pytest.importorskip("matplotlib")
    from radcot.cli import main

    exp, _ = experiment
    assert main(["table", str(exp), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0  # a report is written too
    out, err = capsys.readouterr()
    table = results_table(exp)
    assert out == format_table(table, fmt)
    assert f"report: {tmp_path / fmt / 'report.md'}" in err
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(out)))
        assert [r[0] for r in rows] == ["name"] + [r.name for r in table.rows]  # exactly the table's rows
        assert {len(r) for r in rows} == {len(rows[0])}
    else:
        lines = out.splitlines()
        assert lines[0].startswith(r"\begin{tabular}") and lines[-1] == r"\end{tabular}"
        assert all(line.endswith("\\\\") or line.startswith(("\\", "Run")) for line in lines)


def test_csv_redirected_to_a_file_parses_into_the_table_rows(experiment, tmp_path):
    """`radcot table E --format csv > f`, as a user runs it in a shell."""
    import subprocess

    exp, _ = experiment
    out = tmp_path / "table.csv"
    cmd = f"{sys.executable} -m radcot table {exp} --format csv --out {tmp_path / 'rep'} > {out}"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["bm25", "teacher-cot", "radcot", "rm3"]
    assert float(rows[2]["nDCG@10"]) == pytest.approx(results_table(exp).row("radcot").metrics["nDCG@10"], abs=1e-6)
    assert "report:" in proc.stderr


# --------------------------------------------------------------- radcot table --out never replaces (#26)

def test_table_out_never_replaces_a_users_files(experiment, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from radcot.cli import main

    exp, _ = experiment
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "report.md").write_text("my own report\n")
    (mine / "notes.txt").write_text("keep\n")
    assert main(["table", str(exp), "--out", str(mine)]) == 1
    err = capsys.readouterr().err
    assert "report.md already exist(s) there and radcot did not write it" in err and "--out" in err
    assert (mine / "report.md").read_text() == "my own report\n"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "report.md"]  # nothing written, no temp dir left

    # a directory with the user's other files: the report goes beside them; a second report replaces radcot's own
    (mine / "report.md").unlink()
    assert main(["table", str(exp), "--out", str(mine)]) == 0
    assert main(["table", str(exp), "--out", str(mine), "--format", "csv"]) == 0
    assert (mine / "notes.txt").read_text() == "keep\n" and (mine / "results.json").is_file()
    assert not [p for p in mine.iterdir() if p.name.startswith(".radcot-report-")]


def test_table_out_user_file_among_the_plots_and_bad_out(experiment, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from radcot.cli import main

    exp, _ = experiment
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "gap-closed.png").write_bytes(b"my figure")
    assert main(["table", str(exp), "--out", str(tmp_path / "d")]) == 1
    assert "gap-closed.png" in capsys.readouterr().err
    assert (tmp_path / "d" / "gap-closed.png").read_bytes() == b"my figure"
    (tmp_path / "f").write_text("x")
    assert main(["table", str(exp), "--out", str(tmp_path / "f")]) == 1
    assert "is an existing file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["table", str(exp), "--out", str(tmp_path / "d"), "--report", "none"])
    assert e.value.code == 2


def test_experiment_report_dir_is_rewritten(experiment):
    """The experiment's own report/ directory (radcot's) is rewritten without markers (reports of older
    radcot versions have none)."""
    pytest.importorskip("matplotlib")
    exp, _ = experiment
    write_report(exp)
    for marker in (exp / "report").glob(".*.radcot"):
        marker.unlink()
    assert write_report(exp).is_file()


# ------------------------------------------------------------------ reference rows say where (#23)

@pytest.mark.fast
def test_reference_rows_without_numbers_say_why(tmp_path):
    qrels = _qrels()
    exp = write_experiment(tmp_path / "dl19", [("bm25", "BM25", "bm25", _run(qrels, 0.2, 0))],
                           dataset="msmarco-passage/trec-dl-2019", metrics=["nDCG@10", "R(rel=2)@1000", "AP(rel=2)"])
    table = results_table(exp)
    md = format_table(table, "md")
    row = next(line for line in md.splitlines() if line.startswith("| RADCoT flan-t5-large (paper)"))
    assert row.startswith("| RADCoT flan-t5-large (paper) [1] | – | – | – |")
    note = next(line for line in md.splitlines() if line.startswith("[1] RADCoT flan-t5-large (paper): "))
    assert "Table 2" in note and "radcot/reference.yaml" in note and "offline" in note
    assert "– : the source reports no value for this metric" in md  # query2doc reports nDCG@10 only
    assert "[1] RADCoT flan-t5-large (paper)" in format_table(table, "latex")


@pytest.mark.fast
def test_reference_labels_name_their_source():
    """No internal paths in what users read; every null number has a note saying why and how to fill it."""
    from importlib import resources

    from radcot.evaluation import canonical_measure
    from radcot.safe_yaml import parse_yaml

    data = parse_yaml(resources.files("radcot").joinpath("reference.yaml").read_text(encoding="utf-8"))
    for name in data["datasets"]:
        for ref in load_reference(name):
            assert "shared" not in ref.label + ref.source and "../" not in ref.label + ref.source
            assert ref.source and all(canonical_measure(m) == m for m in ref.metrics)
            assert ref.missing or None not in ref.metrics.values()
    labels = [r.label for r in load_reference("vaswani")]
    assert labels[0] == "BM25 (radcot, pyserini 1.6.0, k1=0.9 b=0.4)"


@pytest.mark.fast
def test_reference_file_problems_are_named(tmp_path):
    (tmp_path / "ref.yaml").write_text("datasets:\n  x:\n    rows:\n      - {label: a, source: b, metrics: {AP: null}}\n")
    with pytest.raises(RadcotError, match=r"ref.yaml: datasets.x.rows\[0\]: null metrics need a `missing:` note"):
        load_reference("x", tmp_path / "ref.yaml")
    (tmp_path / "dup.yaml").write_text("datasets:\n  x: {rows: []}\n  x: {rows: []}\n")
    with pytest.raises(RadcotError, match="dup.yaml:3: duplicate key 'x' \\(first at line 2\\)"):
        load_reference("x", tmp_path / "dup.yaml")
    with pytest.raises(RadcotError, match="does not exist"):
        load_reference("x", tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- API types at the boundary

@pytest.mark.fast
def test_results_table_argument_types(experiment):
    exp, _ = experiment
    with pytest.raises(TypeError, match="exp_dir: expected an experiment directory"):
        results_table(42)
    with pytest.raises(TypeError, match=r"rows: expected a list of row names .* got str 'bm25'"):
        results_table(exp, rows="bm25")  # the old code read it letter by letter ('bm' in 'bm25')
    with pytest.raises(TypeError, match="metrics: expected a list of ir-measures names"):
        results_table(exp, metrics="nDCG@10")
    with pytest.raises(TypeError, match="baseline: expected a row name"):
        results_table(exp, baseline=["bm25"])
    with pytest.raises(RadcotError, match=r"rows \['bm26'\] are not rows of"):
        results_table(exp, rows=["bm25", "bm26"])
    with pytest.raises(TypeError, match="table: expected a Table"):
        format_table({"rows": []})
    assert [r.name for r in results_table(exp, rows=["bm25", "radcot"]).rows] == ["bm25", "radcot"]
