"""Copy augmentation: rare words shared by a target and its input are swapped consistently, nothing else."""
from __future__ import annotations

import re

import pytest

from radcot.demo.augment import CopyAugmenter

pytestmark = pytest.mark.fast

pytestmark = pytest.mark.fast

# 40 targets: "Rationale", "Answer", "born", "in", "was" are in every one (frequent); each name in one (rare)
NAMES = [("Ann", "Oslo"), ("Bob", "Rome"), ("Cid", "Lima"), ("Dag", "Kiev")] * 10
TARGETS = [f"Rationale: {p} was born in {t}. Answer: {t}." for p, t in NAMES]


def _example():
    return {"query_id": "q1", "query": "where was Ann born",
            "passages": [{"title": "Ann", "text": "Ann was born in Oslo, near Lima."},
                         {"title": "", "text": "Bob keeps bees."}],
            "target": "Rationale: Ann was born in Oslo (a port). Answer: Oslo."}


def _words(text):
    return re.findall(r"[A-Za-z]+", text)


def test_rare_words_shared_with_the_input_are_swapped_consistently():
    aug = CopyAugmenter(TARGETS, p=1.0, max_df=0.3)
    assert {"Ann", "Oslo", "Bob", "Lima"} <= aug.rare and not {"Rationale", "Answer", "born", "was"} & aug.rare
    ex = _example()
    out = aug(ex, seed="0-1-0")
    new_ann, new_oslo = _words(out["query"])[2], _words(out["target"])[-1]
    assert {new_ann, new_oslo} <= aug.rare and len({new_ann, new_oslo, "Ann", "Oslo"}) == 4
    assert out["query"] == f"where was {new_ann} born"
    assert out["target"] == f"Rationale: {new_ann} was born in {new_oslo} (a port). Answer: {new_oslo}."
    assert out["passages"][0] == {"title": new_ann, "text": f"{new_ann} was born in {new_oslo}, near Lima."}
    # Lima and Bob are in the input but not in the target: nothing to copy, kept; "port" is not in the input
    assert out["passages"][1]["text"] == "Bob keeps bees." and "port" in out["target"]
    # the new names are not words the example already had (no ambiguity about what to copy)
    assert new_ann not in {"Lima", "Bob"} and new_oslo not in {"Lima", "Bob"}
    assert ex == _example()  # the input example is not modified


def test_seeded_and_probability():
    aug = CopyAugmenter(TARGETS, p=1.0, max_df=0.3)
    assert aug(_example(), seed="a") == aug(_example(), seed="a")
    assert len({aug(_example(), seed=s)["target"] for s in "abcdefgh"}) > 1
    assert CopyAugmenter(TARGETS, p=0.0, max_df=0.3)(_example(), seed="a") == _example()
    half = CopyAugmenter(TARGETS, p=0.5, max_df=0.3)
    changed = sum(half(_example(), seed=i)["target"] != _example()["target"] for i in range(200))
    assert 60 < changed < 140


def test_case_is_kept_and_lowercase_words_are_swapped_for_lowercase():
    targets = [f"{p} is a {trade} in {t}." for (p, t), trade in zip(NAMES, ["tanner", "miller", "potter", "smith"] * 10)]
    aug = CopyAugmenter(targets, p=1.0, max_df=0.3)
    out = aug({"query": "what does Ann do", "passages": [{"text": "Ann works as a tanner."}],
               "target": "Ann is a tanner in Oslo."}, seed=3)
    name, _, _, trade, _, town = _words(out["target"])
    assert name[0].isupper() and trade.islower() and trade != "tanner" and town == "Oslo"  # Oslo: not in input


@pytest.mark.parametrize("kw", [{"p": -0.1}, {"p": 1.5}, {"max_df": 0}, {"max_df": 2}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="copy augmentation"):
        CopyAugmenter(TARGETS, **kw)


def test_copy_augmentation_is_the_training_augmenter_named_copy():
    """TrainConfig names it through the augmentation hook; its arguments are checked when the config is made."""
    from radcot.student.hooks import make_augmenter
    from radcot.student.train import TrainConfig

    cfg = TrainConfig(data="d", model="m", out="o", augment="copy", augment_args={"p": 0.5})
    assert (cfg.augment, cfg.augment_args) == ("copy", {"p": 0.5})
    aug = make_augmenter("copy", TARGETS, {"p": 1.0, "max_df": 0.3})
    assert isinstance(aug, CopyAugmenter) and aug(_example(), seed="a") == CopyAugmenter(
        TARGETS, p=1.0, max_df=0.3)(_example(), seed="a")
    with pytest.raises(ValueError, match="TrainConfig.augment 'copy'.*probability must be in"):
        TrainConfig(data="d", model="m", out="o", augment="copy", augment_args={"p": 2})
    with pytest.raises(ValueError, match="does not take arguments.*'rate'"):
        TrainConfig(data="d", model="m", out="o", augment="copy", augment_args={"rate": 0.5})


def test_the_default_rarity_is_the_one_the_demo_was_tuned_with():
    """max_df's default (0.05) is stated once, here; it was TrainConfig.copy_augment_max_df's default."""
    import inspect

    assert inspect.signature(CopyAugmenter).parameters["max_df"].default == 0.05


def test_old_copy_augment_fields_in_a_config_file_become_the_copy_augmenter(tmp_path):
    from radcot.student.train import TrainConfig

    path = tmp_path / "train_config.json"
    path.write_text('{"data": "d", "model": "m", "out": "o", "copy_augment": 0.5, "copy_augment_max_df": 0.1}')
    cfg = TrainConfig.from_file(path)
    assert (cfg.augment, cfg.augment_args) == ("copy", {"p": 0.5, "max_df": 0.1})
    path.write_text('{"data": "d", "model": "m", "out": "o", "copy_augment": 0.0, "copy_augment_max_df": 0.05}')
    assert TrainConfig.from_file(path).augment is None  # 0 was "off"
