"""The public API: each name exported by ``radcot`` does its job on a tiny input, and ``import radcot``
(and the light names) loads no JVM, torch or FAISS. Heavy names (retrievers, students, pipelines) are
checked here for what they do without their heavy dependencies (argument and path checks, identity with
their module); their full behaviour is tested in their own modules on real indexes and models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import radcot
from radcot import Doc, Qrel, Query, ScoredDoc

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("jnius", "torch", "faiss", "transformers", "pyserini", "sentence_transformers")


def test_every_export_is_radcots_own_and_listed():
    assert "__version__" in radcot.__all__ and radcot.__version__.count(".") == 2
    for name in radcot.__all__:
        if name == "__version__":
            continue
        obj = getattr(radcot, name)
        assert getattr(obj, "__module__", "").startswith("radcot"), (name, obj)
    assert set(dir(radcot)) == set(radcot.__all__)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        radcot.NoSuchName  # noqa: B018


@pytest.mark.fast
def test_demo_names_live_in_radcot_demo_not_in_the_top_level_api():
    """make_world and KBTeacher are the demo's (radcot.demo), not product nouns; importing the demo stays light."""
    import radcot.demo

    assert not {"make_world", "KBTeacher"} & set(radcot.__all__)
    for name in ("make_world", "KBTeacher"):
        with pytest.raises(AttributeError):
            getattr(radcot, name)
        assert getattr(radcot.demo, name).__module__.startswith("radcot.demo.")
    code = "import sys, radcot.demo; print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.fast
