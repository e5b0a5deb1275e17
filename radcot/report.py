"""Results tables and reports for pipeline experiments, computed from the run files on disk.

:func:`results_table` reads ``runs/<experiment>/manifest.json``, scores each row's TREC run against the
experiment's qrels with :func:`radcot.evaluation.evaluate`, and paired-t-tests every row against the
baseline. :func:`format_table` prints it as Markdown, LaTeX or CSV (``†`` marks p < 0.05), with the
reference numbers from ``eval/reference.yaml`` beside it when the dataset has any. :func:`write_report`
writes ``report.md`` (or ``.html``) with PNG plots: sorted per-query ΔnDCG@10 for each row against the
baseline, and the students' training loss / ROUGE-L curves.

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
#: reference numbers (paper and peers) shipped with the project
REFERENCE_FILE = Path(__file__).resolve().parent.parent / "eval" / "reference.yaml"


@dataclasses.dataclass
class TableRow:
    name: str
    label: str
    run: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    delta: dict[str, float] = dataclasses.field(default_factory=dict)
    p_value: dict[str, float] = dataclasses.field(default_factory=dict)

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

    def row(self, name: str) -> TableRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "dataset": self.dataset, "baseline": self.baseline,
                "n_queries": self.n_queries,
                "rows": [{"name": r.name, "label": r.label, "run": r.run, "metrics": r.metrics, "delta": r.delta,
                          "p_value": r.p_value} for r in self.rows]}


def load_manifest(exp_dir: str | os.PathLike) -> dict:
    path = Path(exp_dir) / "manifest.json"
    if not path.is_file():
        raise RadcotError(f"{exp_dir} has no manifest.json: run a pipeline first (`radcot run pipelines/X.yaml`), "
                          f"then pass its runs/<experiment> directory")
    return json.loads(path.read_text(encoding="utf-8"))


def load_reference(dataset: str, path: str | os.PathLike | None = None) -> list[dict]:
    """Reference rows for a dataset name from ``eval/reference.yaml`` (empty when none)."""
    import yaml

    path = Path(path) if path else REFERENCE_FILE
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return list((data.get("datasets") or {}).get(dataset, {}).get("rows", []))


def results_table(exp_dir: str | os.PathLike, baseline: str | None = None, metrics: Sequence[str] | None = None,
                  rows: Sequence[str] | None = None) -> Table:
    """Score every row's run file of an experiment; deltas and paired t-tests against ``baseline``."""
    from radcot.data.readers import read_qrels
    from radcot.evaluation import evaluate, paired_ttest
    from radcot.experiment.store import verify_run_file

    exp_dir = Path(exp_dir)
    m = load_manifest(exp_dir)
    ev = m.get("evaluation") or {}
    metrics = list(metrics or ev.get("metrics") or METRICS)
    baseline = baseline if baseline is not None else ev.get("baseline")
    qrels_path = (m.get("inputs") or {}).get("qrels")
    if not qrels_path or not Path(qrels_path).exists():
        raise RadcotError(f"{exp_dir}/manifest.json: qrels file {qrels_path!r} not found (moved?)")
    qrels = {}
    for q in read_qrels(qrels_path):
        qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    eval_qids = m.get("eval_qids")
    if eval_qids:
        qrels = {q: d for q, d in qrels.items() if q in set(eval_qids)}
    out_rows = []
    for r in m["rows"]:
        if rows and r["name"] not in rows:
            continue
        if not r.get("run") or not Path(r["run"]).is_file():
            logger.warning("row %s has no run file yet (run the pipeline); skipped", r["name"])
            continue
        verify_run_file(r["run"])  # refuses a run file changed since its pipeline stage finished
        agg, pq = evaluate(qrels, r["run"], metrics, per_query=True)
        out_rows.append(TableRow(r["name"], r.get("label", r["name"]), r["run"], agg, pq))
    if not out_rows:
        raise RadcotError(f"{exp_dir}: no row has a run file; run the pipeline first")
    names = [r.name for r in out_rows]
    if baseline and baseline not in names:
        raise RadcotError(f"baseline {baseline!r} is not among the rows with runs: {names}")
    if baseline:
        base = next(r for r in out_rows if r.name == baseline)
        for r in out_rows:
            if r is base:
                continue
            for metric in metrics:
                t = paired_ttest(base.per_query[metric], r.per_query[metric], metric)
                r.delta[metric] = t.delta
                r.p_value[metric] = t.p_value
    dataset = (m.get("inputs") or {}).get("dataset", "")
    return Table(m["experiment"], dataset, metrics, baseline, out_rows, len(qrels), load_reference(dataset))


