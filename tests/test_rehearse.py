"""``radcot run CONFIG --rehearse``: the miniature, the swaps, the teacher server, and the three DL configs end to end."""
from __future__ import annotations

import filecmp
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from radcot.rehearse import (
    COT_FILES,
    Miniature,
    make_miniature,
    rehearsal_config,
    standin_size,
    teacher_server,
)

REPO = Path(__file__).resolve().parents[1]
DL_CONFIGS = ["trec-dl-2019", "trec-dl-2020", "msmarco-dev"]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rehearsal-runs")


@pytest.fixture(scope="module")
def mini(runs_dir) -> Miniature:
    return make_miniature(runs_dir)


def _resolved(name: str) -> dict:
    from radcot.pipeline import Pipeline

    return Pipeline.from_yaml(REPO / "pipelines" / f"{name}.yaml").config


# ------------------------------------------------------------------------------------------ miniature

def test_miniature_is_byte_identical_wherever_it_is_generated(mini, tmp_path):
    other = make_miniature(tmp_path)
    assert other.root.name == mini.root.name
    files = sorted(p.relative_to(mini.root) for p in mini.root.rglob("*") if p.is_file() and ".lock" not in p.name)
    assert len(files) > 20
    for rel in files:
        assert filecmp.cmp(mini.root / rel, other.root / rel, shallow=False), rel


def test_miniature_reads_through_the_named_datasets(mini, monkeypatch):
    from radcot.data.readers import read_corpus, read_queries
    from radcot.data.registry import load_dataset

    monkeypatch.delenv("RADCOT_MSMARCO_INDEX", raising=False)
    seen: set[str] = set()
    for name in COT_FILES:
        ds = load_dataset(name, data_dir=mini.msmarco_dir)
        assert ds.corpus == mini.msmarco_dir / "collection.tsv" and ds.index is None
        grades = {q.relevance for q in ds.qrels()}
        if name.endswith("dev-subset"):
            assert grades == {1}  # MS MARCO dev judgements are binary
            assert len(ds.judged_queries()) == len(ds.queries())
        else:
            assert grades == {0, 1, 2, 3}  # TREC DL: graded 0-3
            assert len(ds.judged_queries()) < len(ds.queries())  # topics without judgements, as DL19's
        ids = {q.query_id for q in ds.queries()}
        assert not ids & seen  # three disjoint evaluation sets
        seen |= ids
        assert not ids & {q.query_id for q in ds.train_queries()}
    pids = [d.doc_id for d in read_corpus(mini.msmarco_dir / "collection.tsv")]
    assert pids == [str(i) for i in range(len(pids))]  # MS MARCO's integer passage ids
    assert len(read_queries(mini.msmarco_dir / "queries.train.tsv")) > 300


def test_official_format_cot_files_replay(mini):
    from radcot.teacher.runner import read_teacher_output

    for name in COT_FILES:
        path = mini.cot_file(name)
        lines = path.read_text(encoding="utf-8").splitlines()
        fields = [line.split("\t") for line in lines]
        assert {len(f) for f in fields} == {4}  # qid \t query \t cot \t cosine
        assert all(0.0 <= float(f[3]) <= 1.0 and "Answer:" in f[2] for f in fields)
        recs = read_teacher_output(path)
        assert recs[fields[0][0]]["text"] == fields[0][2]


def test_student_standins_have_flan_t5_flags_and_grow_with_size(mini):
    import torch
    import transformers

    from radcot.student.model import FiDStudent

    n_params = []
    for size in ("small", "base", "large"):
        student = FiDStudent.from_pretrained(mini.model_dir(size))
        cfg = student.t5.config
        assert cfg.feed_forward_proj == "gated-gelu" and cfg.is_gated_act
        assert isinstance(student.tokenizer, transformers.T5Tokenizer)
        assert (mini.model_dir(size) / "spiece.model").is_file()
        assert student.tokenizer.pad_token_id == 0 and student.tokenizer.eos_token_id == 1
        assert student.tokenizer.convert_ids_to_tokens(len(student.tokenizer) - 1).startswith("<extra_id_")
        # a separate lm_head, kept apart from the input embeddings on load (the flan-t5 path)
        assert student.t5.lm_head.weight is not student.t5.shared.weight
        assert not torch.equal(student.t5.lm_head.weight, student.t5.shared.weight)
        n_params.append(sum(p.numel() for p in student.t5.parameters()))
    assert n_params == sorted(n_params) and len(set(n_params)) == 3


