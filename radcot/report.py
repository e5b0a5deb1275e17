"""Results tables and reports for pipeline experiments, computed from the run files on disk.

:func:`results_table` reads ``runs/<experiment>/manifest.json``, scores each row's TREC run against the
experiment's qrels with :func:`radcot.evaluation.evaluate`, and paired-t-tests every row against the
baseline. :func:`format_table` prints it as Markdown, LaTeX or CSV (``†`` marks p < 0.05), with the
reference numbers from ``radcot/reference.yaml`` (package data) beside it when the dataset has any.
Every row that expands queries gets a **gap closed** value per metric when the experiment has a teacher
row: ``(row - baseline) / (teacher - baseline)``, the share of the teacher's gain the row keeps. The
teacher row is ``evaluation.teacher_row`` (or ``--teacher``), else the first row with ``cots: teacher``.
:func:`write_report` writes ``report.md`` (or ``.html``) with PNG plots: sorted per-query ΔnDCG@10 for
each row against the baseline, the gap closed per row, and the students' training loss / ROUGE-L curves.
Plots are drawn on explicit Agg canvases: no global matplotlib backend is switched.

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
import os
from pathlib import Path
from typing import Any, Sequence

from radcot.records import RadcotError

logger = logging.getLogger("radcot.report")

METRICS = ("nDCG@10", "RR@10", "R@1000", "AP")
ALPHA = 0.05
#: reference numbers (paper and peers) shipped inside the package (package data)
REFERENCE_FILE = Path(__file__).resolve().parent / "reference.yaml"
#: row kinds that expand queries (they get a gap-closed value)
EXPANDING = ("cots", "student")


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


@dataclasses.dataclass
class Table:
    experiment: str
    dataset: str
    metrics: list[str]
    baseline: str | None
    rows: list[TableRow]
    n_queries: int
    reference: list[dict] = dataclasses.field(default_factory=list)
    teacher: str | None = None

    def row(self, name: str) -> TableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "dataset": self.dataset, "baseline": self.baseline,
                "teacher": self.teacher, "n_queries": self.n_queries,
                "rows": [{"name": r.name, "label": r.label, "kind": r.kind, "run": r.run, "metrics": r.metrics,
                          "delta": r.delta, "p_value": r.p_value, "gap_closed": r.gap} for r in self.rows]}


def load_manifest(exp_dir: str | os.PathLike) -> dict:
    path = Path(exp_dir) / "manifest.json"
    if not path.is_file():
        raise RadcotError(f"{exp_dir} has no manifest.json: run a pipeline first (`radcot run pipelines/X.yaml`), "
                          f"then pass its runs/<experiment> directory")
    return json.loads(path.read_text(encoding="utf-8"))


def load_reference(dataset: str, path: str | os.PathLike | None = None) -> list[dict]:
    """Reference rows for a dataset name from the package's ``reference.yaml`` (empty when none)."""
    import yaml

    if path is not None:
        if not Path(path).is_file():
            return []
        text = Path(path).read_text(encoding="utf-8")
    else:
        from importlib import resources

        ref = resources.files("radcot").joinpath("reference.yaml")
        if not ref.is_file():
            return []
        text = ref.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    return list((data.get("datasets") or {}).get(dataset, {}).get("rows", []))


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
        if rows and r["name"] not in rows:
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

    ``None`` when the teacher does not differ from the baseline (no gain to keep).

    Example:
        >>> round(gap_closed(0.2384, 0.2040, 0.5240), 4)
        0.1075
    """
    gain = teacher - baseline
    if abs(gain) < 1e-12:
        return None
    return (row - baseline) / gain


def _add_gaps(out_rows: list[TableRow], baseline: str, teacher: str, metrics: list[str]) -> None:
    base = next(r for r in out_rows if r.name == baseline)
    top = next(r for r in out_rows if r.name == teacher)
    for r in out_rows:
        if r.kind in EXPANDING or r is top:
            r.gap = {m: gap_closed(r.metrics[m], base.metrics[m], top.metrics[m]) for m in metrics}


def results_table(exp_dir: str | os.PathLike, baseline: str | None = None, metrics: Sequence[str] | None = None,
                  rows: Sequence[str] | None = None, teacher: str | None = None) -> Table:
    """Score every row's run file of an experiment; deltas and paired t-tests against ``baseline``, and the
    gap closed towards the ``teacher`` row (default: ``evaluation.teacher_row`` or the ``cots: teacher`` row)."""
    exp_dir = Path(exp_dir)
    m = load_manifest(exp_dir)
    ev = m.get("evaluation") or {}
    metrics = list(metrics or ev.get("metrics") or METRICS)
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
    if baseline:
        _add_tests(out_rows, baseline, metrics)
        if teacher_name and teacher_name != baseline:
            _add_gaps(out_rows, baseline, teacher_name, metrics)
    dataset = (m.get("inputs") or {}).get("dataset", "")
    return Table(m["experiment"], dataset, metrics, baseline, out_rows, len(qrels), load_reference(dataset),
                 teacher=teacher_name if baseline else None)


def _cells(table: Table, r: TableRow, mark: str = "†") -> list[str]:
    out = []
    for metric in table.metrics:
        cell = f"{r.metrics[metric]:.4f}"
        if metric in r.delta:
            cell += f" ({r.delta[metric]:+.4f})" + (mark if r.significant(metric) else "")
        out.append(cell)
    return out


def _gap_cells(table: Table, r: TableRow, percent: str = "%") -> list[str]:
    """Gap closed per metric as percentages; ``–`` for rows that do not expand queries."""
    return [f"{100 * r.gap[m]:.1f}{percent}" if r.gap.get(m) is not None else "–" for m in table.metrics]


def _format_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    ms = table.metrics
    w.writerow(["name", "label"] + ms + [f"delta_{m}" for m in ms] + [f"p_{m}" for m in ms]
               + [f"gap_closed_{m}" for m in ms])
    for r in table.rows:
        w.writerow([r.name, r.label] + [f"{r.metrics[m]:.6f}" for m in ms]
                   + [f"{r.delta[m]:.6f}" if m in r.delta else "" for m in ms]
                   + [f"{r.p_value[m]:.6g}" if m in r.p_value else "" for m in ms]
                   + [f"{r.gap[m]:.6f}" if r.gap.get(m) is not None else "" for m in ms])
    return buf.getvalue()


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("&", r"\&"), ("%", r"\%"), ("#", r"\#"),
                 ("$", r"\$")):
        text = text.replace(a, b)
    return text.replace("†", r"$^\dagger$").replace("–", "--")


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
        lines += [r"\midrule", r"\multicolumn{%d}{l}{\emph{Reference (not reproduced here)}} \\" % ncol]
        for ref in table.reference:
            vals = ref.get("metrics") or {}
            cells = [f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "–" for m in table.metrics]
            label = f"{ref.get('label', '?')} [{ref.get('source', '')}]"
            lines.append(" & ".join(_latex_escape(c) for c in [label] + cells + ([""] * len(table.metrics) if gaps else []))
                         + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    notes = []
    if table.baseline:
        notes.append(f"% deltas against {table.baseline}; $^\\dagger$ paired t-test p < {ALPHA}")
    if gaps:
        notes.append(f"% gap: (row - {table.baseline}) / ({table.teacher} - {table.baseline})")
    return "\n".join(lines + notes) + "\n"


def _format_md(table: Table) -> str:
    gaps = table.teacher is not None
    head = ["run"] + table.metrics + ([f"gap closed {m}" for m in table.metrics] if gaps else [])
    lines = [f"{table.experiment} ({table.dataset}, {table.n_queries} judged queries)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        lines.append("| " + " | ".join([r.label] + _cells(table, r) + (_gap_cells(table, r) if gaps else [])) + " |")
    if table.baseline:
        lines += ["", f"(Δ against {table.baseline}; † paired t-test p < {ALPHA})"]
    if gaps:
        lines += [f"(gap closed: (row − {table.baseline}) / ({table.teacher} − {table.baseline}), the share of the "
                  f"teacher row's gain a row keeps)"]
    if table.reference:
        lines += ["", "Reference numbers (not reproduced here; sources in radcot/reference.yaml):", "",
                  "| reference | " + " | ".join(table.metrics) + " | source |", "|" + "---|" * (len(table.metrics) + 2)]
        for ref in table.reference:
            vals = ref.get("metrics") or {}
            cells = [f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "–" for m in table.metrics]
            lines.append("| " + " | ".join([ref.get("label", "?")] + cells + [ref.get("source", "")]) + " |")
    return "\n".join(lines) + "\n"


def format_table(table: Table, fmt: str = "md") -> str:
    """Render as ``md``, ``latex`` or ``csv``. ``†``: paired t-test p < 0.05 against the baseline; gap-closed
    columns when the table has a teacher row."""
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
    """One bar chart: gap closed per expanding row and metric (percent of the teacher's gain)."""
    rows = [r for r in table.rows if r.gap and r.name != table.teacher]
    if not table.teacher or not rows:
        return []
    fig = _figure((7, 3))
    ax = fig.add_subplot()
    width = 0.8 / len(table.metrics)
    for j, m in enumerate(table.metrics):
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


def _training_logs(exp_dir: Path) -> list[tuple[str, Path]]:
    found = []
    for d in sorted(exp_dir.glob("train-*")):
        for name in ("metrics.jsonl", "log.jsonl", "train_log.jsonl"):
            hits = sorted(d.rglob(name))
            if hits:
                found.append((d.name.rsplit("-", 1)[0].removeprefix("train-"), hits[0]))
                break
    return found


def _plot_training(exp_dir: Path, out_dir: Path) -> list[Path]:
    paths = []
    for name, log in _training_logs(exp_dir):
        recs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        loss = [(r["step"], r["loss"]) for r in recs if "loss" in r and "step" in r]
        rouge_key = next((k for r in recs for k in r if "rouge" in k.lower()), None)
        rouge = [(r["step"], r[rouge_key]) for r in recs if rouge_key and rouge_key in r and "step" in r]
        if not loss:
            continue
        fig = _figure((6, 3))
        ax = fig.add_subplot()
        ax.plot(*zip(*loss), label="train loss", color="#2e86c1")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if rouge:
            ax2 = ax.twinx()
            ax2.plot(*zip(*rouge), "o-", label=rouge_key, color="#e67e22")
            ax2.set_ylabel(rouge_key)
        ax.set_title(f"training: {name}")
        fig.tight_layout()
        path = out_dir / f"training-{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def write_report(exp_dir: str | os.PathLike, table: Table | None = None, fmt: str = "md",
                 out_dir: str | os.PathLike | None = None, sections: Sequence[str] = ()) -> Path:
    """Write ``report.md`` (or ``report.html``) with the table and PNG plots; returns its path.

    ``sections``: Markdown sections added after the table (``radcot table --answers`` hands the demo's answer
    rates, :func:`radcot.demo.answers.format_answer_rates`, in here).
    """
    from radcot.utils import atomic_write, write_json

    exp_dir = Path(exp_dir)
    table = table or results_table(exp_dir)
    out_dir = Path(out_dir) if out_dir else exp_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plot_deltas(table, out_dir, "nDCG@10") + _plot_gaps(table, out_dir) + _plot_training(exp_dir, out_dir)
    write_json(out_dir / "results.json", table.to_dict())
    md = format_table(table, "md")
    for section in sections:
        md += "\n" + section
    if fmt == "html":
        body = "<pre>" + html.escape(md) + "</pre>" + "".join(
            f'<figure><img src="{p.name}"><figcaption>{html.escape(p.stem)}</figcaption></figure>' for p in plots)
        path = out_dir / "report.html"
        with atomic_write(path) as f:
            f.write(f"<!doctype html><meta charset=utf-8><title>{html.escape(table.experiment)}</title>{body}\n")
        return path
    path = out_dir / "report.md"
    with atomic_write(path) as f:
        f.write(f"# {table.experiment}\n\n{md}\n")
        for p in plots:
            f.write(f"![{p.stem}]({p.name})\n\n")
    return path