def _cells(table: Table, r: TableRow, mark: str = "†") -> list[str]:
    out = []
    for metric in table.metrics:
        cell = f"{r.metrics[metric]:.4f}"
        if metric in r.delta:
            cell += f" ({r.delta[metric]:+.4f})" + (mark if r.significant(metric) else "")
        out.append(cell)
    return out


def format_table(table: Table, fmt: str = "md") -> str:
    """Render as ``md``, ``latex`` or ``csv``. ``†``: paired t-test p < 0.05 against the baseline."""
    head = ["run"] + table.metrics
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["name", "label"] + table.metrics + [f"delta_{m}" for m in table.metrics]
                   + [f"p_{m}" for m in table.metrics])
        for r in table.rows:
            w.writerow([r.name, r.label] + [f"{r.metrics[m]:.6f}" for m in table.metrics]
                       + [f"{r.delta[m]:.6f}" if m in r.delta else "" for m in table.metrics]
                       + [f"{r.p_value[m]:.6g}" if m in r.p_value else "" for m in table.metrics])
        return buf.getvalue()
    if fmt == "latex":
        lines = [r"\begin{tabular}{l" + "r" * len(table.metrics) + "}", r"\toprule",
                 " & ".join(["Run"] + [m.replace("@", "@") for m in table.metrics]) + r" \\", r"\midrule"]
        for r in table.rows:
            cells = [f"{r.metrics[m]:.4f}" + ("$^\\dagger$" if r.significant(m) else "") for m in table.metrics]
            lines.append(" & ".join([r.label.replace("_", r"\_").replace("&", r"\&")] + cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    if fmt != "md":
        raise RadcotError(f"unknown table format {fmt!r}: use md, latex or csv")
    lines = [f"{table.experiment} ({table.dataset}, {table.n_queries} judged queries)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table.rows:
        lines.append("| " + " | ".join([r.label] + _cells(table, r)) + " |")
    if table.baseline:
        lines += ["", f"(Δ against {table.baseline}; † paired t-test p < {ALPHA})"]
    if table.reference:
        lines += ["", "Reference numbers (not reproduced here; sources in eval/reference.yaml):", "",
                  "| reference | " + " | ".join(table.metrics) + " | source |", "|" + "---|" * (len(table.metrics) + 2)]
        for ref in table.reference:
            vals = ref.get("metrics") or {}
            cells = [f"{vals[m]:.4f}" if isinstance(vals.get(m), (int, float)) else "–" for m in table.metrics]
            lines.append("| " + " | ".join([ref.get("label", "?")] + cells + [ref.get("source", "")]) + " |")
    return "\n".join(lines) + "\n"


def _plot_deltas(table: Table, out_dir: Path, metric: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not table.baseline or metric not in table.metrics:
        return []
    base = table.row(table.baseline)
    paths = []
    for r in table.rows:
        if r is base:
            continue
        deltas = sorted(r.per_query[metric][q] - base.per_query[metric][q] for q in base.per_query[metric])
        fig, ax = plt.subplots(figsize=(7, 3))
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
        plt.close(fig)
        paths.append(path)
    return paths


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, log in _training_logs(exp_dir):
        recs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
        loss = [(r["step"], r["loss"]) for r in recs if "loss" in r and "step" in r]
        rouge_key = next((k for r in recs for k in r if "rouge" in k.lower()), None)
        rouge = [(r["step"], r[rouge_key]) for r in recs if rouge_key and rouge_key in r and "step" in r]
        if not loss:
            continue
        fig, ax = plt.subplots(figsize=(6, 3))
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
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(exp_dir: str | os.PathLike, table: Table | None = None, fmt: str = "md",
                 out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``report.md`` (or ``report.html``) with the table and PNG plots; returns its path."""
    from radcot.utils import atomic_write, write_json

    exp_dir = Path(exp_dir)
    table = table or results_table(exp_dir)
    out_dir = Path(out_dir) if out_dir else exp_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plot_deltas(table, out_dir, "nDCG@10") + _plot_training(exp_dir, out_dir)
    write_json(out_dir / "results.json", table.to_dict())
    md = format_table(table, "md")
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
