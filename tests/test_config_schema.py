"""The pipeline config schema, include:, --set into rows and params.models_dir (no stage runs here)."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from radcot.experiment.config import apply_overrides, load_config
from radcot.experiment.schema import config_problems, reference_markdown
from radcot.pipeline import Pipeline, PipelineError

pytestmark = pytest.mark.fast

REPO = Path(__file__).resolve().parent.parent


def _cfg(**over):
    cfg = {"experiment": "x", "dataset": {"path": "d"}, "rows": [{"name": "bm25"}]}
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("name", ["demo", "vaswani", "cranfield", "trec-dl-2019", "trec-dl-2020", "msmarco-dev"])
def test_shipped_pipelines_are_valid(name):
    Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml")  # raises PipelineError listing any problem


def test_every_problem_is_reported_at_once_with_its_path():
    cfg = _cfg(retreiver={"k1": 3.0}, evaluation={"k": "ten", "metrics": ["nDCG@10", "nDGC@10"]},
               rows=[{"name": "bm25", "K1": 3.0}, {"name": "r", "student": {"contxt": True}}])
    with pytest.raises(PipelineError) as e:
        Pipeline(cfg, source="cfg.yaml")
    msg = str(e.value)
    assert msg.startswith("cfg.yaml: 5 problems")
    assert "retreiver: unknown key; did you mean 'retriever'?" in msg
    assert "rows[0](bm25).K1: unknown key; did you mean 'k1'?" in msg
    assert "rows[1](r).student.contxt: unknown key; did you mean 'context'?" in msg
    assert re.search(r"evaluation\.k: Input should be a valid integer.*\(got 'ten'\)", msg)
    assert "evaluation.metrics: unknown metric 'nDGC@10'" in msg and "'nDCG@10'" not in msg.split("unknown metric")[1]


def test_types_and_ranges_name_the_field():
    problems = config_problems(_cfg(retriever={"b": 1.5}, teacher={"concurrency": 0}, seed="x",
                                    training_queries={"mode": "kfolds"}))
    text = "\n".join(problems)
    assert "retriever.b: Input should be less than or equal to 1 (got 1.5)" in text
    assert "teacher.concurrency: Input should be greater than or equal to 1 (got 0)" in text
    assert "seed: Input should be a valid integer" in text
    assert "training_queries.mode: Input should be 'split', 'kfold' or 'synthetic' (got 'kfolds')" in text


def test_free_form_keys_are_checked_against_the_code_that_takes_them():
    from radcot.student.train import TrainConfig

    cfg = _cfg(teacher={"backend": "openai", "args": {"base_ur": "http://x", "timeout": "soon"}, "params": {"max_token": 5}},
               student={"train": {"max_step": 3, "lr": -1.0}, "generate": {"num_beam": 2, "k": 3}},
               rows=[{"name": "bm25"}, {"name": "s", "student": {"train": {"schedular": "linear"}}}])
    text = "\n".join(config_problems(cfg))
    assert "teacher.args.base_ur: unknown key; did you mean 'base_url'?" in text
    assert "teacher.args.timeout: Input should be a valid number" in text
    assert "teacher.params.max_token: unknown key; did you mean 'max_tokens'?" in text
    assert "student.train.max_step: unknown key; did you mean 'max_steps'?" in text
    assert "student.generate.num_beam: unknown key; did you mean 'num_beams'?" in text
    assert "student.generate.k: set by the pipeline itself" in text
    assert "rows[1](s).student.train.schedular: unknown key; did you mean 'scheduler'?" in text
    # TrainConfig's own checks run on valid names; the field list is TrainConfig's, whatever it holds
    text = "\n".join(config_problems(_cfg(student={"train": {"lr": -1.0}})))
    assert "student.train: TrainConfig.lr must be > 0" in text
    import dataclasses

    every = {f.name: f.default for f in dataclasses.fields(TrainConfig)
             if f.name not in ("data", "model", "out", "seed") and f.default is not dataclasses.MISSING}
    assert config_problems(_cfg(student={"train": every})) == []
    assert "teacher.backend: unknown backend 'opnai'; did you mean 'openai'?" in \
        "\n".join(config_problems(_cfg(teacher={"backend": "opnai"})))


def test_rows_baseline_and_kinds():
    text = "\n".join(config_problems(_cfg(evaluation={"baseline": "bm25"}, rows=[{"name": "a"}, {"name": "a"}, {"name": "c", "cots": "f",
                                                                                 "student": {}}, {"label": "x"}])))
    assert "duplicate row name 'a'" in text and "either cots: or student:" in text
    assert "evaluation.baseline: 'bm25' is not a row name" in text
    assert "rows[3].name: required key is missing" in text


def test_set_reaches_rows_by_index_and_name_and_unknown_keys_fail(tmp_path):
    cfg = load_config(REPO / "pipelines" / "trec-dl-2019.yaml")
    out = apply_overrides(cfg, ["rows.4.student.model=/m/small", "rows.radcot-large.student.model=/m/large",
                                "rows.bm25.k1=1.2"])
    rows = {r["name"]: r for r in out["rows"]}
    assert rows["radcot-small"]["student"]["model"] == "/m/small"
    assert rows["radcot-large"]["student"]["model"] == "/m/large" and rows["bm25"]["k1"] == 1.2
    assert rows["radcot-base"]["student"]["model"] == "google/flan-t5-base" and len(out["rows"]) == len(cfg["rows"])
    with pytest.raises(PipelineError, match=r"no item named 'radcot-xl'.*radcot-small"):
        apply_overrides(cfg, ["rows.radcot-xl.student.model=x"])
    with pytest.raises(PipelineError, match="index 9 is out of range"):
        apply_overrides(cfg, ["rows.9.label=x"])
    with pytest.raises(PipelineError, match="retreiver: unknown key; did you mean 'retriever'"):
        Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", ["retreiver.k1=3"])
    with pytest.raises(PipelineError, match=r"rows\[4\]\(radcot\)\.studnt: unknown key; did you mean 'student'"):
        Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", ["rows.radcot.studnt.model=x"])


def test_models_dir_maps_hub_names_to_a_local_tree(tmp_path, caplog):
    (tmp_path / "google" / "flan-t5-small").mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="radcot.pipeline"):
        p = Pipeline.from_yaml(REPO / "pipelines" / "trec-dl-2019.yaml", [f"params.models_dir={tmp_path}"])
    models = p.student_models()
    assert models["radcot-small"] == str(tmp_path / "google" / "flan-t5-small")
    assert models["distill-no-retrieval"] == str(tmp_path / "google" / "flan-t5-base")  # from student.model
    assert "student model google/flan-t5-small ->" in caplog.text and "does not exist" in caplog.text
    demo = Pipeline.from_yaml(REPO / "pipelines" / "demo.yaml", [f"params.models_dir={tmp_path}"])
    assert set(demo.student_models().values()) == {demo.config["student"]["model"]}  # tiny-t5 specs untouched


def test_include_deep_merges_and_the_including_file_wins(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "common.yaml").write_text(
        "seed: 7\nretriever: {k1: 1.1, b: 0.5}\nevaluation: {metrics: [nDCG@10, AP], k: 100}\n"
        "rows: [{name: bm25}, {name: rm3, rm3: true}]\ndataset: {path: data}\n")
    (tmp_path / "exp.yaml").write_text("include: base/common.yaml\nexperiment: e\nretriever: {b: 0.3}\n"
                                       "evaluation: {metrics: [RR@10]}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert cfg["retriever"] == {"k1": 1.1, "b": 0.3} and cfg["seed"] == 7
    assert cfg["evaluation"] == {"metrics": ["RR@10"], "k": 100}  # lists replaced wholesale
    assert [r["name"] for r in cfg["rows"]] == ["bm25", "rm3"] and "include" not in cfg
    p = Pipeline.from_yaml(tmp_path / "exp.yaml", ["rows.rm3.b=0.2"])
    assert p.rows[1].b == 0.2
    # a chain, a missing file and a cycle
    (tmp_path / "top.yaml").write_text("include: [exp.yaml]\nexperiment: top\n")
    assert load_config(tmp_path / "top.yaml")["experiment"] == "top"
    (tmp_path / "bad.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(PipelineError, match=r"bad.yaml: include: nowhere.yaml does not exist"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(PipelineError, match="include: cycle"):
        load_config(tmp_path / "a.yaml")


def test_reference_documents_every_key_and_docs_have_it():
    from radcot.experiment import schema

    ref = reference_markdown()
    for model in (schema.PipelineConfig, schema.DatasetSection, schema.RetrieverSection, schema.TeacherSection,
                  schema.StudentSection, schema.GenerateSection, schema.RowStudent, schema.Row,
                  schema.EvaluationSection, schema.TuneSection):
        for key in model.model_fields:
            assert f"| `{key}` |" in ref, (model.__name__, key)
    docs = (REPO / "docs" / "pipelines.md").read_text(encoding="utf-8")
    assert schema.REFERENCE_MARKER in docs
    assert ref.strip() in docs, "docs/pipelines.md's config reference is stale: python -m radcot.experiment.schema"


def test_dl_configs_share_one_base_and_differ_only_in_the_evaluation_set():
    """trec-dl-2019/2020 and msmarco-dev include msmarco-base.yaml: every setting of the shared stages (teacher,
    training queries, student, retriever) is the same; the dataset, the CoT file, metrics and name differ."""
    import yaml

    configs = {n: load_config(REPO / "pipelines" / f"{n}.yaml") for n in ("trec-dl-2019", "trec-dl-2020", "msmarco-dev")}
    for name in configs:
        assert yaml.safe_load((REPO / "pipelines" / f"{name}.yaml").read_text())["include"] == "msmarco-base.yaml"
    shared = ("seed", "retriever", "teacher", "training_queries", "student", "rows")
    for key in shared:
        assert len({json.dumps(c[key], sort_keys=True) for c in configs.values()}) == 1, key
    assert len({c["dataset"]["name"] for c in configs.values()}) == 3
    assert len({c["params"]["davinci_cots"] for c in configs.values()}) == 3
    assert configs["trec-dl-2019"]["evaluation"]["metrics"] == ["nDCG@10", "R(rel=2)@1000", "AP(rel=2)"]
    assert configs["msmarco-dev"]["evaluation"]["metrics"] == ["RR@10", "R@1000", "nDCG@10"]


def test_include_in_a_config_mapping_is_refused_with_where_it_is_resolved():
    with pytest.raises(PipelineError, match=r"include: resolved when a pipeline file is read"):
        Pipeline({"include": "base.yaml", "experiment": "x", "dataset": {"path": "d"}, "rows": [{"name": "bm25"}]})


@pytest.mark.fast
def test_generate_values_are_checked_before_any_stage_runs():
    """``student.generate.num_beams: 0`` used to pass ``--check`` and fail after training (issue #26)."""
    text = "\n".join(config_problems(_cfg(student={"generate": {"num_beams": 0}},
                                          rows=[{"name": "bm25"}, {"name": "s", "student": {"generate": {"max_new_tokens": -5}}}])))
    assert "student.generate: num_beams must be >= 1, got 0" in text
    assert "rows[1](s).student.generate: max_new_tokens must be >= 1, got -5" in text


@pytest.mark.fast
def test_metrics_are_validated_to_their_canonical_names():
    """Results are keyed by ir-measures' canonical names: aliases in the config must be stored as those (#22)."""
    from radcot.experiment.schema import validate_config

    cfg = validate_config(_cfg(evaluation={"metrics": ["NDCG@10", "MRR@10", "Recall@1000", "map"]},
                               rows=[{"name": "bm25"}, {"name": "t", "cots": "teacher", "tune": {"metric": "MRR@10"}}],
                               training_queries={"mode": "kfold"}), "cfg.yaml")
    assert list(cfg.evaluation.metrics) == ["nDCG@10", "RR@10", "R@1000", "AP"]
    assert cfg.rows[1].tune.metric == "RR@10"


@pytest.mark.parametrize("name", ["vaswani", "cranfield"])
def test_collection_pipelines_default_to_an_ir_datasets_id_a_user_can_resolve(name, tmp_path):
    """The default is the ir_datasets id (not the team's ../shared/data); --set params.data picks a BEIR copy.
    Offline with an empty ir_datasets cache, --check names the file to download (exit 1), from any directory."""
    import os
    import subprocess
    import sys

    assert Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml").cfg.dataset.path == name
    beir = Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml", [f"params.data={tmp_path / name}"])
    assert beir.cfg.dataset.path == str(tmp_path / name)
    assert "../shared" not in "".join(l for l in (REPO / "pipelines" / f"{name}.yaml").open() if not l.startswith("#"))
    env = dict(os.environ, RADCOT_OFFLINE="1", IR_DATASETS_HOME=str(tmp_path / "irds"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    p = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / f"{name}.yaml"), "--check"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"dataset {name}: ir_datasets' cache {tmp_path / 'irds'} lacks 1 file(s)" in p.stdout + p.stderr

