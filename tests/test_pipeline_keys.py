"""Stage keys from content, computed without running anything (``Pipeline.plan``), and the schema walk: every
config field either changes the key of the stage it configures or is documented as changing no stage's output."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radcot.experiment import schema
from radcot.experiment.config import apply_overrides
from radcot.pipeline import Pipeline, PipelineError

pytestmark = pytest.mark.fast

DOCS = [("d1", "tidal forces move the oceans"), ("d2", "the moon orbits the earth"), ("d3", "bm25 ranks passages"),
        ("d4", "lucene stores an inverted index"), ("d5", "students learn from teachers"), ("d6", "a wave breaks")]
QUERIES = [(f"q{i}", f"question number {i} about the moon") for i in range(1, 9)]


def _write_beir(d: Path, docs=DOCS) -> Path:
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in docs))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in QUERIES))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(1, 5)))
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i - 4}\t1\n" for i in range(5, 9)))
    return d


def _write_msmarco(d: Path, n_topics: int) -> Path:
    from radcot.data.registry import NAMED

    spec = NAMED["msmarco-passage/trec-dl-2019"]
    d.mkdir(parents=True)
    (d / "collection.tsv").write_text("".join(f"{i}\t{t}\n" for i, (_, t) in enumerate(DOCS)))
    (d / spec.topics_file).write_text("".join(f"{100 + i}\tdl question {i}\n" for i in range(n_topics)))
    (d / spec.qrels_file).write_text("".join(f"{100 + i} Q0 {i} 2\n" for i in range(n_topics)))
    (d / "queries.train.tsv").write_text("".join(f"{900 + i}\ttraining question {i}\n" for i in range(4)))
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny BEIR dataset, a changed copy, MS MARCO-format directories, CoT files and an index directory."""
    root = tmp_path_factory.mktemp("keys")
    w = {"DATA": _write_beir(root / "data"), "DATA2": _write_beir(root / "data2", DOCS[:-1] + [("d6", "a storm")]),
         "MS": _write_msmarco(root / "ms", 3), "MS2": _write_msmarco(root / "ms2", 2)}
    for name, text in (("COTS", "the moon pulls"), ("COTS2", "the sun pulls")):
        w[name] = root / f"{name.lower()}.tsv"
        w[name].write_text("".join(f"{q}\t{t}\t{text} water\t0.9\n" for q, t in QUERIES))
    w["QFILE"] = root / "train-queries.tsv"
    w["QFILE"].write_text("t1\tan extra training question\nt2\tanother one\n")
    w["IDX"] = root / "index"
    w["IDX"].mkdir()
    (w["IDX"] / "segments_1").write_bytes(b"\0")
    from radcot.data.fingerprint import collection_fingerprint

    # an index of DATA's corpus (the pipeline refuses an index of another collection)
    (w["IDX"] / "radcot_index.json").write_text(json.dumps({
        "kind": "bm25", "collection_fingerprint": collection_fingerprint(w["DATA"] / "corpus.jsonl"), "num_docs": 6,
        "complete": True}))
    w["RUNS"] = root / "runs"
    return w


def _base(w: dict[str, Path]) -> dict:
    return {
        "experiment": "keys", "dataset": {"path": str(w["DATA"])},
        "teacher": {"backend": "replay", "args": {"path": str(w["COTS"])}},
        "student": {"model": "tiny-t5:d_model=32,layers=1", "n_context": 2, "train": {"max_steps": 3}},
        "rows": [{"name": "bm25"},
                 {"name": "teacher-cot", "cots": "teacher", "tune": {"formula": ["radcot"], "max_words": [4, None]}},
                 {"name": "file-cots", "cots": str(w["COTS"])},
                 {"name": "radcot", "student": {"context": True}}],
    }


def _fill(w: dict[str, Path], setting: str) -> str:
    """``{DATA}`` -> the world's path (YAML's own braces are left alone)."""
    for name, path in w.items():
        setting = setting.replace("{" + name + "}", str(path))
    return setting


def _keys(w: dict[str, Path], sets: list[str]) -> dict[str, str]:
    return Pipeline(apply_overrides(_base(w), [_fill(w, s) for s in sets]), runs_dir=w["RUNS"]).stage_keys()


