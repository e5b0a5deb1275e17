"""The demo-world diagnostics in eval/ on a real (tiny, 100-step) student of the demo world: they run, and their
counts agree with the files they read."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from _demo_student import REPO, demo_build, demo_index, demo_student  # noqa: F401 - session fixtures

pytest.importorskip("torch")
WORLD = REPO / "data" / "demo"


def _rows(stdout: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the Markdown table rows in ``stdout``."""
    out = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(line) <= set("|- ") and cells[0] not in ("relation",):
            out[cells[0]] = cells[1:]
    return out


def _run(*args) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_answer_by_relation_reads_a_training_eval_file(demo_build):
    eval_file = max((demo_build / "run" / "eval").glob("step-*.jsonl"))
    n = sum(1 for line in eval_file.read_text().splitlines() if line.strip())
    rows = _rows(_run(REPO / "eval" / "demo_answer_by_relation.py", "--world", WORLD, "--data",
                      demo_build / "distill", eval_file))
    assert int(rows["all"][0]) == n == sum(int(v[0]) for k, v in rows.items() if k != "all")
    assert all(re.fullmatch(r"\d+%", c) for v in rows.values() for c in v[1:])


def test_answer_slot_counts_the_held_out_queries_whose_target_names_the_answer(demo_build):
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    best = demo_build / "run" / "best"
    rows = _rows(_run(REPO / "eval" / "demo_answer_slot.py", "--world", WORLD, "--data", demo_build / "distill",
                      best))
    # independently: held-out rows whose target holds the first token of the world's answer
    tok = AutoTokenizer.from_pretrained(best)
    facts = {json.loads(x)["fact_id"]: json.loads(x) for x in (WORLD / "kb.jsonl").read_text().splitlines()
             if '"fact"' in x}
    fact_of = {json.loads(x)["_id"]: json.loads(x)["metadata"].get("fact_id")
               for x in (WORLD / "queries.jsonl").read_text().splitlines() if x.strip()}
    expected = 0
    for ex in load_from_disk(str(demo_build / "distill"))["dev"]:
        answer = tok(" " + facts[fact_of[ex["query_id"]]]["object_name"], add_special_tokens=False)["input_ids"][0]
        expected += answer in tok(" ".join(ex["target"].split()), add_special_tokens=False)["input_ids"]
    assert expected > 0 and int(rows["all"][0]) == expected
    assert all(re.fullmatch(r"\d+%", c) for v in rows.values() for c in v[1:])
