"""Training curves in reports: train stages found through the manifest, shared stages in RUNS_DIR/_shared (#22)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radcot.report import format_training, training_curves, write_report

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def _log(run_dir: Path, rows: list[dict]) -> None:
    """``metrics.jsonl`` as radcot.student.train writes it: train rows and eval rows."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _train_rows(steps: int, eval_every: int, rouge0: float = 0.1) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        rows.append({"kind": "train", "step": s, "epoch": 0, "loss": 6.0 / s ** 0.5, "lr": 1e-3, "grad_norm": 1.0,
                     "examples": 8 * s, "elapsed_s": 0.1 * s})
        if s % eval_every == 0:
            rows.append({"kind": "eval", "step": s, "epoch": 0, "dev_loss": 5.0 / s ** 0.3,
                         "rougeL": rouge0 + 0.01 * s, "n_dev": 16, "elapsed_s": 0.1 * s})
    return rows


@pytest.fixture
def shared_experiment(tmp_path):
    """runs/exp whose manifest points at two train stages in runs/_shared (one recorded by a relative path
    from another working directory) and one whose directory is gone; one experiment-local BM25 run."""
    runs = tmp_path / "runs"
    exp = runs / "exp"
    exp.mkdir(parents=True)
    _log(runs / "_shared" / "train-1a2b3c" / "run", _train_rows(40, 10))
    (runs / "_shared" / "train-9f8e7d" / "run").mkdir(parents=True)
    (runs / "_shared" / "train-9f8e7d" / "run" / "metrics.csv").write_text(
        "kind,step,epoch,loss,lr,grad_norm,examples,dev_loss,rougeL,n_dev,elapsed_s\n"
        "train,1,0,5.5,0.001,1.0,8,,,,0.1\ntrain,2,0,4.5,0.001,1.0,16,,,,0.2\neval,2,0,,,,,4.9,0.21,16,0.3\n")
    bm25 = exp / "bm25.trec"
    bm25.write_text("test00001 Q0 D00009 1 2.0 bm25\n")
    stages = {
        "train-radcot-f0": {"dir": str(runs / "_shared" / "train-1a2b3c"), "shared": True,
                            "config": {"model": "tiny-t5:d_model=32"}},
        "train-distill-no-retrieval-f0": {"dir": "elsewhere/runs/_shared/train-9f8e7d", "shared": True,
                                          "config": {"model": "google/flan-t5-base"}},
        "train-gone-f0": {"dir": str(runs / "_shared" / "train-000000"), "shared": True, "config": {}},
        "search-bm25": {"dir": str(exp / "search-bm25-abc"), "shared": False},
    }
    manifest = {"experiment": "exp", "inputs": {"dataset": "demo", "qrels": str(DEMO / "qrels" / "test.tsv")},
                "evaluation": {"metrics": ["nDCG@10"], "baseline": "bm25"}, "config": {"rows": [{"name": "bm25"}]},
                "rows": [{"name": "bm25", "label": "BM25", "kind": "bm25", "run": str(bm25)}], "stages": stages,
                "eval_qids": ["test00001"]}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    return exp


@pytest.mark.fast
def test_training_curves_found_through_the_manifest(shared_experiment):
    curves, problems = training_curves(shared_experiment)
    by = {c.stage: c for c in curves}
    assert sorted(by) == ["train-distill-no-retrieval-f0", "train-radcot-f0"]
    radcot = by["train-radcot-f0"]
    assert radcot.run_dir == shared_experiment.parent / "_shared" / "train-1a2b3c" / "run"
    assert len(radcot.train) == 40 and radcot.train[0] == (1, 6.0)
    assert [s for s, _ in radcot.dev["rougeL"]] == [10, 20, 30, 40] and radcot.best("rougeL") == (40, pytest.approx(0.5))
    assert radcot.best("dev_loss")[0] == 40 and set(radcot.dev) == {"dev_loss", "rougeL"}
    csv_curve = by["train-distill-no-retrieval-f0"]  # found under this runs dir although recorded elsewhere
    assert csv_curve.train == [(1, 5.5), (2, 4.5)] and csv_curve.dev == {"dev_loss": [(2, 4.9)], "rougeL": [(2, 0.21)]}
    assert problems == [f"train-gone-f0: no training curves ({shared_experiment.parent / '_shared' / 'train-000000'} "
                        f"not found)"]
    md = format_training(curves, problems)
    assert "| train-radcot-f0 | tiny-t5:d_model=32 | 40 | 6.0000 → 0.9487 | dev_loss 1.6533 (40); rougeL 0.5000 (40) |" in md
    assert "(train-gone-f0: no training curves" in md


def test_report_has_the_shared_training_curves(shared_experiment, tmp_path):
    pytest.importorskip("matplotlib")
    report = write_report(shared_experiment)
    text = report.read_text()
    assert "## Training" in text and "| train-radcot-f0 |" in text and "| train-distill-no-retrieval-f0 |" in text
    for stage in ("train-radcot-f0", "train-distill-no-retrieval-f0"):
        png = report.parent / f"training-{stage}.png"
        assert png.stat().st_size > 5000 and f"![training-{stage}](training-{stage}.png)" in text
    # a torn last line (a training run killed mid-write) is skipped, not an error
    log = shared_experiment.parent / "_shared" / "train-1a2b3c" / "run" / "metrics.jsonl"
    log.write_text(log.read_text() + '{"kind": "train", "st')
    assert len(training_curves(shared_experiment)[0][1].train) == 40


@pytest.mark.slow
@pytest.mark.java
def test_pipeline_report_plots_real_training_curves(demo_world, tmp_path):
    """A real pipeline whose student trains in runs/_shared: its report shows the loss and dev ROUGE-L."""
    from radcot.pipeline import Pipeline

    cfg = {"experiment": "curves", "seed": 13, "dataset": {"path": str(demo_world), "limit_queries": 8},
           "retriever": {"k1": 0.9, "b": 0.4, "threads": 1},
           "teacher": {"backend": "kb", "args": {"world": str(demo_world)}, "params": {"max_tokens": 40},
                       "concurrency": 1},
           "training_queries": {"mode": "split", "limit": 32},
           "student": {"model": "tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=600", "n_context": 2,
                       "train": {"max_steps": 4, "batch_size": 8, "eval_every": 2, "save_every": 4, "log_every": 1,
                                 "eval_max_examples": 4, "eval_max_new_tokens": 8, "text_maxlength": 32,
                                 "target_maxlength": 24},
                       "generate": {"max_new_tokens": 8}},
           "evaluation": {"metrics": ["nDCG@10"], "k": 50, "baseline": "bm25"},
           "rows": [{"name": "bm25"}, {"name": "radcot", "student": {"context": True}}]}
    exp = Pipeline(cfg, runs_dir=tmp_path / "runs", show_progress=False).run()
    stage = json.loads((exp / "manifest.json").read_text())["stages"]["train-radcot-f0"]
    assert stage["shared"] and "/_shared/" in stage["dir"]
    report = write_report(exp)
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| train-radcot-f0 |"))
    assert "| 4 |" in row and "rougeL" in row and "dev_loss" in row
    assert (report.parent / "training-train-radcot-f0.png").stat().st_size > 5000
    shutil.rmtree(exp / "report")