NO_TUNE = "rows.teacher-cot.tune=null"
MS = [NO_TUNE, "dataset.path=null", "dataset.name=msmarco-passage/trec-dl-2019", "dataset.data_dir={MS}"]
#: (model, field) -> (settings of the base config, the setting under test, the stage whose key it must change);
#: stage None: the field is documented as changing no stage's output, and no key may change
FIELDS: dict[tuple[str, str], tuple[list[str], list[str], str | None]] = {
    ("PipelineConfig", "experiment"): ([], ["experiment=other"], None),
    ("PipelineConfig", "seed"): ([], ["seed=7"], "data-radcot-f0"),
    ("PipelineConfig", "params"): ([], ["params.unused=1"], None),
    ("PipelineConfig", "teacher_eval"): ([NO_TUNE], ["teacher_eval={backend: replay, args: {path: {COTS2}}}"],
                                         "teacher-eval"),
    ("DatasetSection", "path"): ([], ["dataset.path={DATA2}"], "index"),
    ("DatasetSection", "name"): ([], MS, "search-bm25"),
    ("DatasetSection", "data_dir"): (MS, ["dataset.data_dir={MS2}"], "search-bm25"),
    ("DatasetSection", "index"): ([], ["dataset.index={IDX}"], "search-bm25"),
    ("DatasetSection", "limit_queries"): ([], ["dataset.limit_queries=2"], "search-bm25"),
    ("RetrieverSection", "k1"): ([], ["retriever.k1=1.2"], "search-bm25"),
    ("RetrieverSection", "b"): ([], ["retriever.b=0.7"], "search-bm25"),
    ("RetrieverSection", "threads"): ([], ["retriever.threads=1"], "index"),
    ("RetrieverSection", "heap"): ([], ["retriever.heap=1g"], None),
    ("TeacherSection", "backend"): ([], ["teacher.backend=hf", "teacher.args={}"], "teacher-train"),
    ("TeacherSection", "args"): ([], ["teacher.args={path: {COTS2}}"], "teacher-train"),
    ("TeacherSection", "prompt"): ([], ["teacher.prompt=query2doc"], "teacher-train"),
    ("TeacherSection", "params"): ([], ["teacher.params={max_tokens: 50}"], "teacher-train"),
    ("TeacherSection", "concurrency"): ([], ["teacher.concurrency=9"], None),
    ("TeacherSection", "limit"): ([], ["teacher.limit=2"], "teacher-train"),
    ("TrainingQueriesSection", "mode"): ([], ["training_queries.mode=kfold"], "data-radcot-f0"),
    ("TrainingQueriesSection", "queries"): ([], ["training_queries.queries={QFILE}"], "teacher-train"),
    ("TrainingQueriesSection", "folds"): (["training_queries.mode=kfold"], ["training_queries.folds=2"],
                                          "data-radcot-f0"),
    ("TrainingQueriesSection", "limit"): ([], ["training_queries.limit=2"], "teacher-train"),
    ("TrainingQueriesSection", "passages"): ([NO_TUNE, "training_queries.mode=synthetic"],
                                             ["training_queries.passages=3"], "teacher-synthetic-queries"),
    ("TrainingQueriesSection", "prompt"): ([NO_TUNE, "training_queries.mode=synthetic"],
                                           ["training_queries.prompt='Ask about: {query}'"], "teacher-synthetic-queries"),
    ("TrainingQueriesSection", "max_tokens"): ([NO_TUNE, "training_queries.mode=synthetic"],
                                               ["training_queries.max_tokens=8"], "teacher-synthetic-queries"),
    ("StudentSection", "model"): ([], ["student.model=tiny-t5:d_model=64"], "train-radcot-f0"),
    ("StudentSection", "n_context"): ([], ["student.n_context=3"], "data-radcot-f0"),
    ("StudentSection", "train"): ([], ["student.train={max_steps: 3, lr: 0.01}"], "train-radcot-f0"),
    ("StudentSection", "generate"): ([], ["student.generate={max_new_tokens: 7}"], "generate-radcot-f0"),
    ("StudentSection", "context_retriever"): ([], ["student.context_retriever=dense"], "data-radcot-f0"),
    ("StudentSection", "dense_encoder"): (["student.context_retriever=dense"], ["student.dense_encoder=my/encoder"],
                                          "data-radcot-f0"),
    ("StudentSection", "fusion_depth"): (["student.context_retriever=fused"], ["student.fusion_depth=20"],
                                         "data-radcot-f0"),
    ("GenerateSection", "n_context"): ([], ["student.generate.n_context=5"], "generate-radcot-f0"),
    ("RowStudent", "context"): ([], ["rows.radcot.student.context=false"], "data-radcot-f0"),
    ("RowStudent", "model"): ([], ["rows.radcot.student.model=tiny-t5:d_model=64"], "train-radcot-f0"),
    ("RowStudent", "n_context"): ([], ["rows.radcot.student.n_context=4"], "data-radcot-f0"),
    ("RowStudent", "train"): ([], ["rows.radcot.student.train={lr: 0.01}"], "train-radcot-f0"),
    ("RowStudent", "generate"): ([], ["rows.radcot.student.generate={n_context: 6}"], "generate-radcot-f0"),
    ("RowStudent", "context_retriever"): ([], ["rows.radcot.student.context_retriever=fused"], "data-radcot-f0"),
    ("RowStudent", "dense_encoder"): (["student.context_retriever=dense"],
                                      ["rows.radcot.student.dense_encoder=my/encoder"], "data-radcot-f0"),
    ("RowStudent", "fusion_depth"): (["student.context_retriever=fused"], ["rows.radcot.student.fusion_depth=7"],
                                     "data-radcot-f0"),
    ("Row", "name"): ([], ["rows.bm25.name=plain", "evaluation.baseline=plain"], None),
    ("Row", "label"): ([], ["rows.bm25.label=Plain BM25"], None),
    ("Row", "rm3"): ([], ["rows.bm25.rm3=true"], "search-bm25"),
    ("Row", "rocchio"): ([], ["rows.bm25.rocchio=true"], "search-bm25"),
    ("Row", "rm3_params"): (["rows.bm25.rm3=true"], ["rows.bm25.rm3_params={fb_terms: 5}"], "search-bm25"),
    ("Row", "k1"): ([], ["rows.bm25.k1=1.5"], "search-bm25"),
    ("Row", "b"): ([], ["rows.bm25.b=0.2"], "search-bm25"),
    ("Row", "cots"): ([], ["rows.file-cots.cots={COTS2}"], "search-file-cots"),
    ("Row", "student"): ([], ["rows.bm25.student={context: false}"], "search-bm25"),
    ("Row", "formula"): ([], ["rows.file-cots.formula=query2doc"], "search-file-cots"),
    ("Row", "samples"): ([], ["rows.radcot.samples=2"], "generate-radcot-f0"),
    ("Row", "sample_fusion"): (["rows.radcot.samples=2"], ["rows.radcot.sample_fusion=concat"], "search-radcot"),
    ("Row", "max_words"): ([], ["rows.file-cots.max_words=3"], "search-file-cots"),
    ("Row", "max_query_terms"): ([], ["rows.file-cots.max_query_terms=5"], "search-file-cots"),
    ("Row", "tune"): ([], ["rows.teacher-cot.tune={formula: [query2doc]}"], "tune-teacher-cot"),
    ("TuneSection", "formula"): ([], ["rows.teacher-cot.tune.formula=[query2doc]"], "tune-teacher-cot"),
    ("TuneSection", "max_words"): ([], ["rows.teacher-cot.tune.max_words=[8]"], "tune-teacher-cot"),
    ("TuneSection", "metric"): ([], ["rows.teacher-cot.tune.metric=AP"], "tune-teacher-cot"),
    ("TuneSection", "k"): ([], ["rows.teacher-cot.tune.k=10"], "tune-teacher-cot"),
    ("EvaluationSection", "metrics"): ([], ["evaluation.metrics=[AP]"], None),
    ("EvaluationSection", "k"): ([], ["evaluation.k=100"], "search-bm25"),
    ("EvaluationSection", "baseline"): ([], ["evaluation.baseline=file-cots"], None),
    ("EvaluationSection", "teacher_row"): ([], ["evaluation.teacher_row=teacher-cot"], None),
}
#: fields that only hold a section whose own fields are walked; include: is resolved before validation
STRUCTURE = {("PipelineConfig", f) for f in ("dataset", "retriever", "teacher", "training_queries", "student",
                                             "evaluation", "rows", "include")}
