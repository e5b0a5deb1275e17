"""Results tables and reports for pipeline experiments, computed from the run files on disk.

:func:`results_table` reads ``runs/<experiment>/manifest.json``, scores each row's TREC run against the
experiment's qrels with :func:`radcot.evaluation.evaluate`, and paired-t-tests every row against the
baseline. :func:`format_table` prints it as Markdown, LaTeX or CSV (``†`` marks p < 0.05), with the
reference numbers from ``radcot/reference.yaml`` (package data) beside it when the dataset has any.

Metrics are keyed and printed by their canonical ir-measures names (``--metrics MRR@10`` gives a column
``RR@10``; the Markdown and LaTeX tables say which spelling became which).

Every row that expands queries gets a **gap closed** value per metric when the experiment has a teacher
row: ``(row - baseline) / (teacher - baseline)``, the share of the teacher's gain the row keeps. The
teacher row is ``evaluation.teacher_row`` (or ``--teacher``), else the first row with ``cots: teacher``.
The share is undefined, printed ``–`` with a footnote saying why (``null`` and a reason in CSV/JSON), when
the teacher's gain is not positive, not significant (the table's own paired t-test, p >= :data:`ALPHA`) or
smaller than :data:`GAP_MIN_GAIN`: dividing by a gain that is noise prints numbers such as 889.7%.

:func:`write_report` writes ``report.md`` (or ``.html``) with PNG plots: sorted per-query deltas for each
row against the baseline, the gap closed per row, and the training curves (loss, dev metrics) of every
train stage of the experiment, found through its manifest (shared stages live in ``RUNS_DIR/_shared/``).
It never replaces a file it did not write. Plots are drawn on explicit Agg canvases: no global matplotlib
backend is switched.

Example:
    >>> from radcot.report import results_table, format_table
    >>> table = results_table("runs/demo")  # doctest: +SKIP
    >>> print(format_table(table, "md"))  # doctest: +SKIP
"""
from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from radcot.evaluation import DEFAULT_METRICS, canonical_measure, canonical_measures
from radcot.records import RadcotError

logger = logging.getLogger("radcot.report")

#: the table's metrics when neither the caller nor the pipeline names any
METRICS = DEFAULT_METRICS
#: significance level of the paired t-tests (``†``), and of the teacher's gain behind the gap-closed columns
ALPHA = 0.05
#: the smallest teacher gain over the baseline (absolute, in the metric's units) a gap closed is divided by
GAP_MIN_GAIN = 0.005
#: reference numbers (paper and peers) shipped inside the package (package data)
REFERENCE_FILE = Path(__file__).resolve().parent / "reference.yaml"
#: row kinds that expand queries (they get a gap-closed value)
EXPANDING = ("cots", "student")
#: the report directory inside an experiment (radcot's own: its files are replaced on every report)
REPORT_DIR = "report"


class ReportExistsError(RadcotError, FileExistsError):
    """A report would replace files radcot did not write; names them and the fix."""


@dataclasses.dataclass
class TableRow:
    name: str
    label: str
    run: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    delta: dict[str, float] = dataclasses.field(default_factory=dict)
    p_value: dict[str, float] = dataclasses.field(default_factory=dict)
    kind: str = "bm25"
    gap: dict[str, float | None] = dataclasses.field(default_factory=dict)

    def significant(self, metric: str) -> bool:
        p = self.p_value.get(metric)
        return p is not None and p < ALPHA


@dataclasses.dataclass(frozen=True)
class ReferenceRow:
    """A reference result printed beside a table (never used in any computation).

    ``metrics`` are keyed by canonical ir-measures names; ``None`` is a number the source reports that is not
    filled in here (``missing`` says why and how to fill it in); a metric absent from ``metrics`` is one the
    source does not report.
    """

    label: str
    source: str
    metrics: dict[str, float | None]
    missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Table:
    experiment: str
    dataset: str
    metrics: list[str]
    baseline: str | None
    rows: list[TableRow]
    n_queries: int
    reference: list[ReferenceRow] = dataclasses.field(default_factory=list)
    teacher: str | None = None
    #: ``{metric: why its gap closed is undefined}`` (the teacher's gain is not there to divide by)
    gap_undefined: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``{name as asked: canonical name}`` for metrics asked for under another spelling (``MRR@10``)
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)

    def row(self, name: str) -> TableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "dataset": self.dataset, "baseline": self.baseline,
                "teacher": self.teacher, "n_queries": self.n_queries, "metrics": self.metrics,
                "metric_aliases": self.aliases, "alpha": ALPHA, "gap_closed_undefined": self.gap_undefined,
                "rows": [{"name": r.name, "label": r.label, "kind": r.kind, "run": r.run, "metrics": r.metrics,
                          "delta": r.delta, "p_value": r.p_value, "gap_closed": r.gap} for r in self.rows],
                "reference": [ref.to_dict() for ref in self.reference]}


