"""The PyTerrier integration: RADCoTExpander keeps PyTerrier's query-rewriter conventions and composes with a
radcot retriever in ``pt.Experiment``, on the tiny demo student and a real BM25 index, without Terrier's Java."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from _demo_student import REPO, demo_build, demo_index, demo_student  # noqa: F401 - session fixtures

pytestmark = pytest.mark.java

MAX_NEW = 48


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def test_import_radcot_does_not_import_pyterrier():
    code = ("import sys, radcot, radcot.serving, radcot.integrations; radcot.Expander; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyterrier', 'pandas', 'jnius')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr


try:
    import pandas as pd
    import pyterrier as pt
except ImportError:
    pt = pd = None
#: everything below needs PyTerrier; the import test above runs without it
needs_pyterrier = pytest.mark.skipif(pt is None, reason="PyTerrier is not installed (pip install 'radcot[pyterrier]')")


@pytest.fixture(scope="module")
def rewriter(demo_student, demo_index):
    import torch

    from radcot.integrations.pyterrier import RADCoTExpander

    torch.set_num_threads(1)
    return RADCoTExpander.load(demo_student, index=demo_index, max_new_tokens=MAX_NEW, device="cpu")


@pytest.fixture(scope="module")
def topics(demo_world) -> "pd.DataFrame":
    rows = [line.split("\t", 1) for line in (demo_world / "queries.test.tsv").read_text().splitlines()[:8]]
    return pd.DataFrame(rows, columns=["qid", "query"])


@needs_pyterrier
def test_rewrites_query_and_keeps_the_original_in_query_0(rewriter, topics):
    out = rewriter(topics)
    assert list(out.columns) == ["qid", "query_0", "query"]
    assert list(out["qid"]) == list(topics["qid"]) and list(out["query_0"]) == list(topics["query"])
    assert list(out["query"]) == [rewriter.expander.expand(t).expanded for t in topics["query"]]
    assert list(topics.columns) == ["qid", "query"]  # the input frame is not changed


@needs_pyterrier
def test_a_second_rewrite_pushes_query_0_to_query_1(rewriter, topics):
    twice = (rewriter >> rewriter)(topics.head(2))
    assert list(twice["query_1"]) == list(topics["query"].head(2))
    assert list(twice["query_0"]) == [rewriter.expander.expand(t).expanded for t in topics["query"].head(2)]


@needs_pyterrier
def test_duplicates_extra_columns_cot_and_formula(rewriter, topics):
    from radcot.integrations.pyterrier import RADCoTExpander

    frame = pd.concat([topics.head(2), topics.head(1)]).assign(extra=[1, 2, 3])
    out = RADCoTExpander(rewriter.expander, formula="query2doc", cot_column="cot")(frame)
    assert list(out["extra"]) == [1, 2, 3] and out["query"].iloc[0] == out["query"].iloc[2]
    exp = rewriter.expander.expand(frame["query"].iloc[1], formula="query2doc")
    assert (out["query"].iloc[1], out["cot"].iloc[1]) == (exp.expanded, exp.cot)


@needs_pyterrier
def test_empty_frame_and_missing_column(rewriter):
    from radcot.records import RadcotError

    out = rewriter(pd.DataFrame({"qid": [], "query": []}))
    assert len(out) == 0 and {"query", "query_0"} <= set(out.columns)
    with pytest.raises(RadcotError, match=r"columns \['qid', 'query'\]; missing \['query'\]"):
        rewriter(pd.DataFrame({"qid": ["1"], "text": ["x"]}))


@needs_pyterrier
def test_non_string_queries_are_refused_naming_the_row(rewriter):
    """Issue 26: the transformer str()-ed every query, so a missing query (None/NaN) was expanded as "None"."""
    from radcot.integrations.pyterrier import RADCoTRetriever

    frame = pd.DataFrame({"qid": ["1", "2"], "query": ["what is bm25", None]})
    with pytest.raises(TypeError, match=r"row 1 \(qid '2'\) has query (None|nan) of type"):  # pandas 3: nan
        rewriter(frame)
    with pytest.raises(TypeError, match=r"row 1 \(qid '2'\) has query nan"):
        RADCoTRetriever(rewriter.expander.retriever, k=5)(frame.assign(query=["x", float("nan")]))


CHILD = r"""
import json, sys
import pandas as pd
from ir_measures import R, nDCG
import pyterrier as pt                      # imported before radcot's JVM starts, as a PyTerrier user would
from radcot.integrations.pyterrier import RADCoTExpander, RADCoTRetriever
from radcot.retrieval.bm25 import BM25Retriever

student, index, world = sys.argv[1:4]
topics = pd.DataFrame([l.split("\t", 1) for l in open(world + "/queries.test.tsv").read().splitlines()[:30]],
                      columns=["qid", "query"])
qrels = pd.read_csv(world + "/qrels/test.tsv", sep="\t", dtype=str).rename(
    columns={"query-id": "qid", "corpus-id": "docno", "score": "label"}).astype({"label": int})
bm25 = BM25Retriever(index)
expand = RADCoTExpander.load(student, index=bm25, max_new_tokens=48, device="cpu")
retrieve = RADCoTRetriever(bm25, k=100)
table = pt.Experiment([retrieve, expand >> retrieve], topics, qrels, [nDCG @ 10, R @ 100],
                      names=["bm25", "radcot >> bm25"], verbose=False)
ranked = (expand >> retrieve)(topics.head(1))
direct = bm25.search(expand.expander.expand(topics["query"][0]).expanded, k=100)
print(json.dumps({"table": table.to_dict("records"), "pt_java_started": bool(pt.java.started()),
                  "docnos": list(ranked["docno"]), "ranks": [int(r) for r in ranked["rank"]],
                  "query_0": ranked["query_0"].iloc[0], "direct": [h.doc_id for h in direct],
                  "num_docs": bm25.num_docs}))
"""


@needs_pyterrier
def test_experiment_runs_with_a_radcot_retriever_and_pyserini_jvm(demo_student, demo_index, demo_world):
    """In a fresh process (one JVM per process): PyTerrier imported first, radcot's (pyserini's) JVM still works."""
    p = subprocess.run([sys.executable, "-c", CHILD, str(demo_student), str(demo_index), str(demo_world)],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["pt_java_started"] is False and r["num_docs"] == 5438
    assert r["docnos"] == r["direct"] and r["ranks"] == list(range(len(r["direct"])))
    rows = {row["name"]: row for row in r["table"]}
    assert set(rows) == {"bm25", "radcot >> bm25"}
    for row in rows.values():
        assert 0 < row["nDCG@10"] <= 1 and 0 < row["R@100"] <= 1
    assert rows["bm25"]["nDCG@10"] != rows["radcot >> bm25"]["nDCG@10"]  # the expansion reached the retriever