def test_import_is_light():
    code = ("import sys, radcot, radcot.cli, radcot.pipeline, radcot.report, radcot.evaluation; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.fast
def test_light_names_work_without_loading_heavy_modules(tmp_path):
    """Records, readers, evaluation, fusion, expansion and the retriever contract, in a fresh process."""
    code = f"""
import sys, radcot
from radcot import Query, ScoredDoc
run = {{"q1": {{"d1": 2.0, "d2": 1.0}}}}
radcot.write_run(run, {str(tmp_path / 'r.trec')!r})
assert radcot.read_run({str(tmp_path / 'r.trec')!r}) == run
assert radcot.reciprocal_rank_fusion([run])["q1"] == {{"d1": 1 / 61, "d2": 1 / 62}}
assert radcot.expand_text("tides", "the moon pulls", "query2doc") == "tides " * 5 + " the moon pulls"
assert isinstance(object(), radcot.Retriever) is False
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


@pytest.mark.fast
def test_cli_help_lists_commands_and_is_light():
    code = ("import sys; from radcot.cli import main; rc = main(['--help']); "
            "print('HEAVY', [m for m in ('jnius', 'torch', 'faiss') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for cmd in ("index", "search", "evaluate", "teach", "train", "generate", "expand", "run", "table"):
        assert f"  {cmd}" in out.stdout
    assert "HEAVY []" in out.stdout


# ------------------------------------------------------------------------------------------------ records, data


@pytest.mark.fast
def test_records_and_errors():
    assert Doc("d1", "text", "Title").contents == "Title\ntext" and Doc("d2", "text").contents == "text"
    assert Query("1", "lift")._fields == ("query_id", "text")
    assert Qrel("1", "d1", 2).relevance == 2 and ScoredDoc("1", "d1", 0.5).score == 0.5
    err = radcot.DataFormatError("q.tsv", 3, "2 tab-separated fields", "1")
    assert isinstance(err, radcot.RadcotError)
    assert "q.tsv" in str(err) and "3" in str(err) and "2 tab-separated fields" in str(err)


@pytest.mark.fast
def test_readers_round_trip(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "T", "text": "lift"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "1", "text": "what is lift"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n")
    assert list(radcot.read_corpus(tmp_path)) == [Doc("d1", "lift", "T")]
    assert radcot.read_queries(tmp_path) == [Query("1", "what is lift")]
    assert radcot.read_qrels(tmp_path) == [Qrel("1", "d1", 1)]
    ds = radcot.load_dataset(tmp_path)
    assert isinstance(ds, radcot.Dataset) and ds.queries() == [Query("1", "what is lift")]
    with pytest.raises(radcot.RadcotError, match="missing' is neither a known name"):
        radcot.load_dataset(tmp_path / "missing")


def test_evaluate_and_paired_ttest():
    qrels = {"1": {"a": 1}, "2": {"b": 1}}
    good = {"1": {"a": 2.0, "x": 1.0}, "2": {"b": 2.0, "y": 1.0}}
    half = {"1": {"x": 2.0, "a": 1.0}, "2": {"b": 2.0, "y": 1.0}}
    assert radcot.evaluate(qrels, good, ["RR@10"]) == pytest.approx({"RR@10": 1.0})
    assert radcot.evaluate(qrels, half, ["RR@10"]) == pytest.approx({"RR@10": 0.75})  # (1/2 + 1) / 2
    t = radcot.paired_ttest({"1": 1.0, "2": 0.5, "3": 0.9}, {"1": 0.5, "2": 0.4, "3": 0.2})
    # by hand: differences b - a = -0.5, -0.1, -0.7; mean -0.4333, sd 0.3055, t = mean / (sd / sqrt(3))
    assert (t.n, t.delta, t.t) == (3, pytest.approx(-1.3 / 3), pytest.approx(-2.4568, rel=1e-3))
    assert 0.1 < t.p_value < 0.2


# ------------------------------------------------------------------------------------------------ retrieval


class DictRetriever:
    """A user's own retriever over a dict: anything keeping the Retriever contract plugs into radcot."""

    kind = "dict"
    index_dir = Path(".")
    config = {"kind": "dict"}

    def __init__(self, docs: dict[str, str]):
        self.docs = docs
        self.num_docs = len(docs)

    def search(self, query, k=10, query_id="q"):
        if isinstance(query, Query):
            query_id, query = query.query_id, query.text
        words = set(query.split())
        scored = [(sum(w in words for w in t.split()), d) for d, t in self.docs.items()]
        return [ScoredDoc(query_id, d, float(s)) for s, d in sorted(scored, key=lambda x: (-x[0], x[1])) if s][:k]

    def batch_search(self, queries, k=1000, threads=1):
        return {q.query_id: self.search(q, k) for q in radcot.retrieval.base.as_queries(queries)}

    def run(self, queries, k=1000, threads=1):
        return {q: {h.doc_id: h.score for h in hs} for q, hs in self.batch_search(queries, k).items()}

    def write_run(self, queries, path, k=1000):
        radcot.write_run(self.run(queries, k), path)

    def doc(self, doc_id):
        return Doc(doc_id, self.docs[doc_id]) if doc_id in self.docs else None

    def close(self):
        pass


@pytest.mark.fast
def test_retriever_protocol_and_expanded_searcher():
    r = DictRetriever({"d1": "moon tides pull", "d2": "sun heat", "d3": "ocean tides"})
    assert isinstance(r, radcot.Retriever)
    ex = radcot.QueryExpander({"1": "the moon pulls the ocean"}, formula="query2doc")
    assert ex.expand_all([Query("1", "tides")]) == {"1": "tides " * 5 + " the moon pulls the ocean"}
    hits = radcot.ExpandedSearcher(r, ex).batch_search([Query("1", "tides")], k=2)
    assert [h.doc_id for h in hits["1"]] == ["d1", "d3"]  # the expansion's "moon" lifts d1 over d3


@pytest.mark.fast
def test_retriever_classes_check_their_index_before_loading_anything(tmp_path):
    for cls in (radcot.BM25Retriever, radcot.DenseRetriever):
        with pytest.raises(FileNotFoundError, match="radcot index"):
            cls(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        radcot.load_retriever(tmp_path / "missing")
    from radcot.retrieval.bm25 import BM25Retriever

    assert radcot.BM25Retriever is BM25Retriever


@pytest.mark.fast
def test_fusion():
    a, b = {"q": {"x": 3.0, "y": 1.0}}, {"q": {"y": 9.0}}
    assert radcot.reciprocal_rank_fusion([a, b], rrf_constant=0) == {"q": {"y": 1 / 2 + 1 / 1, "x": 1 / 1}}


# ------------------------------------------------------------------------------------------------ expansion


@pytest.mark.fast
def test_expansion_functions(tmp_path):
    exp = radcot.expand_queries([Query("1", "lift"), Query("2", "drag")], {"1": "wings make lift", "2": None},
                                formula="query2doc")
    assert exp == {"1": "lift " * 5 + " wings make lift", "2": "drag"}  # no CoT: the query unexpanded
    radcot.write_expansions(exp, tmp_path / "exp.tsv")
    assert radcot.read_expansions(tmp_path / "exp.tsv") == exp


# ------------------------------------------------------------------------------------------------ teacher on a tiny world


@pytest.mark.fast
def test_world_teacher_and_teach(tmp_path):
    import radcot.demo

    manifest = radcot.demo.make_world(tmp_path / "world", seed=3, scale=0.02)
    assert (tmp_path / "world" / "corpus.jsonl").is_file() and manifest["seed"] == 3
    queries = radcot.read_queries(tmp_path / "world" / "queries.test.tsv")[:3]
    be = radcot.get_backend("kb", world=tmp_path / "world")
    assert isinstance(be, radcot.demo.KBTeacher)
    summary = radcot.teach(be, queries, tmp_path / "cots.jsonl", params=radcot.GenerationParams(max_tokens=150),
                           show_progress=False)
    assert summary.done == 3 and summary.failed == 0
    recs = radcot.read_teacher_output(tmp_path / "cots.jsonl")
    assert set(recs) == {q.query_id for q in queries} and all(r["text"].strip() for r in recs.values())
    with pytest.raises(ValueError):
        radcot.GenerationParams(max_tokens=0)


# ------------------------------------------------------------------------------------------------ heavy names


def test_heavy_names_are_their_modules_objects():
    """Student, pipeline and report names resolve to the objects their modules define (tested there)."""
    import importlib

    for name, module in radcot._EXPORTS.items():
        assert getattr(importlib.import_module(module), name) is getattr(radcot, name), name


@pytest.mark.fast
def test_pipeline_config_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: x\ndataset: {path: /nonexistent}\nrows: [{name: bm25}]\n")
    with pytest.raises(radcot.RadcotError, match="/nonexistent"):
        radcot.Pipeline.from_yaml(bad, runs_dir=tmp_path).run()