def load_manifest(exp_dir: str | os.PathLike) -> dict:
    path = Path(exp_dir) / "manifest.json"
    if not path.is_file():
        raise RadcotError(f"{exp_dir} has no manifest.json: run a pipeline first (`radcot run pipelines/X.yaml`), "
                          f"then pass its runs/<experiment> directory")
    return json.loads(path.read_text(encoding="utf-8"))


def load_reference(dataset: str, path: str | os.PathLike | None = None) -> list[ReferenceRow]:
    """Reference rows for a dataset name from ``path`` (default: the package's ``reference.yaml``); empty when
    the file has none for it.

    Raises:
        RadcotError: ``path`` does not exist, or a row of the file is malformed (file, dataset and row named).
    """
    from radcot.safe_yaml import load_yaml, parse_yaml

    if path is not None:
        if not Path(path).is_file():
            raise RadcotError(f"reference file {path} does not exist")
        data, source = load_yaml(path), str(path)
    else:
        from importlib import resources

        ref = resources.files("radcot").joinpath("reference.yaml")
        if not ref.is_file():
            return []
        data, source = parse_yaml(ref.read_text(encoding="utf-8"), "radcot/reference.yaml"), "radcot/reference.yaml"
    rows = (((data or {}).get("datasets") or {}).get(dataset) or {}).get("rows") or []
    return [_reference_row(spec, f"{source}: datasets.{dataset}.rows[{i}]") for i, spec in enumerate(rows)]