# ------------------------------------------------------------------------------------------ swaps

@pytest.mark.fast
def test_standin_size_names():
    assert standin_size("google/flan-t5-small") == "small"
    assert standin_size("google/flan-t5-xxl") == "large"
    assert standin_size("google/t5-v1_1-base") == "base"
    assert standin_size("tiny-t5:d_model=64") is None and standin_size("/models/mine") is None


@pytest.mark.parametrize("name", DL_CONFIGS)
def test_rehearsal_swaps_resources_only(mini, name):
    original = _resolved(name)
    cfg, swaps = rehearsal_config(original, mini, "http://127.0.0.1:9/v1", "kb:world")
    assert all(s.startswith("rehearse: ") and " -> " in s for s in swaps)
    # unchanged: rows (but for the student model paths), metrics, prompt, formula, n_context, generation
    for key in ("evaluation", "seed"):
        assert cfg[key] == original[key]
    assert cfg["teacher"]["prompt"] == original["teacher"]["prompt"]
    assert cfg["teacher"]["params"] == original["teacher"]["params"]
    assert cfg["teacher"]["concurrency"] == original["teacher"]["concurrency"]
    assert cfg["student"]["n_context"] == original["student"]["n_context"]
    assert cfg["student"]["generate"] == original["student"]["generate"]
    assert [r["name"] for r in cfg["rows"]] == [r["name"] for r in original["rows"]]
    for new, old in zip(cfg["rows"], original["rows"]):
        assert new.get("formula") == old.get("formula")
        if isinstance(old.get("student"), dict):
            assert {k: v for k, v in new["student"].items() if k != "model"} == \
                   {k: v for k, v in old["student"].items() if k != "model"}
    train, old_train = cfg["student"]["train"], original["student"]["train"]
    for key in ("batch_size", "grad_accum", "lr", "weight_decay", "clip", "scheduler"):
        assert train[key] == old_train[key]
    # swapped, each with its line
    assert cfg["experiment"] == f"{original['experiment']}-rehearsal"
    assert cfg["dataset"] == {**original["dataset"], "data_dir": str(mini.msmarco_dir), "index": None}
    assert cfg["teacher"]["backend"] == "openai" and cfg["teacher"]["args"] == {"model": "kb:world"}
    assert cfg["teacher_eval"]["args"]["path"] == str(mini.cot_file(original["dataset"]["name"]))
    assert cfg["training_queries"]["queries"] == str(mini.msmarco_dir / "queries.train.tsv")
    assert train["max_steps"] <= 5 and train["precision"] == "fp32"
    models = {r["name"]: r["student"].get("model") for r in cfg["rows"] if isinstance(r.get("student"), dict)}
    assert models["radcot-small"] == str(mini.model_dir("small"))
    assert models["radcot-large"] == str(mini.model_dir("large"))
    assert cfg["student"]["model"] == str(mini.model_dir("base"))
    text = "\n".join(swaps)
    for what in ("dataset", "teacher openai", "teacher_eval", "student.model", "rows.radcot-large.student.model",
                 "student.train.max_steps", "student.train.precision bf16"):
        assert f"rehearse: {what}" in text


def test_several_processes_become_two_cpu_ranks(mini):
    original = _resolved("trec-dl-2019")
    original["student"]["train"]["nproc_per_node"] = 8
    cfg, swaps = rehearsal_config(original, mini, "http://127.0.0.1:9/v1", "kb:world")
    assert cfg["student"]["train"]["nproc_per_node"] == 2
    assert any("nproc_per_node 8 -> 2" in s for s in swaps)


