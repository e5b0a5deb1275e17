"""Answer rates and the context ceiling on the demo world's real teacher (kb) outputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.demo.answers import (AnalysisError, answer_rate, answer_terms, context_recall, experiment_answer_rates,
                             split_answer, teacher_answers, world_answers)
from radcot.data.readers import read_queries

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


@pytest.fixture(scope="module")
def teacher_cots(tmp_path_factory):
    """The kb teacher's CoTs for the first 60 test queries of the demo world (real teach() output)."""
    from radcot.teacher import get_backend
    from radcot.teacher.runner import teach

    out = tmp_path_factory.mktemp("teacher") / "cot.jsonl"
    queries = list(read_queries(DEMO / "queries.test.tsv"))[:60]
    backend = get_backend("kb", world=str(DEMO))
    teach(backend, queries, out, prompt="radcot", show_progress=False)
    return out, queries


def test_split_answer_and_terms():
    assert split_answer("Rationale: a b. Answer: Orrim.") == ("a b. ", "Orrim.")
    assert split_answer("no answer part") == ("no answer part", None)
    cot = "Rationale: X is on the payroll of Qisaehael Foundry. Answer: X is employed by Qisaehael Foundry."
    assert answer_terms(cot, "who is X's employer") == {"qisaehael", "foundry"}
    assert answer_terms("just text", "q") == set()


def test_teacher_contains_its_answers_and_shuffled_cots_do_not(teacher_cots):
    path, queries = teacher_cots
    answers = teacher_answers(path)
    assert len(answers) == 60 and all(answers.values())
    own = answer_rate(answers, path, "teacher")
    assert (own.hits, own.n) == (60, 60)
    # each query gets the next query's CoT: only queries that share an answer can still match
    texts = {r["query_id"]: r["text"] for r in map(json.loads, path.read_text().splitlines())}
    qids = [q.query_id for q in queries]
    shuffled = {qids[i]: texts[qids[(i + 1) % len(qids)]] for i in range(len(qids))}
    wrong = answer_rate(answers, shuffled, "shifted")
    assert wrong.rate < 0.2


def test_terms_agree_with_the_worlds_exact_answers(teacher_cots):
    path, queries = teacher_cots
    exact = world_answers(DEMO)
    texts = {r["query_id"]: r["text"] for r in map(json.loads, path.read_text().splitlines())}
    # half the CoTs cut before their answer part and rationale: they lose the answer
    half = {q: (t if i % 2 else t.split(" ")[0]) for i, (q, t) in enumerate(sorted(texts.items()))}
    by_terms = answer_rate(teacher_answers(path), half)
    by_world = answer_rate(exact, half)
    assert by_world.n == 60 and by_world.hits == 30
    assert by_terms.hits == by_world.hits


def test_context_recall():
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 2}}
    hits = {"q1": ["x", "b", "a"], "q2": ["y", "z", "c"]}
    assert context_recall(hits, qrels, k=2) == 0.5
    assert context_recall(hits, qrels, k=2, min_rel=2) == 0.0
    assert context_recall(hits, qrels, k=3, min_rel=2) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        context_recall(hits, qrels, k=0)


def test_experiment_answer_rates_and_cli(teacher_cots, tmp_path):
    path, queries = teacher_cots
    exp = tmp_path / "exp"
    gen = tmp_path / "generate-radcot-f0-1"
    gen.mkdir(parents=True)
    exp.mkdir()
    lines = path.read_text().splitlines()
    keep = [json.loads(x) for x in lines]
    for i, r in enumerate(keep):
        if i % 3:
            r["text"] = "Rationale: nothing useful here."
    (gen / "cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    manifest = {"experiment": "x", "evaluation": {}, "rows": [
        {"name": "bm25", "kind": "bm25"}, {"name": "teacher-cot", "kind": "cots"}, {"name": "radcot", "kind": "student"}],
        "config": {"rows": [{"name": "bm25"}, {"name": "teacher-cot", "cots": "teacher"}, {"name": "radcot", "student": {}}]},
        "stages": {"teacher-eval": {"dir": str(path.parent)}, "generate-radcot-f0": {"dir": str(gen)}}}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    rates = {r.name: r for r in experiment_answer_rates(exp)}
    assert rates["teacher-cot"].rate == 1.0 and rates["radcot"].hits == 20
    assert {r.name: r.hits for r in experiment_answer_rates(exp, world=DEMO)} == {"teacher-cot": 60, "radcot": 20}
    # a row whose name extends another's ("radcot-frequency" after "radcot") keeps its own CoTs, and a row
    # whose generate stage is not in this manifest gets none (it used to take the other row's by prefix)
    manifest["rows"].append({"name": "radcot-frequency", "kind": "student"})
    manifest["config"]["rows"].append({"name": "radcot-frequency", "student": {}})
    manifest["stages"]["generate-radcot-frequency-f0"] = manifest["stages"].pop("generate-radcot-f0")
    (exp / "manifest.json").write_text(json.dumps(manifest))
    assert {r.name: r.hits for r in experiment_answer_rates(exp)} == {"teacher-cot": 60, "radcot-frequency": 20}
    with pytest.raises(AnalysisError, match="teacher row"):
        experiment_answer_rates(exp, teacher_row="bm25")
    script = subprocess.run([sys.executable, str(REPO / "eval" / "demo_answer_rate.py"), str(gen / "cot.jsonl")],
                            capture_output=True, text=True, check=True)
    assert "20/60 CoTs contain the answer (33.3%)" in script.stdout
