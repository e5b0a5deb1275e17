"""The synthetic demo world: deterministic bytes, readable BEIR layout, consistent qrels, a real
vocabulary mismatch (BM25 nDCG@10 with and without the knowledge-base teacher's CoT)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from radcot.data.readers import read_corpus, read_qrels, read_queries
from radcot.demo.world import WORLD_FILES, WorldConfig, make_world
from radcot.utils import sha256_file

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.fast
def test_regenerating_gives_identical_bytes(demo_world, tmp_path):
    """data/demo is what `radcot make-world --out data/demo` writes, byte for byte (seed 13, scale 1)."""
    manifest = json.loads((demo_world / "MANIFEST.json").read_text())
    m = make_world(tmp_path / "again", seed=manifest["seed"], scale=manifest["config"]["scale"])
    for name in list(WORLD_FILES) + ["MANIFEST.json"]:
        assert (tmp_path / "again" / name).read_bytes() == (demo_world / name).read_bytes(), name
    assert m == manifest
    for name, digest in manifest["files"].items():
        assert sha256_file(demo_world / name) == digest, f"{name} does not match MANIFEST.json"


@pytest.mark.fast
def test_seed_changes_the_world(tmp_path):
    a = make_world(tmp_path / "a", seed=1, scale=0.1)
    b = make_world(tmp_path / "b", seed=2, scale=0.1)
    a2 = make_world(tmp_path / "a2", seed=1, scale=0.1)
    assert a["files"] == a2["files"]
    assert a["files"]["corpus.jsonl"] != b["files"]["corpus.jsonl"]


@pytest.mark.fast
def test_scale_and_sizes(tmp_path):
    m = make_world(tmp_path / "w", seed=3, scale=0.1, n_test=15, train_paraphrases=2)
    s = m["sizes"]
    assert s["queries_test"] == 15
    assert 100 < s["passages"] < 1000
    # two paraphrases per training fact
    assert s["queries_train"] == 2 * (s["facts"] - 15)
    with pytest.raises(ValueError, match="scale"):
        WorldConfig(scale=0)
    with pytest.raises(ValueError, match="surname_share"):
        WorldConfig(surname_share=0.5)


@pytest.mark.fast
def test_beir_layout_is_readable_and_consistent(demo_world):
    manifest = json.loads((demo_world / "MANIFEST.json").read_text())
    docs = {d.doc_id: d for d in read_corpus(demo_world)}
    queries = {q.query_id: q for q in read_queries(demo_world)}
    train, test = read_qrels(demo_world, "train"), read_qrels(demo_world, "test")
    sizes = manifest["sizes"]
    assert len(docs) == sizes["passages"]
    assert len({q.query_id for q in test}) == sizes["queries_test"] == 200
    assert len({q.query_id for q in train}) == sizes["queries_train"] >= 1900
    assert 3000 <= len(docs) <= 6000
    for qrels in (train, test):
        assert all(q.doc_id in docs for q in qrels), "qrels reference a passage missing from corpus.jsonl"
        assert all(q.query_id in queries for q in qrels), "qrels reference a query missing from queries.jsonl"
        assert {q.relevance for q in qrels} == {1, 2}
        grade2 = Counter(q.query_id for q in qrels if q.relevance == 2)
        assert len(grade2) == len({q.query_id for q in qrels}), "every query has a passage stating its fact"
    assert not {q.query_id for q in train} & {q.query_id for q in test}
    # the split files agree with qrels
    assert {q.query_id for q in read_queries(demo_world / "queries.test.tsv")} == {q.query_id for q in test}
    assert {q.query_id for q in read_queries(demo_world / "queries.train.tsv")} == {q.query_id for q in train}
    # held-out facts: no test fact is asked by a training query
    meta = [json.loads(l) for l in open(demo_world / "queries.jsonl", encoding="utf-8")]
    test_facts = {m["metadata"]["fact_id"] for m in meta if m["metadata"]["split"] == "test"}
    train_facts = {m["metadata"]["fact_id"] for m in meta if m["metadata"]["split"] == "train"}
    assert not test_facts & train_facts


@pytest.mark.fast
def test_judged_passages_avoid_the_query_wording(demo_world):
    """Lexical mismatch: the words a query uses besides the entity name are (almost) never in its judged passages."""
    import re

    docs = {d.doc_id: d.text.lower() for d in read_corpus(demo_world)}
    kb = [json.loads(l) for l in open(demo_world / "kb.jsonl", encoding="utf-8")]
    names = {w.lower() for e in kb if e["kind"] == "entity" for w in e["name"].split()}
    stop = {"what", "where", "who", "which", "is", "the", "of", "a", "in", "does", "do", "was", "for", "s", "did"}
    qrels = read_qrels(demo_world, "test")
    by_q: dict[str, list[str]] = {}
    for q in qrels:
        if q.relevance == 2:
            by_q.setdefault(q.query_id, []).append(q.doc_id)
    shared, total = 0, 0
    for q in read_queries(demo_world / "queries.test.tsv"):
        words = {w for w in re.findall(r"[a-z]+", q.text.lower()) if w not in stop and w not in names}
        for did in by_q[q.query_id]:
            dwords = set(re.findall(r"[a-z]+", docs[did]))
            total += 1
            shared += bool(words & dwords)
    assert total > 300
    assert shared / total < 0.1, f"{shared}/{total} judged passages share a non-name query word"


@pytest.fixture(scope="module")
def demo_bm25(demo_world, tmp_path_factory):
    from radcot.retrieval.bm25 import BM25Retriever

    out = tmp_path_factory.mktemp("demo-idx") / "bm25"
    BM25Retriever.build(demo_world, out, show_progress=False)
    return BM25Retriever(out)


@pytest.mark.java
@pytest.mark.slow
def test_kb_cot_bridges_the_vocabulary_mismatch(demo_world, demo_bm25):
    """BM25 alone ranks distractors first; the KB teacher's CoT (radcot formula) lifts nDCG@10 a lot."""
    from radcot.evaluation import evaluate
    from radcot.expansion import ExpandedSearcher, QueryExpander
    from radcot.demo.kb import KBTeacher

    queries = read_queries(demo_world / "queries.test.tsv")
    qrels = demo_world / "qrels" / "test.tsv"
    results = {}
    for formula in ("none", "radcot", "query2doc"):
        searcher = ExpandedSearcher(demo_bm25, QueryExpander(KBTeacher(demo_world), formula=formula))
        run = searcher.run(queries, k=100)
        results[formula] = evaluate(qrels, run, ["nDCG@10", "RR@10", "R@100"])
    print("\nBM25 on the demo world (200 test queries):")
    for formula, r in results.items():
        print(f"  {formula:10s} " + "  ".join(f"{k} {v:.4f}" for k, v in r.items()))
    plain, cot = results["none"]["nDCG@10"], results["radcot"]["nDCG@10"]
    assert plain < 0.35, "plain BM25 should struggle (vocabulary mismatch)"
    assert cot > plain + 0.2, "the teacher's CoT should help a lot"
    assert results["query2doc"]["nDCG@10"] > plain + 0.2


@pytest.mark.fast
def test_make_world_cli(tmp_path):
    from radcot.cli import main

    out = tmp_path / "tiny"
    assert main(["make-world", "--out", str(out), "--scale", "0.1", "--seed", "5", "--n-test", "10"]) == 0
    m = json.loads((out / "MANIFEST.json").read_text())
    assert m["seed"] == 5 and m["sizes"]["queries_test"] == 10
    assert main(["make-world", "--out", str(out), "--scale", "0.1", "--no-overwrite"]) == 1


@pytest.mark.fast
def test_bytes_do_not_depend_on_the_hash_seed(demo_world, tmp_path):
    """No set/dict-order leaks: another PYTHONHASHSEED in a fresh process writes the shipped bytes."""
    import os
    import subprocess
    import sys

    out = tmp_path / "w"
    code = f"from radcot.demo.world import make_world; make_world({str(out)!r}, seed=13)"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO)
    assert (out / "MANIFEST.json").read_bytes() == (demo_world / "MANIFEST.json").read_bytes()