def _reference_row(spec: Any, where: str) -> ReferenceRow:
    """A validated :class:`ReferenceRow` (metric keys made canonical)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("label"), str) or not isinstance(spec.get("source"), str):
        raise RadcotError(f"{where}: expected {{label: ..., source: ..., metrics: {{...}}}}, got {spec!r}")
    metrics = {}
    for key, value in (spec.get("metrics") or {}).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise RadcotError(f"{where}.metrics.{key}: expected a number or null, got {value!r}")
        metrics[canonical_measure(key)] = None if value is None else float(value)
    missing = spec.get("missing")
    if any(v is None for v in metrics.values()) and not missing:
        raise RadcotError(f"{where}: null metrics need a `missing:` note saying why and how to fill them in")
    return ReferenceRow(spec["label"], spec["source"], metrics, missing)


def teacher_row_name(manifest: dict, teacher: str | None = None) -> str | None:
    """The experiment's teacher row: ``teacher``, else ``evaluation.teacher_row``, else the first
    ``cots: teacher`` row of the config; ``None`` when it has none."""
    if teacher:
        return teacher
    ev = manifest.get("evaluation") or {}
    if ev.get("teacher_row"):
        return str(ev["teacher_row"])
    for spec in (manifest.get("config") or {}).get("rows", []):
        if isinstance(spec, dict) and spec.get("cots") == "teacher":
            return spec.get("name")
    return None


def _load_qrels(exp_dir: Path, m: dict) -> dict[str, dict[str, int]]:
    from radcot.data.readers import read_qrels

    qrels_path = (m.get("inputs") or {}).get("qrels")
    if not qrels_path or not Path(qrels_path).exists():
        raise RadcotError(f"{exp_dir}/manifest.json: qrels file {qrels_path!r} not found (moved?)")
    qrels: dict[str, dict[str, int]] = {}
    for q in read_qrels(qrels_path):
        qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    eval_qids = m.get("eval_qids")
    if eval_qids:
        keep = set(eval_qids)
        qrels = {q: d for q, d in qrels.items() if q in keep}
    return qrels


def _score_rows(m: dict, qrels: dict, metrics: list[str], rows: Sequence[str] | None) -> list[TableRow]:
    from radcot.evaluation import evaluate
    from radcot.experiment.store import verify_run_file

    out_rows = []
    for r in m["rows"]:
        if rows is not None and r["name"] not in rows:
            continue
        if r.get("run"):
            verify_run_file(r["run"])  # refuses a run file changed (or deleted) since its pipeline stage finished
        if not r.get("run") or not Path(r["run"]).is_file():
            logger.warning("row %s has no run file yet (run the pipeline); skipped", r["name"])
            continue
        agg, pq = evaluate(qrels, r["run"], metrics, per_query=True)
        out_rows.append(TableRow(r["name"], r.get("label", r["name"]), r["run"], agg, pq, kind=r.get("kind", "bm25")))
    return out_rows


def _add_tests(out_rows: list[TableRow], baseline: str, metrics: list[str]) -> None:
    from radcot.evaluation import paired_ttest

    base = next(r for r in out_rows if r.name == baseline)
    for r in out_rows:
        if r is base:
            continue
        for metric in metrics:
            t = paired_ttest(base.per_query[metric], r.per_query[metric], metric)
            r.delta[metric] = t.delta
            r.p_value[metric] = t.p_value


def gap_closed(row: float, baseline: float, teacher: float) -> float | None:
    """``(row - baseline) / (teacher - baseline)``: the share of the teacher's gain a row keeps.

    ``None`` when the teacher does not differ from the baseline (no gain to keep). Tables also leave it
    undefined when the gain is not significant or too small (:func:`gap_undefined_reason`).

    Example:
        >>> round(gap_closed(0.2384, 0.2040, 0.5240), 4)
        0.1075
    """
    gain = teacher - baseline
    if abs(gain) < 1e-12:
        return None
    return (row - baseline) / gain


def gap_undefined_reason(gain: float, p_value: float | None, teacher: str = "the teacher",
                         baseline: str = "the baseline") -> str | None:
    """Why a gap closed cannot be divided by the teacher's ``gain`` over the baseline, or ``None`` when it can.

    It cannot when the gain is not positive, not significant (paired t-test ``p_value`` >= :data:`ALPHA`) or
    below :data:`GAP_MIN_GAIN`: a share of a gain that is noise means nothing.

    Example:
        >>> gap_undefined_reason(0.0012, 0.81, "teacher-cot", "bm25")
        'teacher-cot is not significantly above bm25 (Δ +0.0012, paired t-test p = 0.81)'
        >>> gap_undefined_reason(0.21, 0.0001) is None
        True
    """
    if not gain > 0:
        return f"{teacher} is not above {baseline} (Δ {gain:+.4f})"
    if p_value is not None and not p_value < ALPHA:
        return f"{teacher} is not significantly above {baseline} (Δ {gain:+.4f}, paired t-test p = {p_value:.2f})"
    if gain < GAP_MIN_GAIN:
        return f"{teacher}'s gain over {baseline} is below the floor of {GAP_MIN_GAIN} (Δ {gain:+.4f})"
    return None


def _add_gaps(out_rows: list[TableRow], baseline: str, teacher: str, metrics: list[str]) -> dict[str, str]:
    """Gap closed of every expanding row (and the teacher's); returns ``{metric: why undefined}``."""
    base = next(r for r in out_rows if r.name == baseline)
    top = next(r for r in out_rows if r.name == teacher)
    undefined = {}
    for m in metrics:
        reason = gap_undefined_reason(top.metrics[m] - base.metrics[m], top.p_value.get(m), top.name, base.name)
        if reason:
            undefined[m] = reason
    for r in out_rows:
        if r.kind in EXPANDING or r is top:
            r.gap = {m: None if m in undefined else gap_closed(r.metrics[m], base.metrics[m], top.metrics[m])
                     for m in metrics}
    return undefined


def _check_names(value, argument: str) -> list[str] | None:
    """``None`` or a list of row names; a single str (which would be read letter by letter) is refused."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)) or \
            not all(isinstance(v, str) for v in value):
        raise TypeError(f"{argument}: expected a list of row names such as ['bm25', 'radcot'], got "
                        f"{type(value).__name__} {value!r}")
    return list(value)


def _check_optional_str(value, argument: str) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{argument}: expected a row name (str) or None, got {type(value).__name__} {value!r}")


def _table_metrics(metrics, ev: dict, exp_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The table's canonical metrics (the caller's, else the pipeline's, else :data:`METRICS`) and
    ``{spelling: canonical}`` for those asked for under another name."""
    if metrics is not None:
        asked, argument = metrics, "metrics"
    else:
        asked, argument = ev.get("metrics") or METRICS, f"{exp_dir}/manifest.json evaluation.metrics"
    names = canonical_measures(asked, argument)
    aliases = {str(a): canonical_measure(a) for a in asked if isinstance(a, str) and canonical_measure(a) != a}
    return names, aliases


def _check_rows(m: dict, rows: list[str] | None, exp_dir: Path) -> None:
    known = [r["name"] for r in m["rows"]]
    unknown = [r for r in rows or () if r not in known]
    if unknown:
        raise RadcotError(f"rows {unknown} are not rows of {exp_dir} (its rows: {known})")


def results_table(exp_dir: str | os.PathLike, baseline: str | None = None, metrics: Sequence[str] | None = None,
                  rows: Sequence[str] | None = None, teacher: str | None = None) -> Table:
    """Score every row's run file of an experiment; deltas and paired t-tests against ``baseline``, and the
    gap closed towards the ``teacher`` row (default: ``evaluation.teacher_row`` or the ``cots: teacher`` row).

    Args:
        exp_dir: an experiment directory (``runs/<experiment>``, with ``manifest.json``).
        baseline: the row tested against (default: the pipeline's ``evaluation.baseline``).
        metrics: ir-measures names (default: the pipeline's ``evaluation.metrics``); aliases such as ``MRR@10``
            are accepted and the table keys and prints them canonically (``RR@10``).
        rows: only these rows (names); default all.
        teacher: the row the gap-closed columns measure against.

    Raises:
        TypeError: an argument of the wrong type (named).
        RadcotError: no manifest, unknown rows/baseline/teacher or metrics, changed run files.
    """
    if not isinstance(exp_dir, (str, os.PathLike)):
        raise TypeError(f"exp_dir: expected an experiment directory (str or path), got {type(exp_dir).__name__}")
    _check_optional_str(baseline, "baseline")
    _check_optional_str(teacher, "teacher")
    rows = _check_names(rows, "rows")
    exp_dir = Path(exp_dir)
    m = load_manifest(exp_dir)
    ev = m.get("evaluation") or {}
    metrics, aliases = _table_metrics(metrics, ev, exp_dir)
    _check_rows(m, rows, exp_dir)
    baseline = baseline if baseline is not None else ev.get("baseline")
    qrels = _load_qrels(exp_dir, m)
    out_rows = _score_rows(m, qrels, metrics, rows)
    if not out_rows:
        raise RadcotError(f"{exp_dir}: no row has a run file; run the pipeline first")
    names = [r.name for r in out_rows]
    if baseline and baseline not in names:
        raise RadcotError(f"baseline {baseline!r} is not among the rows with runs: {names}")
    teacher_name = teacher_row_name(m, teacher)
    if teacher_name and teacher_name not in names:
        if teacher or ev.get("teacher_row"):
            raise RadcotError(f"teacher row {teacher_name!r} (--teacher / evaluation.teacher_row) is not among the "
                              f"rows with runs: {names}")
        teacher_name = None
    undefined: dict[str, str] = {}
    if baseline:
        _add_tests(out_rows, baseline, metrics)
        if teacher_name and teacher_name != baseline:
            undefined = _add_gaps(out_rows, baseline, teacher_name, metrics)
    dataset = (m.get("inputs") or {}).get("dataset", "")
    return Table(m["experiment"], dataset, metrics, baseline, out_rows, len(qrels), load_reference(dataset),
                 teacher=teacher_name if baseline else None, gap_undefined=undefined, aliases=aliases)


def _cells(table: Table, r: TableRow, mark: str = "†") -> list[str]:
    out = []
    for metric in table.metrics:
        cell = f"{r.metrics[metric]:.4f}"
        if metric in r.delta:
            cell += f" ({r.delta[metric]:+.4f})" + (mark if r.significant(metric) else "")
        out.append(cell)
    return out


def _gap_cells(table: Table, r: TableRow, percent: str = "%") -> list[str]:
    """Gap closed per metric as percentages; ``–`` for rows that do not expand queries or an undefined gap."""
    return [f"{100 * r.gap[m]:.1f}{percent}" if r.gap.get(m) is not None else "–" for m in table.metrics]


def _gap_reason(table: Table, r: TableRow, m: str) -> str:
    """The reason a row's gap closed for ``m`` is undefined (empty for rows without one or with a value)."""
    return table.gap_undefined.get(m, "") if m in r.gap and r.gap[m] is None else ""


def _format_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    ms = table.metrics
    w.writerow(["name", "label"] + ms + [f"delta_{m}" for m in ms] + [f"p_{m}" for m in ms]
               + [f"gap_closed_{m}" for m in ms] + [f"gap_closed_undefined_{m}" for m in ms])
    for r in table.rows:
        w.writerow([r.name, r.label] + [f"{r.metrics[m]:.6f}" for m in ms]
                   + [f"{r.delta[m]:.6f}" if m in r.delta else "" for m in ms]
                   + [f"{r.p_value[m]:.6g}" if m in r.p_value else "" for m in ms]
                   + [f"{r.gap[m]:.6f}" if r.gap.get(m) is not None else "" for m in ms]
                   + [_gap_reason(table, r, m) for m in ms])
    return buf.getvalue()


def _notes(table: Table) -> list[str]:
    """The table's footnotes, one sentence each (shared by Markdown and LaTeX)."""
    notes = []
    if table.aliases:
        notes.append("metrics by their ir-measures names: "
                     + ", ".join(f"{a} = {c}" for a, c in table.aliases.items()))
    if table.baseline:
        notes.append(f"Δ against {table.baseline}; † paired t-test p < {ALPHA}")
    if table.teacher:
        notes.append(f"gap closed: (row − {table.baseline}) / ({table.teacher} − {table.baseline}), the share of the "
                     f"teacher row's gain a row keeps; – for rows that do not expand queries")
    for m, reason in table.gap_undefined.items():
        notes.append(f"gap closed {m}: – because {reason}: gap closed undefined")
    return notes


def _reference_cells(table: Table, ref: ReferenceRow) -> list[str]:
    return [f"{ref.metrics[m]:.4f}" if ref.metrics.get(m) is not None else "–" for m in table.metrics]


def _reference_notes(table: Table) -> tuple[dict[int, int], list[str]]:
    """Footnote numbers of the reference rows with numbers missing (``{row index: n}``) and the footnotes."""
    marks, notes = {}, []
    for i, ref in enumerate(table.reference):
        if ref.missing and any(m in ref.metrics and ref.metrics[m] is None for m in table.metrics):
            marks[i] = len(notes) + 1
            notes.append(f"[{marks[i]}] {ref.label}: {ref.missing}")
    if any(m not in ref.metrics for ref in table.reference for m in table.metrics):
        notes.append("– : the source reports no value for this metric")
    return marks, notes


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"$<$", ">": r"$>$", "†": r"$^\dagger$", "–": "--", "−": "-", "Δ": r"$\Delta$",
                  "→": r"$\rightarrow$"}