MODELS = ("PipelineConfig", "DatasetSection", "RetrieverSection", "TeacherSection", "TrainingQueriesSection",
          "StudentSection", "GenerateSection", "RowStudent", "Row", "TuneSection", "EvaluationSection")


def _inert(model: type, field: str) -> bool:
    info = model.model_fields[field]
    return (info.json_schema_extra or {}).get("keyed") is False and "no stage reruns" in (info.description or "")


def test_the_walk_covers_every_field_of_the_schema():
    """A new field must say which stage it keys (an entry in FIELDS) or be documented as inert in the schema."""
    every = {(m, f) for m in MODELS for f in getattr(schema, m).model_fields}
    assert every == set(FIELDS) | STRUCTURE, (every - set(FIELDS) - STRUCTURE, set(FIELDS) | STRUCTURE - every)
    for (model, field), (_, _, stage) in FIELDS.items():
        assert _inert(getattr(schema, model), field) == (stage is None), (model, field)


@pytest.mark.parametrize("model,field", sorted(FIELDS))
def test_each_field_changes_its_stage_key_or_is_documented_inert(world, model, field, monkeypatch):
    monkeypatch.delenv("RADCOT_MSMARCO_DIR", raising=False)
    monkeypatch.delenv("RADCOT_MSMARCO_INDEX", raising=False)
    base_sets, sets, stage = FIELDS[(model, field)]
    before, after = _keys(world, base_sets), _keys(world, base_sets + sets)
    if stage is None:
        assert sorted(before.values()) == sorted(after.values()), (before, after)
    else:
        assert stage in before and stage in after, (stage, sorted(before), sorted(after))
        assert before[stage] != after[stage], f"{model}.{field} does not change the key of {stage}"