def test_non_msmarco_configs_are_refused_with_the_reason(mini):
    from radcot.rehearse import RehearsalError

    with pytest.raises(RehearsalError, match="dataset.name must be one of"):
        rehearsal_config(_resolved("demo"), mini, "http://127.0.0.1:9/v1", "kb:world")


# ------------------------------------------------------------------------------------------ teacher server

def test_teacher_server_answers_the_openai_backend_and_stops(mini):
    from radcot.records import Query
    from radcot.teacher import GenerationParams, get_backend
    from radcot.demo.kb import KBTeacher

    query_text = (mini.msmarco_dir / "queries.train.tsv").read_text().splitlines()[0].split("\t")[1]
    with teacher_server(mini.world) as (url, model):
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url) and model == "kb:world"
        backend = get_backend("openai", base_url=url, model=model)
        try:
            gens = backend.generate([_item(Query("q1", query_text))], GenerationParams())
        finally:
            backend.close()
    assert gens[0].text == KBTeacher(mini.world).answer(query_text)  # the query was read back out of the prompt
    import httpx

    with pytest.raises(httpx.HTTPError):  # stopped: nothing listens any more
        httpx.get(url + "/models", timeout=2)


def _item(query):
    from radcot.teacher import TeachItem
    from radcot.teacher.prompts import get_prompt

    return TeachItem(query, get_prompt("radcot").render(query.text))


def test_teacher_server_is_stopped_when_the_block_fails(mini):
    import httpx

    with pytest.raises(RuntimeError, match="boom"):
        with teacher_server(mini.world) as (url, _):
            raise RuntimeError("boom")
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/models", timeout=2)


