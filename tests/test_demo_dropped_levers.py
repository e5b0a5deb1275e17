"""Levers the demo measured and dropped are gone, and saying them gets a clear refusal, not a silent no-op:
``copy_bias`` decoding (``radcot generate --copy-bias``, ``generate_cots(copy_bias=)``, a pipeline's
``student.generate.copy_bias``) and the frequency-debiased pointer (``tiny-t5:...,pointer_debias=N``). The old
copy-augmentation flags of ``radcot train`` name their replacement."""
from __future__ import annotations

import inspect

import pytest

from radcot.cli import main

pytestmark = pytest.mark.fast

GENERATE = ["generate", "--student", "S", "--queries", "Q", "--index", "I", "--out", "O"]
TRAIN = ["train", "--data", "D", "--model", "tiny-t5", "--out", "O"]


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("flag", [["--copy-bias", "2"], ["--copy-bias=0.5"], ["--copy-bias"]])
def test_radcot_generate_refuses_copy_bias_and_says_why(flag, capsys):
    err = _refused(GENERATE + flag, capsys)
    assert err.startswith("radcot generate: error: --copy-bias was removed: the copy-bias decoding lever was "
                          "measured and dropped")
    assert "eval/demo-ablations.md" in err


def test_copy_bias_is_not_a_generation_setting_any_more():
    from radcot.experiment.schema import config_problems
    from radcot.student.generate import generate_cots

    assert "copy_bias" not in inspect.signature(generate_cots).parameters
    problems = config_problems({"experiment": "x", "dataset": {"path": "d"},
                                "student": {"generate": {"copy_bias": 2.0}},
                                "rows": [{"name": "bm25"}]})
    assert any("student.generate.copy_bias" in p for p in problems), problems


@pytest.mark.parametrize("flag,replacement", [(["--copy-augment", "0.5"], "--augment copy --augment-arg p=P"),
                                              (["--copy-augment-max-df", "0.1"], "--augment-arg max_df=D")])
def test_radcot_train_names_the_replacement_of_the_old_copy_augmentation_flags(flag, replacement, capsys):
    err = _refused(TRAIN + flag, capsys)
    assert f"{flag[0]} was removed: copy augmentation is now a training augmenter: " in err and replacement in err


def test_a_tiny_t5_spec_with_the_dropped_pointer_debias_is_refused():
    from radcot.demo.tiny import parse_tiny_spec

    with pytest.raises(ValueError, match="'pointer_debias' in .* no longer exists"):
        parse_tiny_spec("tiny-t5:pointer=1,pointer_debias=2")
