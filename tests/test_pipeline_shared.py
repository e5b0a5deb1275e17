"""The DL reproduction's shape in miniature: two experiments sharing one base config train once."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.pipeline import Pipeline

REPO = Path(__file__).resolve().parents[1]

BASE = """
# the shared part of two experiments (as trec-dl-2019/2020 share theirs)
seed: 13
params: {data: DATA}
dataset: {path: "${data}"}
retriever: {k1: 0.9, b: 0.4, threads: 2}
teacher: {backend: kb, args: {world: "${data}"}, params: {max_tokens: 80}, concurrency: 1}
training_queries: {mode: split, limit: 64}
student:
  model: "tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=600"
  n_context: 2
  train: {max_steps: 3, batch_size: 8, eval_every: 0, save_every: 3, eval_max_examples: 4,
          text_maxlength: 32, target_maxlength: 24}
  generate: {max_new_tokens: 8}
evaluation: {metrics: [nDCG@10], k: 50, baseline: bm25}
rows:
  - {name: bm25}
  - {name: radcot, student: {context: true}}
"""


@pytest.mark.slow
@pytest.mark.java
def test_second_experiment_reuses_teacher_data_and_training(demo_world, tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(BASE.replace("DATA", str(demo_world)))
    for name, n in (("dl19", 10), ("dl20", 14)):
        (tmp_path / f"{name}.yaml").write_text(f"include: configs/base.yaml\nexperiment: {name}\n"
                                               f"dataset: {{limit_queries: {n}}}\n")
    runs = tmp_path / "runs"
    first = Pipeline.from_yaml(tmp_path / "dl19.yaml", runs_dir=runs, show_progress=False).run()
    # the runs directory spelled differently: stage keys do not depend on it
    second = Pipeline.from_yaml(tmp_path / "dl20.yaml", runs_dir=tmp_path / "configs" / ".." / "runs",
                                show_progress=False).run()

    s1 = json.loads((first / "manifest.json").read_text())["stages"]
    s2 = json.loads((second / "manifest.json").read_text())["stages"]
    assert {n for n, s in s1.items() if not s["reused"]} == set(s1)  # the first builds everything
    reused = sorted(n for n, s in s2.items() if s["reused"])
    assert reused == ["data-radcot-f0", "index", "teacher-train", "train-radcot-f0"]
    assert sorted(n for n, s in s2.items() if not s["reused"]) == ["generate-radcot-f0", "search-bm25", "search-radcot"]
    for name in reused:  # the second experiment points at the first's shared directories
        assert s2[name]["shared"] and Path(s2[name]["dir"]).resolve() == Path(s1[name]["dir"]).resolve()
        assert "/_shared/" in s2[name]["dir"]
    assert len(list((runs / "_shared").glob("train-*"))) == 1
    assert len(next(second.glob("generate-radcot-f0-*/cot.jsonl")).read_text().splitlines()) == 14


def _rehearse(name: str, runs: Path) -> tuple[list[tuple[str, str]], dict]:
    """``radcot run pipelines/<name>.yaml --rehearse --rows radcot-small``: (the stages the log reports, each with
    run/resume/cached), the manifest's stages)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RADCOT_JAVA_HEAP": "1g"}
    p = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / f"{name}.yaml"), "--rehearse",
                        "--rows", "radcot-small", "--runs-dir", str(runs), "--no-progress", "--no-report"],
                       capture_output=True, text=True, env=env, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    logged = re.findall(r"stage (\S+)\s+(run|resume|cached) ", p.stderr)
    return logged, json.loads((runs / f"{name}-rehearsal" / "manifest.json").read_text())["stages"]


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.timeout(1800)
def test_dl20_rehearsal_after_dl19_reuses_the_teacher_data_and_training(tmp_path):
    """The real trec-dl-2019.yaml and trec-dl-2020.yaml (one msmarco-base.yaml): run one after the other into one
    runs directory, the second runs no teacher-on-training-queries, distillation-data or training stage."""
    runs = tmp_path / "runs"
    log19, s19 = _rehearse("trec-dl-2019", runs)
    log20, s20 = _rehearse("trec-dl-2020", runs)
    shared = {"index", "teacher-train", "data-radcot-small-f0", "train-radcot-small-f0"}
    assert {n for n, how in log19 if how == "run"} == set(s19) and shared <= set(s19)
    assert sorted(n for n, how in log20 if how != "cached") == ["generate-radcot-small-f0", "search-bm25",
                                                                "search-radcot-small"]
    assert {n for n, how in log20 if how == "cached"} == shared
    assert {n for n, s in s20.items() if s["reused"]} == shared
    for name in shared:  # DL20 points at the directories DL19 built under _shared
        assert s20[name]["dir"] == s19[name]["dir"] and "/_shared/" in s20[name]["dir"]
    assert len(list((runs / "_shared").glob("train-*"))) == 1
    assert s19["search-bm25"]["dir"] != s20["search-bm25"]["dir"]  # each evaluates its own queries
