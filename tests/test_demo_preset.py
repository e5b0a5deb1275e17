"""``radcot train --preset demo`` / ``radcot generate --preset demo``: the demo student's settings, defined once in
radcot.demo.preset, are the ones pipelines/demo.yaml trains and decodes with; flags override them."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from _student_fixtures import cranfield_cots, cranfield_distill, cranfield_retriever, tiny_t5, trained_student  # noqa: F401
from radcot.cli import main
from radcot.demo.preset import PRESETS, get_preset
from radcot.records import RadcotError

REPO = Path(__file__).resolve().parents[1]


def _demo_pipeline() -> dict:
    return yaml.safe_load((REPO / "pipelines" / "demo.yaml").read_text(encoding="utf-8"))


@pytest.mark.fast
def test_the_demo_preset_is_what_pipelines_demo_yaml_trains_and_decodes_with():
    config, preset = _demo_pipeline(), get_preset("demo")
    student = config["student"]
    assert student["model"] == preset.model and student["n_context"] == preset.n_context
    assert student["context_retriever"] == preset.context_retriever
    assert student["train"] == dict(preset.train)
    assert student["generate"] == dict(preset.generate)
    assert config["seed"] == preset.seed  # the pipeline trains (and splits its data) with the experiment's seed
    # its RADCoT row takes the student section as it is
    (row,) = [r for r in config["rows"] if r["name"] == "radcot"]
    assert row["student"] == {"context": True}


@pytest.mark.fast
def test_preset_fields_make_a_valid_train_config_and_flags_override_them(tmp_path):
    from radcot.cli.train import _config_from_flags
    from radcot.student.train import TrainConfig

    p = argparse.ArgumentParser()
    given = {"data": "D", "out": "O", "select_index": "I", "select_qrels": "Q", "lr": 1e-3}
    cfg = _config_from_flags(p, dict(given), "demo")
    preset = get_preset("demo")
    assert cfg == TrainConfig(**{**preset.train_fields(), **given})
    assert (cfg.model, cfg.n_context, cfg.seed, cfg.max_steps, cfg.lr) == (preset.model, 5, 13, 1500, 1e-3)
    assert (cfg.augment, cfg.augment_args) == ("copy", {"p": 0.5})
    cfg.augment_args["p"] = 0.9  # a config's dict is its own: the preset is not changed through it
    assert get_preset("demo").train["augment_args"] == {"p": 0.5}


@pytest.mark.fast
def test_a_student_trained_with_the_preset_records_the_presets_decoding():
    """radcot train --preset demo records the decoding generate --preset demo uses (not the dev evaluation's
    48 tokens with repeats allowed), so a plain serve/Expander.load answers as the preset was evaluated."""
    from radcot.cli.train import _config_from_flags
    from radcot.student.profile import Decoding

    given = {"data": "D", "out": "O", "select_index": "I", "select_qrels": "Q"}
    cfg = _config_from_flags(argparse.ArgumentParser(), given, "demo")
    preset = get_preset("demo")
    assert cfg.inference_decoding() == Decoding(max_new_tokens=64, no_repeat_ngram_size=3)
    assert preset.decoding() == {k: v for k, v in preset.generate.items() if k != "batch_size"}
    assert cfg.eval_max_new_tokens == 48  # the training-time evaluation (checkpoint selection) is unchanged
    flagged = _config_from_flags(argparse.ArgumentParser(), {**given, "decoding": {"max_new_tokens": 20}}, "demo")
    assert flagged.inference_decoding() == Decoding(max_new_tokens=20)


@pytest.mark.fast
def test_bad_decoding_fields_are_refused_when_the_config_is_built():
    from radcot.student.train import TrainConfig

    with pytest.raises(ValueError, match=r"TrainConfig.decoding has unknown fields \['beams'\]; valid fields"):
        TrainConfig(data="d", model="m", out="o", decoding={"beams": 2})
    with pytest.raises(ValueError, match="TrainConfig.decoding.no_repeat_ngram_size must be an integer >= 0"):
        TrainConfig(data="d", model="m", out="o", decoding={"no_repeat_ngram_size": -1})


@pytest.mark.fast
def test_train_preset_without_selection_inputs_says_what_to_pass(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "demo", "--data", "D", "--out", "O"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "--preset demo keeps the checkpoint whose CoTs retrieve best" in err and "--select-index" in err


@pytest.mark.fast
def test_unknown_presets_are_refused(capsys):
    with pytest.raises(RadcotError, match="unknown student preset 'big'; presets: demo"):
        get_preset("big")
    with pytest.raises(SystemExit) as e:
        main(["train", "--preset", "big", "--data", "D", "--out", "O"])
    assert e.value.code == 2 and "invalid choice: 'big'" in capsys.readouterr().err
    assert sorted(PRESETS) == ["demo"]


def test_generate_preset_decodes_as_the_demo_and_flags_win(trained_student, cranfield_distill, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "cots.jsonl"
    assert main(["generate", "--student", str(trained_student / "best"), "--data", str(cranfield_distill),
                 "--split", "dev", "--limit", "2", "--out", str(out), "--preset", "demo", "--max-new-tokens", "8",
                 "--no-progress"]) == 0
    params = json.loads((tmp_path / "cots.config.json").read_text())["params"]
    assert params["no_repeat_ngram_size"] == 3  # the preset's
    assert params["max_new_tokens"] == 8  # the flag's, over the preset's 64
    assert len(out.read_text().splitlines()) == 2