def _latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (one pass, so replacements are not escaped again)."""
    import re

    return re.sub("|".join(re.escape(c) for c in _LATEX_SPECIAL), lambda m: _LATEX_SPECIAL[m.group(0)], text)


def _latex_note(ncol: int, text: str) -> str:
    return r"\multicolumn{%d}{l}{\footnotesize %s} \\" % (ncol, _latex_escape(text))


def _format_latex(table: Table) -> str:
    gaps = table.teacher is not None
    ncol = 1 + len(table.metrics) * (2 if gaps else 1)
    head = ["Run"] + list(table.metrics) + ([f"gap {m}" for m in table.metrics] if gaps else [])
    lines = [r"\begin{tabular}{l" + "r" * (ncol - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for r in table.rows:
        cells = [r.label] + _cells(table, r) + (_gap_cells(table, r, percent="%") if gaps else [])
        lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
    if table.reference:
        marks, ref_notes = _reference_notes(table)
        lines += [r"\midrule", r"\multicolumn{%d}{l}{\emph{Reference (not reproduced here)}} \\" % ncol]
        for i, ref in enumerate(table.reference):
            label = f"{ref.label}" + (f" [{marks[i]}]" if i in marks else "") + f" [{ref.source}]"
            cells = [label] + _reference_cells(table, ref) + ([""] * len(table.metrics) if gaps else [])
            lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
    else:
        ref_notes = []
    notes = _notes(table) + ref_notes
    if notes:
        lines += [r"\midrule"] + [_latex_note(ncol, n) for n in notes]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _format_md(table: Table) -> str:
    gaps = table.teacher is not None
    head = ["run"] + table.metrics + ([f"gap closed {m}" for m in table.metrics] if gaps else [])
    lines = [f"{table.experiment} ({table.dataset}, {table.n_queries} judged queries)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        lines.append("| " + " | ".join([r.label] + _cells(table, r) + (_gap_cells(table, r) if gaps else [])) + " |")
    notes = _notes(table)
    if notes:
        lines.append("")
        lines += [f"({n})" for n in notes]
    if table.reference:
        marks, ref_notes = _reference_notes(table)
        lines += ["", "Reference numbers (published or measured elsewhere, not by this experiment; "
                      "radcot/reference.yaml):", "",
                  "| reference | " + " | ".join(table.metrics) + " | source |", "|" + "---|" * (len(table.metrics) + 2)]
        for i, ref in enumerate(table.reference):
            label = ref.label + (f" [{marks[i]}]" if i in marks else "")
            lines.append("| " + " | ".join([label] + _reference_cells(table, ref) + [ref.source]) + " |")
        if ref_notes:
            lines += [""] + ref_notes
    return "\n".join(lines) + "\n"


def format_table(table: Table, fmt: str = "md") -> str:
    """Render as ``md``, ``latex`` or ``csv``. ``†``: paired t-test p < 0.05 against the baseline; gap-closed
    columns when the table has a teacher row (``–`` with a footnote where undefined; CSV: empty, with the
    reason in ``gap_closed_undefined_<metric>``)."""
    if not isinstance(table, Table):
        raise TypeError(f"table: expected a Table from results_table(), got {type(table).__name__}")
    if fmt == "csv":
        return _format_csv(table)
    if fmt == "latex":
        return _format_latex(table)
    if fmt != "md":
        raise RadcotError(f"unknown table format {fmt!r}: use md, latex or csv")
    return _format_md(table)


def _figure(size: tuple[float, float]):
    """A matplotlib figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from radcot._deps import require

    require("matplotlib", "report plots", extra="report")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _plot_deltas(table: Table, out_dir: Path, metric: str) -> list[Path]:
    if not table.baseline or metric not in table.metrics:
        return []
    base = table.row(table.baseline)
    paths = []
    for r in table.rows:
        if r is base:
            continue
        deltas = sorted(r.per_query[metric][q] - base.per_query[metric][q] for q in base.per_query[metric])
        fig = _figure((7, 3))
        ax = fig.add_subplot()
        ax.bar(range(len(deltas)), deltas, width=1.0, color=["#c0392b" if d < 0 else "#2e86c1" for d in deltas])
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("queries (sorted)")
        ax.set_ylabel(f"Δ{metric}")
        wins = sum(d > 0 for d in deltas)
        losses = sum(d < 0 for d in deltas)
        ax.set_title(f"{r.label} vs {base.label}: {wins} better, {losses} worse")
        fig.tight_layout()
        path = out_dir / f"delta-{metric.replace('@', '_')}-{r.name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _plot_gaps(table: Table, out_dir: Path) -> list[Path]:
    """One bar chart: gap closed per expanding row and metric (percent of the teacher's gain); metrics whose
    gap closed is undefined are left out."""
    rows = [r for r in table.rows if r.gap and r.name != table.teacher]
    metrics = [m for m in table.metrics if m not in table.gap_undefined]
    if not table.teacher or not rows or not metrics:
        return []
    fig = _figure((7, 3))
    ax = fig.add_subplot()
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        vals = [100 * (r.gap.get(m) or 0.0) for r in rows]
        ax.bar([i + j * width for i in range(len(rows))], vals, width=width, label=m)
    ax.axhline(0, color="black", lw=0.6)
    ax.axhline(100, color="grey", lw=0.6, ls="--")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [r.name for r in rows])
    ax.set_ylabel(f"% of {table.teacher}'s gain")
    ax.set_title(f"gap closed towards {table.teacher} (over {table.baseline})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "gap-closed.png"
    fig.savefig(path, dpi=110)
    return [path]


# ------------------------------------------------------------------------------------------ training curves

#: fields of a training log row that are not curves
_NOT_CURVES = {"kind", "step", "epoch", "elapsed_s", "n_dev", "n_select", "examples", "lr", "grad_norm"}


@dataclasses.dataclass
class TrainingCurve:
    """What one train stage logged (``RUN_DIR/metrics.jsonl`` of :mod:`radcot.student.train`).

    ``train``: ``(step, loss)`` per logged step; ``dev``: ``{metric: [(step, value)]}`` per evaluation
    (``dev_loss``, ``rougeL``, and the retrieval metric of ``select_by: retrieval``).
    """

    stage: str
    run_dir: Path
    model: str
    train: list[tuple[int, float]]
    dev: dict[str, list[tuple[int, float]]]

    def best(self, metric: str) -> tuple[int, float]:
        """``(step, value)`` of the best evaluation (lowest for losses, highest otherwise)."""
        points = self.dev[metric]
        pick = min if "loss" in metric else max
        return pick(points, key=lambda p: p[1])


def _stage_dir(exp_dir: Path, entry: dict) -> Path | None:
    """A stage's directory as the manifest records it; if the runs directory was moved or the manifest
    holds a path relative to another working directory, the same name under this experiment's runs dir."""
    recorded = Path(str(entry.get("dir") or ""))
    if not recorded.name:
        return None
    home = exp_dir.parent / "_shared" if entry.get("shared") else exp_dir
    for d in (recorded, home / recorded.name):
        if d.is_dir():
            return d
    return None


def _number_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_train_log(run_dir: Path) -> list[dict] | None:
    """Rows of ``metrics.jsonl`` (a torn last line is skipped), else of ``metrics.csv``; ``None`` if neither."""
    jsonl, table = run_dir / "metrics.jsonl", run_dir / "metrics.csv"
    if jsonl.is_file():
        rows = []
        for line in jsonl.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run killed mid-write
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
    if table.is_file():
        with open(table, encoding="utf-8", newline="") as f:
            return [{k: v if k == "kind" else _number_or_none(v) for k, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(f)]
    return None


def _curve(stage: str, run_dir: Path, model: str, rows: list[dict]) -> TrainingCurve:
    train = [(int(r["step"]), float(r["loss"])) for r in rows
             if r.get("kind") == "train" and _number_or_none(r.get("loss")) is not None and "step" in r]
    dev: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r.get("kind") != "eval" or "step" not in r:
            continue
        for key, value in r.items():
            if key not in _NOT_CURVES and _number_or_none(value) is not None and not isinstance(value, bool):
                dev.setdefault(key, []).append((int(r["step"]), float(value)))
    return TrainingCurve(stage, run_dir, model, train, dev)


def training_curves(exp_dir: str | os.PathLike, manifest: dict | None = None) -> tuple[list[TrainingCurve], list[str]]:
    """The training curves of every ``train-*`` stage in an experiment's manifest (shared stages included).

    Returns:
        The curves, and one note per train stage whose directory or log could not be found.
    """
    exp_dir = Path(exp_dir)
    manifest = manifest if manifest is not None else load_manifest(exp_dir)
    curves, problems = [], []
    for name, entry in sorted((manifest.get("stages") or {}).items()):
        if not name.startswith("train-") or not isinstance(entry, dict):
            continue
        d = _stage_dir(exp_dir, entry)
        run_dir = d / "run" if d is not None and (d / "run").is_dir() else d
        rows = _read_train_log(run_dir) if run_dir is not None else None
        if rows is None:
            where = f"{run_dir} has no metrics.jsonl or metrics.csv" if run_dir else f"{entry.get('dir')} not found"
            problems.append(f"{name}: no training curves ({where})")
            continue
        model = str((entry.get("config") or {}).get("model", ""))
        curves.append(_curve(name, run_dir, model, rows))
    for p in problems:
        logger.warning("report: %s", p)
    return curves, problems


def _plot_training(curves: Sequence[TrainingCurve], out_dir: Path) -> list[Path]:
    """One PNG per train stage: train and dev loss (left axis), the other dev metrics (right axis)."""
    paths = []
    for c in curves:
        if not c.train and not c.dev:
            continue
        fig = _figure((6.5, 3))
        ax = fig.add_subplot()
        if c.train:
            ax.plot(*zip(*c.train), label="train loss", color="#2e86c1", lw=1)
        if c.dev.get("dev_loss"):
            ax.plot(*zip(*c.dev["dev_loss"]), "s-", label="dev loss", color="#1a5276", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        others = [k for k in c.dev if "loss" not in k]
        handles, labels = ax.get_legend_handles_labels()
        if others:
            ax2 = ax.twinx()
            for k, color in zip(others, ("#e67e22", "#27ae60", "#8e44ad", "#c0392b")):
                ax2.plot(*zip(*c.dev[k]), "o-", label=f"dev {k}", color=color, ms=3)
            ax2.set_ylabel("dev metric")
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=7, loc="best")
        ax.set_title(f"{c.stage} ({c.model})" if c.model else c.stage, fontsize=9)
        fig.tight_layout()
        path = out_dir / f"training-{c.stage}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def format_training(curves: Sequence[TrainingCurve], problems: Sequence[str] = ()) -> str:
    """A Markdown section: per train stage, its steps, train loss (first -> last) and best dev metrics."""
    if not curves and not problems:
        return ""
    lines = ["## Training", "", "| train stage | model | steps | train loss (first → last) | dev, best (step) |",
             "|---|---|---|---|---|"]
    for c in curves:
        steps = max([s for s, _ in c.train] + [s for pts in c.dev.values() for s, _ in pts], default=0)
        loss = f"{c.train[0][1]:.4f} → {c.train[-1][1]:.4f}" if c.train else "–"
        dev = "; ".join(f"{k} {c.best(k)[1]:.4f} ({c.best(k)[0]})" for k in c.dev) or "no dev evaluation"
        lines.append(f"| {c.stage} | {c.model or '?'} | {steps} | {loss} | {dev} |")
    if curves:
        lines += ["", f"(run directories: {', '.join(str(c.run_dir) for c in curves)})"]
    lines += [f"({p})" for p in problems]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the report


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportExistsError(f"report directory {out_dir} is an existing file; pass a directory (radcot table --out)")
    out_dir.mkdir(parents=True, exist_ok=True)


def _publish(staging: Path, out_dir: Path, may_replace: Callable[[Path], bool],
             on_written: Callable[[Path], None] | None) -> None:
    """Move every file of ``staging`` into ``out_dir``; refuses (moving nothing) when one would replace a file
    ``may_replace`` does not allow."""
    names = sorted(os.listdir(staging))
    taken = [n for n in names if ((out_dir / n).exists() or (out_dir / n).is_symlink()) and not may_replace(out_dir / n)]
    if taken:
        raise ReportExistsError(f"report directory {out_dir}: {', '.join(taken)} already exist(s) there and radcot did "
                                f"not write {'it' if len(taken) == 1 else 'them'}; radcot never replaces a file it did "
                                f"not write: choose another directory (radcot table --out DIR) or move "
                                f"{'it' if len(taken) == 1 else 'them'} away")
    for n in names:
        os.replace(staging / n, out_dir / n)
        if on_written is not None:
            on_written(out_dir / n)


def _render_report(exp_dir: Path, table: Table, fmt: str, out_dir: Path, sections: Sequence[str]) -> Path:
    """Draw the plots and write the report files into ``out_dir`` (a staging directory); returns the report."""
    from radcot.utils import atomic_write, write_json

    curves, problems = training_curves(exp_dir)
    metric = "nDCG@10" if "nDCG@10" in table.metrics else table.metrics[0]
    plots = _plot_deltas(table, out_dir, metric) + _plot_gaps(table, out_dir) + _plot_training(curves, out_dir)
    write_json(out_dir / "results.json", table.to_dict())
    md = format_table(table, "md")
    for section in sections:
        md += "\n" + section
    if fmt == "html":
        md += "\n" + format_training(curves, problems)
        body = "<pre>" + html.escape(md) + "</pre>" + "".join(
            f'<figure><img src="{p.name}"><figcaption>{html.escape(p.stem)}</figcaption></figure>' for p in plots)
        path = out_dir / "report.html"
        with atomic_write(path) as f:
            f.write(f"<!doctype html><meta charset=utf-8><title>{html.escape(table.experiment)}</title>{body}\n")
        return path
    path = out_dir / "report.md"
    with atomic_write(path) as f:
        f.write(f"# {table.experiment}\n\n{md}\n")
        training = format_training(curves, problems)
        if training:
            f.write(training + "\n")
        for p in plots:
            f.write(f"![{p.stem}]({p.name})\n\n")
    return path


def write_report(exp_dir: str | os.PathLike, table: Table | None = None, fmt: str = "md",
                 out_dir: str | os.PathLike | None = None, sections: Sequence[str] = (), *,
                 may_replace: Callable[[Path], bool] | None = None,
                 on_written: Callable[[Path], None] | None = None) -> Path:
    """Write ``report.md`` (or ``report.html``) with the table, the training curves and PNG plots; returns its
    path.

    Every file is drawn in a hidden staging directory first and moved into ``out_dir`` only when none of them
    would replace a file radcot did not write: in the experiment's own ``report/`` directory every file is
    radcot's; elsewhere an existing file is replaced only when ``may_replace(path)`` says so (``radcot table``
    passes its output markers), else :class:`ReportExistsError` is raised and nothing is written.

    Args:
        exp_dir: the experiment directory.
        table: its :func:`results_table` (computed when ``None``).
        fmt: ``md`` or ``html``.
        out_dir: the report directory (default ``EXP_DIR/report``).
        sections: Markdown sections added after the table (``radcot table --answers`` hands the demo's answer
            rates, :func:`radcot.demo.answers.format_answer_rates`, in here).
        may_replace: whether an existing file outside ``EXP_DIR/report`` may be replaced (default: never).
        on_written: called with each file written (e.g. to mark it as radcot's).
    """
    if fmt not in ("md", "html"):
        raise RadcotError(f"unknown report format {fmt!r}: use md or html")
    exp_dir = Path(exp_dir)
    table = table or results_table(exp_dir)
    own = exp_dir / REPORT_DIR
    out_dir = Path(out_dir) if out_dir else own
    _prepare_out_dir(out_dir)
    if out_dir.resolve() == own.resolve():
        may_replace = lambda path: True  # noqa: E731 - the experiment's report directory is radcot's
    staging = Path(tempfile.mkdtemp(prefix=".radcot-report-", dir=out_dir))
    try:
        path = _render_report(exp_dir, table, fmt, staging, sections)
        _publish(staging, out_dir, may_replace or (lambda path: False), on_written)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / path.name