def test_a_radcot_version_bump_keeps_every_stage_key(world, monkeypatch):
    import radcot

    before = _keys(world, [])
    monkeypatch.setattr(radcot, "__version__", "99.0.0")
    assert _keys(world, []) == before


def test_upstream_keys_flow_downstream_and_plans_write_nothing(world):
    """A changed teacher changes its data, training, generation and search keys; a plan builds no directory."""
    before, after = _keys(world, []), _keys(world, ["teacher.params={max_tokens: 60}"])
    changed = sorted(n for n in before if before[n] != after[n])
    assert changed == ["data-radcot-f0", "generate-radcot-f0", "search-radcot", "search-teacher-cot",
                       "teacher-eval", "teacher-train", "train-radcot-f0", "tune-teacher-cot"]
    assert not world["RUNS"].exists()


def test_a_given_index_is_keyed_by_its_collection_not_its_path(world, tmp_path):
    """The same index at another path keeps every key (the path was the key)."""
    moved = tmp_path / "elsewhere" / "index"
    shutil.copytree(world["IDX"], moved)
    assert _keys(world, ["dataset.index={IDX}"]) == _keys(world, [f"dataset.index={moved}"])
    (moved / "radcot_index.json").write_text(json.dumps({"kind": "bm25", "collection_fingerprint": "other",
                                                         "complete": True}))
    from radcot.data.fingerprint import IndexCollectionMismatchError

    with pytest.raises(IndexCollectionMismatchError, match="built from another collection"):
        _keys(world, [f"dataset.index={moved}"])  # an index of another collection: refused, not searched


def test_generation_reads_its_own_n_context_with_training_s_as_default(world):
    """student.n_context is the data's and training's passages per query; student.generate.n_context the
    generation's (the paper: 10 / 50), defaulting to student.n_context."""
    p = Pipeline(apply_overrides(_base(world), ["student.generate.n_context=5"]), runs_dir=world["RUNS"])
    plan = p.plan()
    assert plan["data-radcot-f0"]["config"]["k"] == 2 and plan["generate-radcot-f0"]["config"]["k"] == 5
    default = Pipeline(_base(world), runs_dir=world["RUNS"]).plan()
    assert default["generate-radcot-f0"]["config"]["k"] == 2
    row = Pipeline(apply_overrides(_base(world), ["rows.radcot.student.generate={n_context: 7}"]),
                   runs_dir=world["RUNS"]).plan()
    assert row["generate-radcot-f0"]["config"]["k"] == 7 and row["data-radcot-f0"]["config"]["k"] == 2


def test_the_resolved_default_template_is_in_the_train_key(world):
    """Left unset, the input template the student trains with is still in its key: the default passage template
    for a context row, the no-context template for the ablation."""
    from radcot.student.data import NO_CONTEXT_TEMPLATE, PASSAGE_TEMPLATE

    cfg = apply_overrides(_base(world), ["rows=[{name: bm25}, {name: radcot, student: {context: true}}, "
                                         "{name: plain, student: {context: false}}]"])
    plan = Pipeline(cfg, runs_dir=world["RUNS"]).plan()
    assert plan["train-radcot-f0"]["config"]["template"] == PASSAGE_TEMPLATE
    assert plan["train-plain-f0"]["config"]["template"] == NO_CONTEXT_TEMPLATE