def test_teacher_serve_cli_rejects_bad_backend_args_with_exit_2(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for args in (["--backend", "kb", "--backend-arg", "world"], ["--backend", "nope"],
                 ["--backend-arg", "world=x"], ["--backend", "kb", "--backend-arg", "colour=red"]):
        p = subprocess.run([sys.executable, "-m", "radcot", "teacher-serve", "--port", "0", *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 2, (args, p.stderr)
        assert "Traceback" not in p.stderr and "teacher-serve: error:" in p.stderr


def test_prompt_backend_reads_the_query_out_of_the_prompt(mini):
    from radcot.demo.kb import KBTeacher
    from radcot.teacher.prompts import get_prompt
    from radcot.teacher.serve import PromptBackend

    pb = PromptBackend(KBTeacher(mini.world), prompt="radcot")
    assert pb.query_of(get_prompt("radcot").render('what is "x" here')) == 'what is "x" here'
    assert pb.query_of("no template at all") == "no template at all"
    q2d = PromptBackend(KBTeacher(mini.world), prompt="query2doc")
    assert q2d.query_of(get_prompt("query2doc").render("who founded Y")) == "who founded Y"


# ------------------------------------------------------------------------------------------ end to end

_ROW = re.compile(r"^\| (?!run |---|reference)(.+?) \| (.+) \|$")


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", DL_CONFIGS)
def test_rehearsal_end_to_end(runs_dir, name):
    """``radcot run pipelines/<name>.yaml --rehearse``: every row present with finite numbers, beside the references."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RADCOT_JAVA_HEAP": "1g"}
    p = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / f"{name}.yaml"), "--rehearse",
                        "--runs-dir", str(runs_dir), "--no-progress", "--no-report"],
                       capture_output=True, text=True, env=env, timeout=1700)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rehearse: student.train.precision bf16 -> fp32" in p.stderr
    assert "rehearse: teacher openai" in p.stderr
    ours, references = p.stdout.split("Reference numbers", 1)
    rows = [m.groups() for m in map(_ROW.match, ours.splitlines()) if m]
    labels = [label for label, _ in rows]
    original = _resolved(name)
    assert labels == [r.get("label", r["name"]) for r in original["rows"]]
    metrics = original["evaluation"]["metrics"]
    for label, cells in rows:
        values = [float(c.split()[0]) for c in cells.split(" | ")[:len(metrics)]]  # then the gap-closed columns
        assert len(values) == len(metrics) and all(math.isfinite(v) for v in values), (label, cells)
    assert "BM25 (pyserini 2CR)" in references and "pyserini 2CR" in references
    # each student row's servable profile: trained with 10 passages and the official input, generating with 50
    import json

    from radcot.student.profile import StudentProfile

    rows = json.loads((runs_dir / f"{name}-rehearsal" / "manifest.json").read_text())["rows"]
    students = {r["name"]: r["students"] for r in rows if r["kind"] == "student"}
    assert set(students) == {"distill-no-retrieval", "radcot-small", "radcot-base", "radcot-large"}
    for row, (path,) in students.items():
        profile = StudentProfile.load(path)
        fid = json.loads((profile.checkpoint / "fid_config.json").read_text())
        if row == "distill-no-retrieval":
            assert profile.retriever is None and fid["no_context"] and profile.inference.n_context == 1
            continue
        assert (fid["n_context"], profile.inference.n_context) == (10, 50), row
        assert fid["template"].startswith('Answer the following question "{query}" based on the given passage.')
        assert profile.retriever.kind == "bm25" and profile.retriever.indexes[0].identity["num_docs"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rehearsal_trains_the_student_directories_given_on_the_command_line(runs_dir, mini, tmp_path):
    """trec-dl-2019.yaml unchanged, per-row models from the command line only: ``rows.4`` (radcot-small) and
    ``rows.radcot-base`` name directories, ``params.models_dir`` maps student.model (google/flan-t5-base, the
    no-retrieval row). Each row trains the directory it was given (each one a different size from the stand-in the
    row would otherwise get), not a stand-in."""
    import json
    import shutil

    given = {"radcot-small": tmp_path / "mine" / "student-a", "radcot-base": tmp_path / "mine" / "student-b",
             "distill-no-retrieval": tmp_path / "models" / "google" / "flan-t5-base"}
    for row, size in (("radcot-small", "base"), ("radcot-base", "small"), ("distill-no-retrieval", "large")):
        shutil.copytree(mini.model_dir(size), given[row])
    sets = [f"rows.4.student.model={given['radcot-small']}", f"rows.radcot-base.student.model={given['radcot-base']}",
            f"params.models_dir={tmp_path / 'models'}", "experiment=dl19-given-models"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RADCOT_JAVA_HEAP": "1g"}
    p = subprocess.run([sys.executable, "-m", "radcot", "run", str(REPO / "pipelines" / "trec-dl-2019.yaml"),
                        "--rehearse", "--rows", *given, "--runs-dir", str(runs_dir), "--no-progress", "--no-report",
                        *[a for s in sets for a in ("--set", s)]], capture_output=True, text=True, env=env, timeout=1700)
    assert p.returncode == 0, p.stderr[-3000:]
    stages = json.loads((runs_dir / "dl19-given-models-rehearsal" / "manifest.json").read_text())["stages"]
    for row, model_dir in given.items():
        train = stages[f"train-{row}-f0"]
        assert train["config"]["model"] == str(model_dir), row
        trained = json.loads((Path(train["dir"]) / "run" / "best" / "config.json").read_text())
        assert trained["d_model"] == json.loads((model_dir / "config.json").read_text())["d_model"], row
    assert f"{given['distill-no-retrieval']} is a local directory: used as given" in p.stderr
    assert "rehearse: rows.radcot-small.student.model" not in p.stderr
    assert "rehearse: rows.radcot-large.student.model" in p.stderr  # the row not given stays a stand-in (not run)
    assert "train-radcot-large-f0" not in stages
