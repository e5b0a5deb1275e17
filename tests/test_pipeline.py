"""Pipeline configs, the stage cache and the table computed from run files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from radcot.pipeline import Pipeline, PipelineError, apply_overrides

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.fast
@pytest.mark.parametrize("name", ["demo", "vaswani", "cranfield", "trec-dl-2019", "trec-dl-2020", "msmarco-dev"])
def test_shipped_pipelines_parse(name):
    p = Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml")
    assert p.rows and p.config["evaluation"]["baseline"] == p.rows[0].name


@pytest.mark.fast
def test_paper_pipelines_have_the_paper_rows():
    for name in ("trec-dl-2019", "trec-dl-2020", "msmarco-dev"):
        p = Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml")
        kinds = [(r.kind, r.student and r.student.model, r.student and r.student.context) for r in p.rows]
        assert kinds[0] == ("bm25", None, None) and p.rows[1].rm3
        assert ("cots", None, None) in kinds
        assert ("student", None, False) in kinds  # distillation without retrieval (flan-t5-base, the default)
        for size in ("small", "base", "large"):
            assert ("student", f"google/flan-t5-{size}", True) in kinds
        assert p.cfg.student.n_context == 10 and p.cfg.student.generate.n_context == 50


@pytest.mark.fast
def test_overrides_and_params(tmp_path):
    cfg = {"experiment": "x", "params": {"data": "/nowhere"}, "dataset": {"path": "${data}/sub"},
           "rows": [{"name": "bm25"}]}
    p = Pipeline(apply_overrides(cfg, ["params.data=/d", "student.train.max_steps=7"]))
    assert p.config["dataset"]["path"] == "/d/sub"
    assert p.config["student"]["train"]["max_steps"] == 7
    with pytest.raises(PipelineError, match="key.subkey=value"):
        apply_overrides(cfg, ["oops"])


@pytest.mark.fast
def test_bad_configs_name_the_problem(tmp_path):
    with pytest.raises(PipelineError, match="experiment"):
        Pipeline({"rows": [{"name": "a"}]})
    with pytest.raises(PipelineError, match="duplicate row"):
        Pipeline({"experiment": "x", "rows": [{"name": "a"}, {"name": "a"}], "evaluation": {"baseline": "a"}})
    with pytest.raises(PipelineError, match="baseline"):
        Pipeline({"experiment": "x", "rows": [{"name": "a"}]})
    with pytest.raises(PipelineError, match="params.nope"):
        Pipeline({"experiment": "x", "dataset": {"path": "${nope}"}, "rows": [{"name": "bm25"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(PipelineError, match="bad.yaml"):
        Pipeline.from_yaml(bad)


@pytest.mark.java
def test_bm25_pipeline_caches_and_table_matches_ir_measures(cranfield, tmp_path):
    """A BM25/RM3 pipeline on Cranfield: cached re-run, and the table equals ir-measures on the run files."""
    import ir_measures

    from radcot.report import format_table, results_table, write_report

    cfg = {"experiment": "cran", "dataset": {"path": str(cranfield)},
           "rows": [{"name": "bm25", "label": "BM25"}, {"name": "rm3", "label": "BM25+RM3", "rm3": True}]}
    exp = Pipeline(cfg, runs_dir=tmp_path, show_progress=False).run()
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["inputs"]["corpus_sha256"]
    assert {s["reused"] for s in manifest["stages"].values()} == {False}

    table = results_table(exp)
    qrels = {}
    for line in (cranfield / "qrels" / "test.tsv").read_text().splitlines()[1:]:  # BEIR: header, qid docid rel
        qid, docid, rel = line.split("\t")
        qrels.setdefault(qid, {})[docid] = int(rel)
    for row in table.rows:
        run = list(ir_measures.read_trec_run(row.run))
        per_q = {q: 0.0 for q in qrels}
        for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run):
            per_q[m.query_id] = m.value
        assert row.metrics["nDCG@10"] == pytest.approx(sum(per_q.values()) / len(qrels), abs=1e-9)
    # the shared data README's pyserini BM25 figure
    assert table.row("bm25").metrics["nDCG@10"] == pytest.approx(0.3510, abs=5e-4)
    assert "rm3" in [r.name for r in table.rows] and table.row("rm3").p_value
    md = format_table(table)
    assert "BM25+RM3" in md and "0.35" in md
    report = write_report(exp, table)
    assert report.is_file() and list(report.parent.glob("delta-nDCG_10-rm3.png"))

    # unchanged config: every stage is reused
    exp2 = Pipeline(cfg, runs_dir=tmp_path, show_progress=False).run()
    manifest = json.loads((exp2 / "manifest.json").read_text())
    assert {s["reused"] for s in manifest["stages"].values()} == {True}
    # changing one row's parameters redoes that row's search only
    cfg["rows"][1]["b"] = 0.6
    Pipeline(cfg, runs_dir=tmp_path, show_progress=False).run()
    manifest = json.loads((exp2 / "manifest.json").read_text())
    redone = sorted(n for n, s in manifest["stages"].items() if not s["reused"])
    assert redone == ["search-rm3"]
    assert manifest["stages"]["index"]["shared"] and "/_shared/index-" in manifest["stages"]["index"]["dir"]

    # a truncated cached run: the table refuses it, and the pipeline reruns that stage (never "cached")
    from radcot.experiment.store import ChangedOutputError

    bm25_run = Path(manifest["stages"]["search-bm25"]["dir"]) / "run.trec"
    lines = bm25_run.read_text().splitlines(keepends=True)
    bm25_run.write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(ChangedOutputError, match="changed since its stage finished"):
        results_table(exp2)
    Pipeline(cfg, runs_dir=tmp_path, show_progress=False).run()
    manifest = json.loads((exp2 / "manifest.json").read_text())
    assert sorted(n for n, s in manifest["stages"].items() if not s["reused"]) == ["search-bm25"]
    assert len(bm25_run.read_text().splitlines()) == len(lines)
    assert results_table(exp2).row("bm25").metrics["nDCG@10"] == pytest.approx(0.3510, abs=5e-4)

    # a deleted cached run: the table refuses it (not a table with the row silently missing); the pipeline rebuilds it
    bm25_run.unlink()
    with pytest.raises(ChangedOutputError, match="changed since its stage finished"):
        results_table(exp2)
    Pipeline(cfg, runs_dir=tmp_path, show_progress=False).run()
    assert results_table(exp2).row("bm25").metrics["nDCG@10"] == pytest.approx(0.3510, abs=5e-4)


@pytest.mark.slow
@pytest.mark.java
def test_demo_pipeline_small_end_to_end_and_stage_cache(demo_world, tmp_path):
    """A small config of pipelines/demo.yaml end to end; a changed training config reruns only what depends on it."""
    from radcot.report import results_table

    overrides = [
        f"params.data={demo_world}", "dataset.limit_queries=24", "training_queries.limit=96",
        "student.n_context=2", "student.train.max_steps=4", "student.train.batch_size=8",
        "student.context_retriever=bm25", "student.train.eval_every=0", "student.train.save_every=2", "student.train.eval_max_examples=4",
        "student.train.text_maxlength=32", "student.train.target_maxlength=24",
        "student.model=tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=600",
        "student.generate.max_new_tokens=12", "student.generate.n_context=3", "evaluation.k=100",
        "rows=[{name: bm25}, {name: teacher-cot, cots: teacher}, {name: radcot, student: {context: true}}]",
    ]
    p = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides, runs_dir=tmp_path, show_progress=False)
    exp = p.run()
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert manifest["versions"]["torch"] and manifest["inputs"]["qrels_sha256"]
    table = results_table(exp)
    assert [r.name for r in table.rows] == ["bm25", "teacher-cot", "radcot"] and table.n_queries == 24
    assert table.row("teacher-cot").metrics["nDCG@10"] > table.row("bm25").metrics["nDCG@10"]
    gen = next(exp.glob("generate-radcot-f0-*/cot.jsonl"))
    assert len(gen.read_text().splitlines()) == 24

    # trained with 2 passages per query, generated with 3 (student.generate.n_context)
    from radcot.cot import config_path
    from radcot.student.profile import StudentProfile

    generated = json.loads(config_path(gen).read_text())
    assert generated["params"]["k"] == 3 and generated["fid_config"]["n_context"] == 2
    # the row's servable student: the checkpoint with the generate stage's settings and retriever
    stages = manifest["stages"]
    assert [r["students"] for r in manifest["rows"]] == [None, None, [str(exp / "students" / "radcot")]]
    student = StudentProfile.load(exp / "students" / "radcot")
    assert student.checkpoint == Path(stages["train-radcot-f0"]["dir"]) / "run" / "best"
    assert (student.inference.n_context, student.inference.formula) == (3, "radcot")
    assert student.inference.decoding.max_new_tokens == 12 and student.inference.decoding.no_repeat_ngram_size == 3
    assert student.retriever.kind == "bm25" and student.retriever.params == {"k1": 0.9, "b": 0.4}
    assert student.retriever.indexes[0].path == str((Path(stages["index"]["dir"]) / "index").resolve())
    assert str(student.open_retriever().index_dir) == student.retriever.indexes[0].path

    p2 = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides + ["student.train.lr=0.01"],
                            runs_dir=tmp_path, show_progress=False)
    p2.run()
    stages = json.loads((exp / "manifest.json").read_text())["stages"]
    redone = sorted(n for n, s in stages.items() if not s["reused"])
    assert redone == ["generate-radcot-f0", "search-radcot", "train-radcot-f0"]


@pytest.mark.slow
@pytest.mark.java
def test_row_samples_fusion_and_limits_are_applied(demo_world, tmp_path):
    """rows[i].samples (rrf / concat), max_words and max_query_terms change what is searched (they were accepted
    by the schema and ignored by the pipeline, or refused although documented)."""
    import re

    from radcot.data.readers import read_run
    from radcot.expansion import read_expansions

    rows = ("rows=[{name: bm25}, {name: teacher-cot, cots: teacher}, {name: tc-cut, cots: teacher, max_words: 4, "
            "max_query_terms: 6}, {name: s1, student: {context: true}}, {name: s3, student: {context: true}, "
            "samples: 3, sample_fusion: concat}, {name: s2, student: {context: true}, samples: 2}]")
    overrides = [
        f"params.data={demo_world}", "dataset.limit_queries=12", "training_queries.limit=48",
        "student.n_context=2", "student.train.max_steps=2", "student.train.batch_size=8", "student.context_retriever=bm25",
        "student.train.eval_every=0", "student.train.save_every=2", "student.train.text_maxlength=32",
        "student.train.target_maxlength=24", "student.model=tiny-t5:d_model=32,layers=1,heads=2,d_ff=64,vocab_size=600",
        "student.generate.max_new_tokens=10", "evaluation.k=50", rows,
    ]
    exp = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", overrides, runs_dir=tmp_path, show_progress=False).run()
    stages = json.loads((exp / "manifest.json").read_text())["stages"]
    assert sum(n.startswith("train-") for n in stages) == 3 and len({stages[n]["dir"] for n in stages
                                                                       if n.startswith("train-")}) == 1

    def records(row):
        return [json.loads(line) for line in next(exp.glob(f"generate-{row}-f0-*/cot.jsonl")).read_text().splitlines()]

    def expanded(row):
        return read_expansions(next(exp.glob(f"search-{row}-*/expanded.tsv")))

    assert all("texts" not in r for r in records("s1"))
    s3 = records("s3")
    assert len(s3) == 12 and all(len(r["texts"]) == 3 and r["params"]["do_sample"] for r in s3)
    for r in s3:  # concat: one expansion that holds every sample
        assert all(" ".join(t.split()) in expanded("s3")[r["query_id"]] for t in r["texts"])
    s2 = records("s2")
    assert all(len(r["texts"]) == 2 for r in s2)
    assert read_run(next(exp.glob("search-s2-*/run.trec"))) != read_run(next(exp.glob("search-s1-*/run.trec")))
    full, cut = expanded("teacher-cot"), expanded("tc-cut")
    for qid, text in cut.items():
        assert len({w.casefold() for w in re.findall(r"\w+", text)}) <= 6 and len(text) < len(full[qid])


@pytest.mark.fast
def test_samples_on_a_cots_row_is_refused():
    from radcot.experiment.schema import validate_config
    from radcot.pipeline import PipelineError

    cfg = {"experiment": "x", "dataset": {"path": "d"}, "rows": [{"name": "t", "cots": "teacher", "samples": 3}]}
    with pytest.raises(PipelineError, match=r"rows\[0\].*samples: only student rows"):
        validate_config(cfg)


def test_train_stage_keys_leave_out_an_unset_decoding(tmp_path, monkeypatch):
    """TrainConfig.decoding came after runs were stored: unset, it is not part of the train stages' keys (the
    runs of an earlier radcot are reused, not retrained); set, it is."""
    monkeypatch.chdir(REPO)  # demo.yaml's data/demo
    plan = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", runs_dir=tmp_path).plan()
    trains = {n: e for n, e in plan.items() if n.startswith("train-")}
    assert trains and all("decoding" not in e["config"] for e in trains.values())
    from radcot.experiment.config import apply_overrides, load_config

    cfg = apply_overrides(load_config(REPO / "pipelines" / "demo.yaml"), ["student.train.decoding.max_new_tokens=64"])
    changed = Pipeline(cfg, source="demo.yaml", runs_dir=tmp_path).plan()
    assert all(changed[n]["config"]["decoding"] == {"max_new_tokens": 64} for n in trains)
    assert all(changed[n]["key"] != trains[n]["key"] for n in trains)
