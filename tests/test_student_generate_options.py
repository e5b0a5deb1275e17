"""Generation options checked without a model (``check_generate_options``, the pipeline's ``--check`` hook), at
``generate_cots``' boundary and at the CLI; where a checkpoint finds its training queries (no JVM, no training)."""
from __future__ import annotations

import json

import pytest


@pytest.mark.fast
def test_check_generate_options_lists_every_problem():
    from radcot.student.generate import check_generate_options

    assert check_generate_options({}) == []
    assert check_generate_options({"num_beams": 4, "max_new_tokens": 50, "k": 10, "template": "official"}) == []
    problems = check_generate_options({"num_beams": 0, "max_new_token": 50, "temperature": "0.7", "n_context": 0,
                                       "do_sample": "yes", "queries": "q.tsv", "on_train_overlap": "ignore"})
    assert problems == [
        "num_beams must be >= 1, got 0",
        "max_new_token: unknown generate option; did you mean 'max_new_tokens'?",
        "temperature must be a number, got '0.7' (str); pass a number, not a string",
        "n_context must be >= 1, got 0",
        "do_sample must be True or False, got 'yes' (str)",
        "queries: an input of generate_cots, not a generate option",
        "on_train_overlap must be one of 'warn', 'error', got 'ignore' (str)",
    ]
    assert check_generate_options({"k": 0}) == ["k must be >= 1, got 0"]
    assert "k and n_context are the same option" in check_generate_options({"k": 5, "n_context": 10})[0]
    assert "template 'oficial' is neither a template name" in check_generate_options({"template": "oficial"})[0]
    assert check_generate_options("num_beams: 0") == ["generate options must be a mapping of option: value, got str"]


@pytest.mark.fast
def test_check_generate_options_checks_combinations():
    from radcot.student.generate import check_generate_options

    assert "beam sampling) is not supported" in check_generate_options({"do_sample": True, "num_beams": 2})[0]
    assert "needs num_beams >= it" in check_generate_options({"num_return_sequences": 3, "num_beams": 2})[0]
    assert check_generate_options({"num_return_sequences": 3, "do_sample": True}) == []
    # num_beams not given: the student's recorded value decides, at generation
    assert check_generate_options({"num_return_sequences": 3}) == []
    assert "copy_bias: unknown generate option" in check_generate_options({"copy_bias": 1.0})[0]  # dropped (#24)


@pytest.mark.fast
@pytest.mark.parametrize("kwargs,error,message", [
    ({"num_beams": 0}, ValueError, "num_beams must be >= 1, got 0"),
    ({"max_new_tokens": "50"}, TypeError, "max_new_tokens must be an integer, got '50'"),
    ({"n_context": 0}, ValueError, "n_context must be >= 1"),
    ({"k": 2.5}, TypeError, "n_context must be an integer, got 2.5"),
    ({"batch_size": None}, TypeError, "batch_size must be an integer, got None"),
    ({"top_p": 0}, ValueError, "top_p must be > 0"),
    ({"do_sample": True, "num_beams": 3}, ValueError, "beam sampling"),
    ({"queries": "text of one query"}, FileNotFoundError, "queries file text of one query does not exist"),
    ({"queries": 12}, TypeError, "queries must be Query records"),
    ({"queries": None}, ValueError, "pass exactly one of data="),
])
def test_generate_cots_refuses_bad_options_before_loading_a_model(tmp_path, kwargs, error, message):
    from radcot.student.generate import generate_cots

    args = {"queries": tmp_path / "q.tsv", **kwargs}
    with pytest.raises(error, match=message):
        generate_cots(tmp_path / "no-student", tmp_path / "out.jsonl", **args)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.fast
@pytest.mark.parametrize("flags,message", [
    (["--do-sample", "--num-beams", "2"], "beam sampling"),
    (["--num-return-sequences", "3", "--num-beams", "2"], "--num-return-sequences=3 needs --num-beams >= it"),
    (["--k", "3", "--n-context", "5"], "--k is the older name of --n-context"),
    (["--dense-index", "D"], "--dense-index needs --index"),
])
def test_cli_refuses_bad_combinations_with_exit_2(tmp_path, capsys, flags, message):
    from radcot.cli import main

    with pytest.raises(SystemExit) as e:
        main(["generate", "--student", str(tmp_path), "--queries", "Q", "--out", str(tmp_path / "o.jsonl"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_checkpoint_names_its_training_data(tmp_path):
    """best/fid_config.json's train_config.data first, else the run's train_config.json; gone data: unchecked."""
    pytest.importorskip("datasets")
    from radcot.student.data import build_distillation_data
    from radcot.student.overlap import TrainTestOverlapError, check_overlap, find_overlap

    (tmp_path / "cots.jsonl").write_text("".join(
        json.dumps({"query_id": q, "query": f"query {q}", "text": f"cot {q}", "error": None}) + "\n"
        for q in ("a", "b", "c", "d")), encoding="utf-8")
    data = build_distillation_data([(q, f"query {q}") for q in "abcd"], tmp_path / "cots.jsonl", no_context=True,
                                   dev_queries=["d"], out_dir=tmp_path / "data", show_progress=False)
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "fid_config.json").write_text(json.dumps({"train_config": {"data": str(data)}}))
    got = find_overlap(run / "best", ["a", "d", "z"])
    assert got.train == ("a",) and got.dev == ("d",) and got.data == data and got.n_queries == 3
    step = run / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    (step / "fid_config.json").write_text(json.dumps({"step": 2}))
    (run / "train_config.json").write_text(json.dumps({"data": str(data)}))
    assert find_overlap(step, ["b"]).train == ("b",)
    assert not find_overlap(run / "best", ["z"])
    with pytest.raises(TrainTestOverlapError, match="1 of the 1 queries"):
        check_overlap(step, ["c"], "error")
    (run / "train_config.json").write_text(json.dumps({"data": str(tmp_path / "moved")}))
    gone = find_overlap(step, ["b"])
    assert not gone.checked and "is not there" in gone.reason
    with pytest.raises(TrainTestOverlapError, match="could not check.*--on-train-overlap warn"):
        check_overlap(step, ["b"], "error")
    assert not check_overlap(step, ["b"], "warn")