def test_the_paper_configs_train_with_10_and_generate_with_50_passages_and_the_official_template():
    p = Pipeline.from_yaml(Path(__file__).resolve().parents[1] / "pipelines" / "trec-dl-2019.yaml")
    for row in p.rows:
        if row.kind == "student":
            spec = p.cfg.student_for(row)
            assert (spec.n_context, spec.generate_n_context) == (10, 50), row.name
            assert spec.train["template"] == ('Answer the following question "{query}" based on the given passage. '
                                              '{passage} Give the rationale before answering :')
            assert spec.train["weight_decay_exclude"] == [], row.name  # the official AdamW decays every parameter
            assert p._train_config(spec).weight_decay_exclude == [], row.name  # what the train stage gets


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".", "", "x y", "-rf"])
def test_row_and_experiment_names_that_are_not_one_directory_are_refused(world, name):
    cfg = _base(world)
    cfg["rows"][3]["name"] = name
    with pytest.raises(PipelineError, match=r"rows\[3\].*name: a row name becomes a directory name"):
        Pipeline(cfg, runs_dir=world["RUNS"])
    with pytest.raises(PipelineError, match=r"experiment: the experiment name becomes a directory name"):
        Pipeline({**_base(world), "experiment": name}, runs_dir=world["RUNS"])
    assert not world["RUNS"].exists()


def test_tuning_on_one_teacher_and_applying_to_another_is_refused(world):
    """split mode with teacher_eval: the tuning CoTs would be the training teacher's, the row's teacher_eval's."""
    cfg = apply_overrides(_base(world), [_fill(world, "teacher_eval={backend: replay, args: {path: {COTS2}}}")])
    with pytest.raises(PipelineError, match=r"rows\[1\]\(teacher-cot\)\.tune: in split mode the tuning CoTs "
                                            r"\(training queries\) come from teacher, but this row's CoTs come from "
                                            r"teacher_eval.*training_queries.mode: kfold"):
        Pipeline(cfg, runs_dir=world["RUNS"])
    kfold = apply_overrides(cfg, ["training_queries.mode=kfold"])  # kfold tunes on the row's own CoTs
    assert "tune-teacher-cot" in Pipeline(kfold, runs_dir=world["RUNS"]).plan()
    no_tune = apply_overrides(cfg, [NO_TUNE])
    assert "tune-teacher-cot" not in Pipeline(no_tune, runs_dir=world["RUNS"]).plan()


def test_the_java_heap_goes_to_the_jvm_not_the_environment(world, monkeypatch):
    """retriever.heap reaches the JVM start through the retriever; os.environ is left as it was."""
    monkeypatch.delenv("RADCOT_JAVA_HEAP", raising=False)
    p = Pipeline(apply_overrides(_base(world), [f"dataset.index={world['IDX']}", "retriever.heap=1g"]),
                 runs_dir=world["RUNS"])
    retriever = p.retriever()
    assert retriever.heap == "1g"
    import os

    assert "RADCOT_JAVA_HEAP" not in os.environ


def test_the_manifest_config_is_the_resolved_config_as_plain_json(world):
    p = Pipeline(_base(world), runs_dir=world["RUNS"])
    resolved = json.loads(json.dumps(p.config))
    assert resolved["student"]["fusion_depth"] == schema.StudentSection.model_fields["fusion_depth"].default
    assert resolved["evaluation"]["k"] == 1000 and resolved["rows"][0]["formula"] == "radcot"
    assert Pipeline(resolved, runs_dir=world["RUNS"]).stage_keys() == p.stage_keys()  # the record validates again


def test_a_template_name_keys_and_trains_as_its_text(world):
    """``student.train.template: official`` is the official text (same keys); on a no-context row a passage
    template given by name becomes the no-context template, as the same text does."""
    from radcot.student.data import OFFICIAL_TEMPLATE

    text = OFFICIAL_TEMPLATE.replace('"', '\\"')
    no_ctx = ["rows.radcot.student.context=false"]
    assert _keys(world, ["student.train.template=official"]) == _keys(world, [f'student.train.template="{text}"'])
    assert (_keys(world, no_ctx + ["student.train.template=official"])
            == _keys(world, no_ctx + [f'student.train.template="{text}"']) == _keys(world, no_ctx))
